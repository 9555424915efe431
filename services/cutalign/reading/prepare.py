"""Before an online run: the judgment-reading warm start (if asked), the probe, and the objective it implies.

A run's prompt pool is split into the iterations' fresh prompts and the rest; the warm start and the probe
use only the rest (never an iteration's prompts, never the held-out ones). The probe's verdict stops the run
unless ``force`` is set — a run that cannot learn costs hours and teaches nothing — and ``arm="auto"`` becomes
the span-supervised arm when the judge reports error spans, else faithful CUT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cutalign.config import OnlineSettings
from cutalign.errors import UserError
from cutalign.iteration.respond import respond
from cutalign.iteration.task import Prompt, Task
from cutalign.judges.loader import load_judge
from cutalign.policy.loading import load_policy
from cutalign.reading.examples import ReadingData
from cutalign.reading.probe import ProbeReport, Verdict, probe, verdict
from cutalign.reading.settings import READING_TRAINING, ReadingSettings, WarmStartSettings
from cutalign.reading.warmstart import reading_warm_start

log = logging.getLogger(__name__)

PROBE_PROMPTS = 128
SPAN_ARM, DEFAULT_ARM = "span", "cut"


class ProbeRefused(UserError):
    """The probe says CUT will not learn from these judgments; the message says why and what to change."""


@dataclass(frozen=True)
class Prepared:
    base: Path  # the model the run starts from (the warm-started one, if any)
    arm: str  # the objective, ``auto`` resolved
    report: ProbeReport | None = None
    verdict: Verdict | None = None
    reading: ReadingData | None = None


def prepare(
    task: Task,
    base: Path,
    online: OnlineSettings,
    spare: list[Prompt],
    work_dir: Path,
    *,
    threshold: float,
    reading: ReadingSettings | None = None,
    training: WarmStartSettings | None = None,
) -> Prepared:
    """Warm-start and probe ``base`` on ``spare`` prompts as ``online`` asks (module doc)."""
    data = None
    if online.warm_start:
        if not spare:
            raise UserError(
                "the judgment-reading warm start needs prompts that no iteration uses, and there are none",
                "lower --prompts-per-iteration or --iterations, or add prompts",
            )
        out = work_dir / "warm-start"
        data = reading_warm_start(
            base,
            task,
            spare,
            out,
            reading=reading or ReadingSettings(),
            training=training or READING_TRAINING,
            threads=online.threads,
        )
        base = out
    report = result = None
    if online.probe:
        policy = load_policy(str(base))
        prompts = spare[:PROBE_PROMPTS] or list(task.train_prompts())[:PROBE_PROMPTS]
        judged = respond(policy, prompts, load_judge(task.judge, task.judge_options), task.decoding)
        report = probe(policy, judged, template=task.decoding.template, threshold=threshold)
        result = verdict(report)
        if not result.ok and not online.force:
            raise ProbeRefused(
                f"the probe expects CUT not to learn here: {result.finding}",
                result.advice + " (or pass --force)",
            )
    arm = online.arm
    if arm == "auto":
        arm = SPAN_ARM if report is not None and report.spans_reported > 0.5 else DEFAULT_ARM
    return Prepared(base, arm, report, result, data)
