"""The online loop through the real services, for the demo and `cutalign run`."""
