"""What one online iteration did, read back from the run's bucket: the one record both drivers report.

Both drivers write the same layout (``cutalign.store.layout``) — the sealed manifest, the training
metrics, the evaluation, the release — so the record is *read* from the bucket rather than assembled from what
a driver believed it did. Iteration 0 is the policy the run started from: its evaluation
(``iterations/0000/eval.json``) and its release (``policy/releases/0000.json``) are written by
:func:`start_run` before iteration 1.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cutalign.config import S3Settings
from cutalign.iteration.evaluate import ACCURACY, EvalReport, record_eval
from cutalign.iteration.promote import promote_candidate
from cutalign.iteration.train import read_metrics
from cutalign.store import ArtifactStore, ObjectMissing, sha256_bytes
from cutalign.store.layout import eval_key, iteration_manifest_key, metrics_key, release_key
from cutalign.v1 import training_pb2

FLAGGED = "tokens/flagged_fraction"
NO_UNLIKELIHOOD = ("sft", "hindsight")  # objectives that flag no token: no flagged fraction to report


@dataclass
class IterationRecord:
    """One iteration of one run; iteration 0 is the starting policy (nothing trained)."""

    iteration: int
    accuracy: float
    promoted: bool = False
    positives: int = 0  # judged responses, before the Align-P downsampling
    negatives: int = 0
    trained_positives: int = 0  # positives kept by the downsampling
    steps: int = 0  # optimizer steps taken (0: nothing to train on, the policy was kept)
    release_uri: str = ""  # the checkpoint the iteration released (empty: not promoted)
    data_sha256: str = ""  # of the sealed shards: equal data, equal hash
    metrics: dict[str, float] = field(default_factory=dict)  # detection/*, tokens/flagged_fraction
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage


def start_run(
    store: ArtifactStore, policy_uri: str, report: EvalReport, *, model_id: str, s3: S3Settings | None = None
) -> training_pb2.PolicyRelease:
    """Record the starting policy as iteration 0: its evaluation and its release (what is served first).

    With the release in place, every iteration's gate compares with a recorded accuracy, the generator and
    the feedback API know the served version from the first prompt on, and ``read_record(store, 0)`` works.
    """
    record_eval(store, 0, report)
    return promote_candidate(
        store,
        iteration=0,
        model_uri=policy_uri,
        eval_metrics=report.metrics(),
        manifest_key="",
        model_id=model_id,
        s3=s3 or store.settings,
    )


def read_record(store: ArtifactStore, iteration: int, run: str) -> IterationRecord:
    """The record of ``iteration`` from the bucket (``run``: the training run's name, its objective)."""
    evaluated = json.loads(store.get_bytes(eval_key(iteration)))
    try:
        release_uri = store.get_manifest(release_key(iteration), training_pb2.PolicyRelease).version.uri
    except ObjectMissing:
        release_uri = ""
    record = IterationRecord(
        iteration,
        accuracy=float(evaluated["metrics"][ACCURACY]),
        promoted=bool(release_uri),
        release_uri=release_uri,
        metrics={k: float(v) for k, v in evaluated["metrics"].items() if k.startswith("detection/")},
    )
    if iteration == 0:
        return record
    try:
        manifest = store.get_manifest(iteration_manifest_key(iteration), training_pb2.IterationManifest)
    except ObjectMissing:  # nothing was sealed: no valid judged response to train on
        return record
    before, after = manifest.counts_before_downsampling, manifest.counts_by_kind
    record.positives = int(before.get("ALIGN_P", 0))
    record.negatives = int(before.get("ALIGN_N_MISALIGN", 0))
    record.trained_positives = int(after.get("ALIGN_P", 0))
    record.data_sha256 = sha256_bytes("".join(s.sha256 for s in manifest.shards).encode())
    steps = read_metrics(store, store.uri(metrics_key(iteration, run)))
    record.steps = int(max((s.get("step", 0) for s in steps), default=0))
    record.metrics.update(training_summary(steps, run))
    return record


def training_summary(steps: Sequence[Mapping[str, float]], objective: str) -> dict[str, float]:
    """The mean flagged fraction over the run's steps (for the objectives that flag tokens)."""
    flagged = [s[FLAGGED] for s in steps if FLAGGED in s]
    if not flagged or objective in NO_UNLIKELIHOOD:
        return {}
    return {FLAGGED: statistics.fmean(flagged)}
