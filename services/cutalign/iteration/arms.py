"""The objectives an online run can train, as named ``TrainerSettings`` overrides ("arms").

Presets (docs/method.md §4-§5 and issue 8's detection options); every arm trains the same number of steps on
the same judged responses, and differs only in these fields:

* ``sft``           — SFT on positives only (rejection-sampling fine-tuning): the baseline to beat;
* ``cut``           — CUT as published: ratio detection (λ 1.1, α 1) and the reference's Align-P downsampling
  to 0.25 × negatives;
* ``cut-allpos``    — the same, keeping every positive (SFT sees them all; 0.25 × negatives starves CUT);
* ``span``          — span-supervised unlikelihood: the judge's error spans are the unlikelihood set, no MLE
  after the first blamed token, every positive kept;
* ``span-noalignn`` — ``span`` without the Align-N MLE on negatives (``align_n_weight`` 0), which with a
  tiny model carries the errors it describes into the plain context (issue 8);
* ``intersection``  — unlikelihood on blamed tokens whose probability the judgment raises (ratio rule ∩
  spans), no MLE after the first of them, no Align-N MLE;
* ``hindsight``     — MLE of every response under its judgment (Hindsight / Chain-of-Hindsight);
* ``unlikelihood``  — MLE on positives, unlikelihood on every token of negatives (no detection).

A custom arm is ``name:key=value,key=value`` with ``TrainerSettings`` field names, e.g.
``span-a05:objective=cut,span_mode=span,unlikelihood_weight=0.5,align_p_ratio=none``.

An arm's ``align_p_ratio`` is the target builder's Align-P downsampling when its data are sealed (None keeps
every positive); :func:`run_loop` turns an arm into the settings every iteration of a run trains with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from cutalign.config import TrainerSettings
from cutalign.errors import UserError
from cutalign.iteration.inprocess import Loop

ALL_POSITIVES: dict[str, Any] = {"align_p_ratio": None}

PRESETS: dict[str, dict[str, Any]] = {
    "sft": {"objective": "sft", **ALL_POSITIVES},
    "cut": {"objective": "cut", "span_mode": "ratio", "align_p_ratio": 0.25},
    "cut-allpos": {"objective": "cut", "span_mode": "ratio", **ALL_POSITIVES},
    "span": {"objective": "cut", "span_mode": "span", "mask_after_error": True, **ALL_POSITIVES},
    "span-noalignn": {
        "objective": "cut",
        "span_mode": "span",
        "mask_after_error": True,
        "align_n_weight": 0.0,
        **ALL_POSITIVES,
    },
    "intersection": {
        "objective": "cut",
        "span_mode": "intersection",
        "mask_after_error": True,
        "align_n_weight": 0.0,
        **ALL_POSITIVES,
    },
    "hindsight": {"objective": "hindsight", **ALL_POSITIVES},
    "unlikelihood": {"objective": "unlikelihood", **ALL_POSITIVES},
}
DEFAULT_ARMS = tuple(PRESETS)  # the comparison in docs/results.md


class ArmError(UserError, ValueError):
    """An arm that is neither a preset nor ``name:key=value,...`` of valid TrainerSettings fields."""


def parse_arm(spec: str) -> tuple[str, dict[str, Any]]:
    """A preset name, or ``name:key=value,...`` (values as TrainerSettings would read them from the env)."""
    name, sep, body = spec.partition(":")
    name = name.strip()
    if not sep:
        if name not in PRESETS:
            raise ArmError(
                f"unknown arm {name!r}", f"use a preset ({', '.join(PRESETS)}) or name:key=value,..."
            )
        return name, dict(PRESETS[name])
    overrides: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = pair.partition("=")
        if not eq or key not in TrainerSettings.model_fields:
            raise ArmError(f"arm {name!r}: {pair!r} is not key=value with a TrainerSettings field as key")
        overrides[key] = None if value.lower() in ("none", "null") else value
    try:
        checked = TrainerSettings(**overrides)
    except ValidationError as e:
        raise ArmError(f"arm {name!r}: {e}") from e
    return name, {key: getattr(checked, key) for key in overrides}


def parse_arms(specs: Sequence[str]) -> dict[str, dict[str, Any]]:
    arms: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, overrides = parse_arm(spec)
        if name in arms:
            raise ArmError(f"arm {name!r} is given twice")
        arms[name] = overrides
    return arms


def describe(overrides: dict[str, Any]) -> str:
    """``objective=cut, span_mode=span, ...`` for tables and reports."""
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


def run_loop(
    shared: TrainerSettings, arm: Mapping[str, Any], *, steps: int, seed: int, template: str
) -> Loop:
    """What every iteration of a run of ``arm`` trains with: the shared settings, the arm's objective, exactly
    ``steps`` optimizer steps, the run's seed and the task's template; the arm's ``align_p_ratio`` goes to the
    builder's downsampling (a sealed manifest comes downsampled, so the trainer's own ratio stays unset)."""
    fields = {k: v for k, v in arm.items() if k != "align_p_ratio"}
    trainer = TrainerSettings(
        **{
            **shared.model_dump(),
            **fields,
            "template": template,
            "epochs": 10_000,  # bounded by max_steps: every arm takes exactly `steps` steps
            "max_steps": steps,
            "checkpoint_every": 10**6,
            "seed": seed,
            "align_p_ratio": None,
        }
    )
    return Loop(trainer, arm.get("align_p_ratio", 0.25))
