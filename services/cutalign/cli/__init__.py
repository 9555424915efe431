"""The single `cutalign` command line."""
