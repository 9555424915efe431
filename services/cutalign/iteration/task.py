"""A task, as the online loop sees it: a pool of training prompts, held-out prompts, a judge and a decoding.

Both drivers of the loop — in-process (``cutalign.iteration.inprocess``: experiments, baselines) and through
the services and the KFP pipeline (``cutalign.online``) — take a :class:`Task`. The demo's counting task
implements it in code (``cutalign.demo.task.CountingTask``); a user's task is :class:`FileTask`, two JSONL
files and a judge plug-in. Nothing else about a task is known to the loop.

Each iteration gets *fresh* prompts (docs/method.md §6: never reused): :func:`fresh_prompt_sets` cuts disjoint
slices from a seeded shuffle of the pool, so a seed fixes every iteration's prompts for every objective.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cutalign.errors import UserError
from cutalign.iteration.prompts import parse_prompt_set

Prompt = Mapping[str, Any]


@dataclass(frozen=True)
class Decoding:
    """How responses are decoded: greedy, the plain prompt of ``template``, at most ``max_new_tokens``."""

    template: str = "auto"
    max_new_tokens: int = 64
    batch_size: int = 64


class Task(Protocol):
    """What the online loop needs of a task (module doc)."""

    @property
    def name(self) -> str: ...

    @property
    def judge(self) -> str:
        """The judge plug-in: an entry point name or ``package.module:Class``."""
        ...

    @property
    def judge_options(self) -> Mapping[str, Any]: ...

    @property
    def decoding(self) -> Decoding: ...

    def train_prompts(self) -> Sequence[Prompt]:
        """The pool every iteration's fresh prompts come from."""
        ...

    def eval_prompts(self) -> Sequence[Prompt]:
        """Held-out prompts, the same for every iteration, disjoint from the pool."""
        ...


@dataclass(frozen=True)
class FileTask:
    """A user's task: prompt and held-out JSONL files (``{"id", "instruction", ...}``) and a judge plug-in."""

    prompts: Path
    eval: Path
    judge: str
    judge_options: Mapping[str, Any] = field(default_factory=dict)
    decoding: Decoding = Decoding()

    @property
    def name(self) -> str:
        return self.prompts.stem

    def train_prompts(self) -> list[dict[str, Any]]:
        return _read(self.prompts)

    def eval_prompts(self) -> list[dict[str, Any]]:
        return _read(self.eval)


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{path} is not a file", "give a JSONL file of {id, instruction, ...} objects")
    return parse_prompt_set(path.read_bytes(), str(path))


def fresh_prompt_sets(
    pool: Sequence[Prompt], iterations: int, per_iteration: int = 0, seed: int = 0
) -> list[list[Prompt]]:
    """``iterations`` disjoint prompt sets from a seeded shuffle of ``pool`` (0 per iteration: even split)."""
    per_iteration = per_iteration or len(pool) // iterations
    if per_iteration < 1 or per_iteration * iterations > len(pool):
        raise UserError(
            f"{len(pool)} prompts cannot give {iterations} iterations x {per_iteration or '?'} fresh prompts",
            "add prompts, or lower --iterations / --prompts-per-iteration",
        )
    shuffled = list(pool)
    random.Random(f"prompts-{seed}").shuffle(shuffled)
    return [shuffled[i * per_iteration : (i + 1) * per_iteration] for i in range(iterations)]


def unused_prompts(pool: Sequence[Prompt], sets: Sequence[Sequence[Prompt]]) -> list[Prompt]:
    """The prompts of ``pool`` that no iteration gets: what a warm start or a probe may use."""
    used = {p["id"] for prompts in sets for p in prompts}
    return [p for p in pool if p["id"] not in used]
