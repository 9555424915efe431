"""A string transformation: "Reverse the letters of tanoke." -> "ekonat".

The judge aligns the response with the reversed word and names the first difference: a wrong letter
("Letter 3 should be 'o', not 'a'."), missing letters ("It stops after 'eko'; it should go on with 'nat'.")
or extra ones ("After 'ekonat' it adds 'k'; it should stop."). The blamed span is the wrong letter, the
extra letters, or the (zero-width) end where letters are missing.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from cutalign.judges.base import PERFECT, Judgment
from cutalign.tasks.family import Family
from cutalign.tasks.words import word


def make(rng: random.Random) -> dict[str, Any]:
    w = word(rng, (3, 4))
    return {"id": f"reverse-{w}", "instruction": f"Reverse the letters of {w}.", "word": w}


def answer(row: Mapping[str, Any]) -> str:
    return str(row["word"])[::-1]


class ReverseJudge:
    """Judges reversals against ``reference["word"]``; ``spans=False`` drops the error spans."""

    id = "reverse-v1"

    def __init__(self, spans: bool = True) -> None:
        self.spans = spans

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Judgment:
        if not reference or not isinstance(reference.get("word"), str):
            raise ValueError("a reversal is judged against reference['word']")
        target = reference["word"][::-1]
        got = response.strip()
        offset = len(response) - len(response.lstrip())
        if got == target:
            return Judgment(PERFECT, True, [], self.id)
        i = next(
            (k for k, (a, b) in enumerate(zip(got, target, strict=False)) if a != b),
            min(len(got), len(target)),
        )
        if i < min(len(got), len(target)):
            text, span = (
                f"Letter {i + 1} should be {target[i]!r}, not {got[i]!r}.",
                (offset + i, offset + i + 1),
            )
        elif len(got) < len(target):
            text = f"It stops after {got!r}; it should go on with {target[i:]!r}."
            span = (len(response), len(response))
        else:
            text, span = (
                f"After {target!r} it adds {got[i:]!r}; it should stop.",
                (offset + i, offset + len(got)),
            )
        return Judgment(text, False, [span] if self.spans else [], self.id, target)


FAMILY = Family(
    "reverse", make, "cutalign.tasks.reverse:ReverseJudge", answer, max_new_tokens=16, base_examples=2400
)
