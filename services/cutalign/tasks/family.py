"""A task family: seeded prompt generation, a train pool and held-out split, a judge, a base-model corpus.

A family is a ``make(rng) -> row`` function whose row holds the prompt (``id``, ``instruction``) and the
reference fields its judge needs, plus the judge's import path. :class:`GeneratedTask` turns it into the
``cutalign.iteration.task.Task`` the loop takes: prompts are drawn without repeats (by instruction) from a
seeded generator, the first ``eval_size`` are held out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cutalign.errors import UserError
from cutalign.iteration.task import Decoding
from cutalign.templates import TEMPLATES


@dataclass(frozen=True)
class Family:
    name: str
    make: Callable[[random.Random], dict[str, Any]]  # one prompt row: id, instruction, reference fields
    judge: str  # import path of the family's judge (takes ``spans: bool``)
    answer: Callable[[Mapping[str, Any]], str]  # the correct response to a row
    max_new_tokens: int
    base_examples: int  # SFT examples (6 epochs) that leave a from-scratch base at a middle accuracy


@dataclass(frozen=True)
class GeneratedTask:
    """A family's prompts as a task: ``pool_size`` training prompts and ``eval_size`` held out."""

    family: Family
    spans: bool = True
    pool_size: int = 1200
    eval_size: int = 150
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.family.name}{'' if self.spans else '-nospans'}"

    @property
    def judge(self) -> str:
        return self.family.judge

    @property
    def judge_options(self) -> dict[str, Any]:
        return {"spans": self.spans}

    @property
    def decoding(self) -> Decoding:
        return Decoding(template="short", max_new_tokens=self.family.max_new_tokens)

    def rows(self) -> list[dict[str, Any]]:
        """Every prompt, distinct by instruction, in generation order (held-out ones first)."""
        rng = random.Random(f"{self.family.name}-{self.seed}")
        rows: dict[str, dict[str, Any]] = {}
        attempts = 0
        while len(rows) < self.eval_size + self.pool_size:
            row = self.family.make(rng)
            rows.setdefault(row["instruction"], row)
            attempts += 1
            if attempts > 50 * (self.eval_size + self.pool_size):
                raise ValueError(f"{self.family.name}: too few distinct prompts for the requested sizes")
        return list(rows.values())

    def train_prompts(self) -> list[dict[str, Any]]:
        return self.rows()[self.eval_size :]

    def eval_prompts(self) -> list[dict[str, Any]]:
        return self.rows()[: self.eval_size]

    def corpus(self) -> str:
        """Text holding every character a prompt, response or judgment of the family can contain."""
        rows = self.rows()
        lines = [
            tpl.format_plain(r["instruction"]) + self.family.answer(r)
            for r in rows
            for tpl in TEMPLATES.values()
        ]
        printable = "".join(chr(c) for c in range(32, 127))
        return "\n".join([*lines, printable]) + "\n"


def _families() -> dict[str, Family]:
    from cutalign.tasks import arithmetic, extract, letters

    return {f.name: f for f in (arithmetic.FAMILY, letters.FAMILY, extract.FAMILY)}


FAMILIES = ("arithmetic", "shift", "extract")


def get_task(name: str, *, spans: bool = True, seed: int = 0) -> GeneratedTask:
    """The family ``name`` as a task (``spans=False``: its judge reports no error spans)."""
    families = _families()
    if name not in families:
        raise UserError(f"unknown task family {name!r}", f"choose one of {', '.join(FAMILIES)}")
    return GeneratedTask(families[name], spans=spans, seed=seed)
