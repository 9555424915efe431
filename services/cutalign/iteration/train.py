"""Step 4 (local launcher): train CUT on the sealed manifest in this process, writing to the bucket layout.

The trainer library is called in-process (``cutalign.cut.trainer.train``): a laptop, CI or the KFP local
runner has no cluster to submit to. Outputs go where the layout says (``iterations/{i}/model/``,
``metrics/{run}.jsonl``, ``checkpoints/{run}/``), so a retried step resumes from the run's last checkpoint,
and the cluster launcher (``cutalign.iteration.cluster``) writes to exactly the same keys.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from cutalign.config import TrainerSettings
from cutalign.cut.location import resolve
from cutalign.cut.trainer import Outputs, train
from cutalign.store import ArtifactStore, ObjectMissing
from cutalign.store.layout import checkpoint_prefix, metrics_key, model_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedPolicy:
    """Where a training run left its candidate policy, and how it went."""

    iteration: int
    run: str
    model_uri: str
    metrics_uri: str
    checkpoint_uri: str
    steps: int
    final_metrics: dict[str, float] = field(default_factory=dict)


def run_name(settings: TrainerSettings) -> str:
    """A run is named by its objective: a retry of the same step resumes the same run's checkpoints."""
    return settings.objective


def iteration_outputs(store: ArtifactStore, iteration: int, run: str, attempt: str = "") -> Outputs:
    """Where a run writes. Checkpoints are per ``attempt`` (a KFP run id): a new pipeline run of the iteration
    starts from scratch with its own hyper-parameters, a retried step of the same run resumes."""
    checkpoints = f"{run}-{attempt}" if attempt else run
    return Outputs(
        model=store.uri(model_prefix(iteration)).rstrip("/"),
        metrics=store.uri(metrics_key(iteration, run)),
        checkpoints=store.uri(checkpoint_prefix(iteration, checkpoints)).rstrip("/"),
    )


def read_metrics(store: ArtifactStore, metrics_uri: str) -> list[dict[str, float]]:
    """The per-step metrics a run wrote (empty if it wrote none)."""
    bound, key = resolve(metrics_uri, store)
    try:
        data = bound.get_bytes(key)
    except ObjectMissing:
        return []
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def train_local(
    settings: TrainerSettings,
    manifest_uri: str,
    policy_uri: str,
    iteration: int,
    *,
    store: ArtifactStore,
    progress: bool = False,
    attempt: str = "",
) -> TrainedPolicy:
    """Train from ``policy_uri`` on the sealed manifest at ``manifest_uri``; returns the candidate policy."""
    run = run_name(settings)
    outputs = iteration_outputs(store, iteration, run, attempt)
    result = train(
        settings, manifest_uri, policy_uri, outputs.model, store=store, progress=progress, outputs=outputs
    )
    log.info(
        "iteration %d trained: %d steps on %d examples -> %s",
        iteration,
        result.steps,
        result.examples,
        result.model_uri,
    )
    return TrainedPolicy(
        iteration,
        run,
        result.model_uri,
        result.metrics_uri,
        result.checkpoint_uri,
        result.steps,
        dict(result.final_metrics),
    )
