"""Pronounceable pseudo-words from a seed: the families' vocabulary without a dictionary download."""

from __future__ import annotations

import random

CONSONANTS = "bcdfghklmnprstvz"
VOWELS = "aeiou"


def word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A lowercase consonant-vowel word ("tanoke")."""
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(*syllables)))
