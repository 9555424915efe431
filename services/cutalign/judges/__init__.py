"""Judges: turn (instruction, response) into a natural-language judgment (docs/method.md §1).

``base`` holds the plug-in contract, ``loader`` finds a judge by entry point or dotted path, ``guard`` vetoes
positives on degenerate responses, ``programmatic`` has deterministic judges for verifiable tasks.
"""
