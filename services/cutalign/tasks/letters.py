"""A string transformation, letter by letter: "Shift every letter of tanoke one on." -> "uboplf" (each letter
replaced by the next in the alphabet, z by a).

Every letter maps on its own, so a small model learns the mapping letter by letter and its mistakes are
local habits (one letter it shifts wrong) — the kind of error a judgment can name. The judge compares the
response with the target and names the first difference: a wrong letter ("Letter 4 should be 'p', not
'o'."), missing letters ("It stops after 'ubo'; it should go on with 'plf'.") or extra ones ("After
'uboplf' it adds 'k'; it should stop."). The blamed span is the wrong letter, the extra letters, or the
(zero-width) end where letters are missing.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping
from typing import Any

from cutalign.judges.base import PERFECT, Judgment
from cutalign.tasks.family import Family
from cutalign.tasks.words import word

_NEXT = str.maketrans(string.ascii_lowercase, string.ascii_lowercase[1:] + "a")


def make(rng: random.Random) -> dict[str, Any]:
    w = word(rng, (2, 3))
    return {"id": f"shift-{w}", "instruction": f"Shift every letter of {w} one on.", "word": w}


def answer(row: Mapping[str, Any]) -> str:
    return str(row["word"]).translate(_NEXT)


def first_difference(response: str, target: str) -> tuple[str, tuple[int, int]] | None:
    """How ``response`` (outer whitespace ignored) first differs from ``target``: (sentence, blamed span)."""
    got = response.strip()
    offset = len(response) - len(response.lstrip())
    if got == target:
        return None
    i = next((k for k, (a, b) in enumerate(zip(got, target, strict=False)) if a != b), None)
    if i is not None:
        return f"Letter {i + 1} should be {target[i]!r}, not {got[i]!r}.", (offset + i, offset + i + 1)
    if len(got) < len(target):
        rest = target[len(got) :]
        return f"It stops after {got!r}; it should go on with {rest!r}.", (len(response), len(response))
    return f"After {target!r} it adds {got[len(target) :]!r}; it should stop.", (
        offset + len(target),
        offset + len(got),
    )


class ShiftJudge:
    """Judges letter shifts against ``reference["word"]``; ``spans=False`` drops the error spans."""

    id = "shift-v1"

    def __init__(self, spans: bool = True) -> None:
        self.spans = spans

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Judgment:
        if not reference or not isinstance(reference.get("word"), str):
            raise ValueError("a letter shift is judged against reference['word']")
        target = answer(reference)
        problem = first_difference(response, target)
        if problem is None:
            return Judgment(PERFECT, True, [], self.id)
        text, span = problem
        return Judgment(text, False, [span] if self.spans else [], self.id, target)


FAMILY = Family(
    "shift", make, "cutalign.tasks.letters:ShiftJudge", answer, max_new_tokens=12, base_examples=4000
)
