"""Multi-step arithmetic written out: "Compute 12 + 7 - 5 from left to right." -> "12 + 7 = 19, 19 - 5 = 14".

Judged by the project's :class:`~cutalign.judges.programmatic.ArithmeticJudge` (each step checked against the
response's own previous result, the wrong number blamed); :class:`StepsJudge` adds the corrected response and
the option of reporting no spans.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from cutalign.judges.base import Judgment
from cutalign.judges.programmatic import ArithmeticJudge, arithmetic_terms
from cutalign.tasks.family import Family


def make(rng: random.Random) -> dict[str, Any]:
    first = rng.randint(1, 20)
    value, terms = first, []
    for _ in range(rng.choice((2, 2, 3))):
        op = rng.choice("+-") if value > 0 else "+"
        b = rng.randint(1, 9) if op == "+" else rng.randint(1, min(9, value))  # results stay >= 0
        value = value + b if op == "+" else value - b
        terms.append(f"{op} {b}")
    expression = f"{first} {' '.join(terms)}"
    instruction = f"Compute {expression} from left to right."
    return {
        "id": f"arith-{expression.replace(' ', '')}",
        "instruction": instruction,
        "expression": expression,
    }


def answer(row: Mapping[str, Any]) -> str:
    value, terms = arithmetic_terms(row["instruction"], dict(row))
    steps = []
    for op, b in terms:
        result = value + b if op == "+" else value - b
        steps.append(f"{value} {op} {b} = {result}")
        value = result
    return ", ".join(steps)


class StepsJudge:
    """:class:`ArithmeticJudge` with the corrected response; ``spans=False`` drops the error spans."""

    id = "arithmetic-steps-v1"

    def __init__(self, spans: bool = True) -> None:
        self.spans = spans
        self.inner = ArithmeticJudge(max_errors=1)

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Judgment:
        verdict = self.inner.judge(instruction, response, reference)
        row = {"instruction": instruction, **(reference or {})}
        spans = verdict.error_spans if self.spans else []
        correction = None if verdict.positive else answer(row)
        return Judgment(verdict.text, verdict.positive, spans, self.id, correction)


FAMILY = Family(
    "arithmetic", make, "cutalign.tasks.arithmetic:StepsJudge", answer, max_new_tokens=48, base_examples=4000
)
