"""Step 6: decide whether the candidate is good enough, and if so make it the served policy.

The gate: ``candidate accuracy >= previous accuracy - tolerance``, where the previous accuracy is the one the
current release was promoted with (``policy/current.json``'s ``eval/accuracy``), or — before the first
promotion — the accuracy of the policy the iteration started from, measured on the same eval set. A tolerance
of 0 promotes only non-regressions; the method itself promotes every iteration (tolerance 1).

Promotion writes the release through ``cutalign.policy.promotion.promote`` (``policy/releases/{i}.json`` once,
``policy/current.json`` always), with the checkpoint's sha256 computed exactly as the policy server computes
it, and then — when a policy server admin URL is configured — asks that server to hot-reload the release,
checked against that sha256. A retried step finds its release already recorded: same checkpoint, it only
re-points ``current`` and reloads; a different checkpoint for the same iteration is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cutalign.config import S3Settings
from cutalign.iteration.evaluate import ACCURACY
from cutalign.iteration.http import post_json
from cutalign.policy.loading import local_checkpoint
from cutalign.policy.promotion import build_release, current_release, promote
from cutalign.store import ArtifactStore, ManifestExists
from cutalign.store.layout import CURRENT_POLICY_KEY, release_key
from cutalign.v1 import training_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    candidate: float
    previous: float | None
    tolerance: float
    reason: str


def gate(candidate: float, previous: float | None, tolerance: float) -> GateDecision:
    """Pass when ``candidate >= previous - tolerance`` (always, when there is nothing to compare with)."""
    if previous is None:
        return GateDecision(True, candidate, None, tolerance, "no previous accuracy to compare with")
    passed = candidate >= previous - tolerance
    relation = ">=" if passed else "<"
    reason = f"accuracy {candidate:.4f} {relation} previous {previous:.4f} - tolerance {tolerance:.4f}"
    return GateDecision(passed, candidate, previous, tolerance, reason)


def released_accuracy(store: ArtifactStore) -> float | None:
    """The accuracy the current release was promoted with, or None (no release yet, or it recorded none)."""
    release = current_release(store)
    if release is None or ACCURACY not in release.eval_metrics:
        return None
    return float(release.eval_metrics[ACCURACY])


def promote_candidate(
    store: ArtifactStore,
    *,
    iteration: int,
    model_uri: str,
    eval_metrics: Mapping[str, float],
    manifest_key: str,
    model_id: str,
    s3: S3Settings | None,
) -> training_pb2.PolicyRelease:
    """Record the release of ``model_uri`` for ``iteration`` and point ``policy/current.json`` at it."""
    with local_checkpoint(model_uri, s3) as model_dir:
        release = build_release(
            model_dir,
            uri=model_uri,
            iteration=iteration,
            model_id=model_id,
            manifest_key=manifest_key,
            eval_metrics=eval_metrics,
        )
    try:
        promote(store, release)
    except ManifestExists:
        recorded = store.get_manifest(release_key(iteration), training_pb2.PolicyRelease)
        if recorded.version.checkpoint_sha256 != release.version.checkpoint_sha256:
            raise ManifestExists(
                f"iteration {iteration} already released {recorded.version.checkpoint_sha256[:12]} "
                f"({recorded.version.uri}); this candidate is {release.version.checkpoint_sha256[:12]}: an "
                "iteration releases one policy — run a new iteration instead"
            ) from None
        log.info("iteration %d was already released (retried step); pointing current at it", iteration)
        store.put_pointer(CURRENT_POLICY_KEY, recorded)
        return recorded
    return release


def reload_policy_server(
    admin_url: str, release: training_pb2.PolicyRelease, *, token: str | None, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Ask the embedded policy server to load ``release`` now (it refuses files that miss the sha256)."""
    if not token:
        raise ValueError(
            f"hot-reloading the policy server at {admin_url} needs its admin token: set "
            "CUTALIGN_ITERATION_POLICY_ADMIN_TOKEN (on a cluster, from the server's admin Secret)"
        )
    version = release.version
    body = {
        "uri": version.uri,
        "iteration": version.iteration,
        "expected_sha256": version.checkpoint_sha256,
        "model_id": version.model_id,
    }
    if release.base_model_uri:
        body["base_uri"] = release.base_model_uri
    answer = post_json(f"{admin_url.rstrip('/')}/v1/policy/load", body, token=token, timeout_s=timeout_s)
    log.info("policy server %s now serves %s", admin_url, version.checkpoint_sha256[:12])
    return answer
