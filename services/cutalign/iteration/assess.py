"""Steps 5-6 joined: evaluate the candidate, find what it must beat, and decide.

What the candidate is compared with: the accuracy the current release was promoted with; before any release
(the first iteration, starting from the base model) the policy the iteration started from is evaluated on the
same eval set, once, so the first promotion is gated too. The candidate's report is recorded at
``iterations/{i}/eval.json`` with the trainer's detection metrics merged in.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cutalign.config import IterationSettings, S3Settings
from cutalign.iteration.evaluate import ACCURACY, EvalReport, detection_metrics, evaluate_policy, record_eval
from cutalign.iteration.promote import GateDecision, gate, released_accuracy
from cutalign.iteration.task import Prompt
from cutalign.iteration.train import read_metrics
from cutalign.judges.base import Judge
from cutalign.store import ArtifactStore

log = logging.getLogger(__name__)

PREVIOUS_ACCURACY = "eval/previous_accuracy"
GATE_PASSED = "gate/passed"


@dataclass(frozen=True)
class Assessment:
    report: EvalReport
    decision: GateDecision
    eval_uri: str
    baseline: EvalReport | None = None  # the starting policy's evaluation, when there was no release yet

    def metrics(self) -> dict[str, float]:
        """Candidate metrics, the accuracy it was compared with, and the verdict (1.0 = passed)."""
        out = dict(self.report.metrics())
        if self.decision.previous is not None:
            out[PREVIOUS_ACCURACY] = self.decision.previous
        out[GATE_PASSED] = 1.0 if self.decision.passed else 0.0
        return out


def assess_candidate(
    store: ArtifactStore,
    *,
    iteration: int,
    candidate_uri: str,
    starting_policy_uri: str,
    eval_prompts: Sequence[Prompt],
    judge: Judge,
    settings: IterationSettings,
    training_metrics_uri: str | None = None,
    s3: S3Settings | None = None,
) -> Assessment:
    """Evaluate ``candidate_uri``, gate it against the release (or starting policy), record the report."""
    s3 = s3 or store.settings
    options: dict[str, Any] = {
        "s3": s3,
        "template": settings.eval_template,
        "max_new_tokens": settings.eval_max_new_tokens,
        "batch_size": settings.eval_batch_size,
        "device": settings.eval_device,
    }
    report = evaluate_policy(candidate_uri, eval_prompts, judge, **options)
    if training_metrics_uri:
        extra = detection_metrics(read_metrics(store, training_metrics_uri))
        report = dataclasses.replace(report, extra_metrics={**report.extra_metrics, **extra})
    previous = released_accuracy(store)
    baseline = None
    if previous is None:
        baseline = evaluate_policy(starting_policy_uri, eval_prompts, judge, **options)
        previous = baseline.accuracy
        log.info("no release yet: the starting policy %s scores %.3f", starting_policy_uri, previous)
    decision = gate(report.accuracy, previous, settings.gate_tolerance)
    log.info(
        "iteration %d gate %s: %s", iteration, "passed" if decision.passed else "failed", decision.reason
    )
    return Assessment(report, decision, record_eval(store, iteration, report), baseline)


__all__ = ["ACCURACY", "GATE_PASSED", "PREVIOUS_ACCURACY", "Assessment", "assess_candidate"]
