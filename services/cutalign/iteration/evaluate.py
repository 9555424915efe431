"""Step 5: evaluate a policy on the held-out prompt set, exactly as it would be served and judged.

Each eval prompt is answered and judged by :func:`cutalign.iteration.respond.respond`: rendered with the
policy's template (``cutalign.templates``, as generation renders it), decoded greedily with the routine the
policy server runs, and judged by the configured judge plug-in. Accuracy is the fraction judged positive.
The report also carries the counts and, when the trainer measured them, its detection metrics
(``detection/precision``, ..., averaged over the run's steps), under the project's metric names so KFP, logs
and Prometheus agree.

A judge that raises fails the evaluation: a judge failure is not a negative judgment, and counting it as one
would make the gate compare noise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from cutalign.config import S3Settings
from cutalign.iteration.respond import Judged, respond
from cutalign.iteration.task import Decoding, Prompt
from cutalign.judges.base import Judge
from cutalign.policy.loading import load_policy
from cutalign.store import ArtifactStore
from cutalign.store.layout import eval_key

log = logging.getLogger(__name__)

ACCURACY = "eval/accuracy"
POSITIVES = "eval/positives"
TOTAL = "eval/total"


@dataclass(frozen=True)
class EvalReport:
    policy_uri: str
    policy_sha256: str
    results: list[Judged]
    extra_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def positives(self) -> int:
        return sum(r.positive for r in self.results)

    @property
    def accuracy(self) -> float:
        return self.positives / self.total

    def metrics(self) -> dict[str, float]:
        """The report as ``name -> value`` in the project's metric vocabulary."""
        return {
            ACCURACY: self.accuracy,
            POSITIVES: float(self.positives),
            TOTAL: float(self.total),
            **self.extra_metrics,
        }

    def to_json(self) -> bytes:
        body = {
            "policy_uri": self.policy_uri,
            "policy_sha256": self.policy_sha256,
            "metrics": self.metrics(),
            "results": [asdict(r) for r in self.results],
        }
        return json.dumps(body, indent=2, sort_keys=True).encode()


def evaluate_policy(
    policy_uri: str,
    prompts: Sequence[Prompt],
    judge: Judge,
    *,
    s3: S3Settings | None,
    template: str = "auto",
    max_new_tokens: int = 64,
    batch_size: int = 16,
    device: str = "cpu",
) -> EvalReport:
    """Generate greedily for every eval prompt with the policy at ``policy_uri`` and judge each response.

    ``device`` ``auto`` decodes on the GPU when there is one (the hardware the policy was trained on).
    """
    if not prompts:
        raise ValueError("the eval set is empty: give a held-out prompt set with at least one prompt")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = load_policy(policy_uri, s3=s3, device=device)
    results = respond(policy, prompts, judge, Decoding(template, max_new_tokens, batch_size))
    report = EvalReport(policy_uri, policy.version.checkpoint_sha256, results)
    log.info(
        "evaluated %s: accuracy %.3f (%d/%d)", policy_uri, report.accuracy, report.positives, report.total
    )
    return report


def detection_metrics(steps: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each ``detection/*`` metric averaged over the steps that report it (steps without spans don't)."""
    sums: dict[str, list[float]] = {}
    for step in steps:
        for name, value in step.items():
            if name.startswith("detection/"):
                sums.setdefault(name, []).append(float(value))
    return {name: sum(values) / len(values) for name, values in sorted(sums.items())}


def record_eval(store: ArtifactStore, iteration: int, report: EvalReport) -> str:
    """Write the report to ``iterations/{i}/eval.json`` (rewritten by a retried step); returns its URI."""
    key = eval_key(iteration)
    store.put_bytes(key, report.to_json(), content_type="application/json")
    return store.uri(key)
