"""Step 6: decide whether the candidate is good enough, and if so make it the served policy.

The gate: ``candidate accuracy >= previous accuracy - tolerance``, where the previous accuracy is the one the
current release was promoted with (``policy/current.json``'s ``eval/accuracy``), or — before the first
promotion — the accuracy of the policy the iteration started from, measured on the same eval set. A tolerance
of 0 promotes only non-regressions; the method itself promotes every iteration (tolerance 1).

``publish_release`` is the promote step: it records the release through ``cutalign.policy.promotion.promote``
(``policy/releases/{i}.json`` once, ``policy/current.json`` always), with the checkpoint's sha256 computed
exactly as the servers compute it, then makes the serving stack of ``policy.mode`` serve it:

* ``embedded``: the server's admin route hot-reloads it (when ``iteration.policy_admin_url`` is set, with its
  token), else servers started with ``watch_current`` pick it up;
* ``kserve``: the InferenceService's storage URI becomes the release (a KServe rollout);
* ``tgi``, and ``vllm`` for a full release: a rolling update of the Deployment, whose new pods sync it;
* ``vllm`` with ``policy.lora_adapters``, when the candidate trained a LoRA adapter over the base the pods
  serve: the release *is* that adapter (over that base), and each pod's model sync loads it into its running
  vLLM — no restart. A candidate trained from anything else is released merged and rolled out.

Rollouts return once complete (``cutalign.policy.rollout``). A retried step finds its release already
recorded: same checkpoint, it only re-points ``current`` and rolls out again; a different checkpoint for the
same iteration is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from kubernetes.client import ApiClient

from cutalign.config import IterationSettings, ModelSyncSettings, PolicySettings, S3Settings
from cutalign.cut.export import adapter_location
from cutalign.iteration.evaluate import ACCURACY
from cutalign.policy.loading import ADAPTER_CONFIG, local_checkpoint
from cutalign.policy.promotion import build_release, current_release, promote
from cutalign.policy.rollout import roll_out
from cutalign.store import ArtifactStore, ManifestExists, parse_s3_uri
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
    base_model_uri: str | None = None,
) -> training_pb2.PolicyRelease:
    """Record the release of ``model_uri`` for ``iteration`` and point ``policy/current.json`` at it.

    With ``base_model_uri``, ``model_uri`` is a LoRA adapter over that base: the release's sha256 is the
    pair's, as a server that loads the adapter over the base computes it.
    """
    with ExitStack() as stack:
        model_dir = stack.enter_context(local_checkpoint(model_uri, s3))
        base_dir = stack.enter_context(local_checkpoint(base_model_uri, s3)) if base_model_uri else None
        release = build_release(
            model_dir,
            uri=model_uri,
            iteration=iteration,
            model_id=model_id,
            base_dir=base_dir,
            base_model_uri=base_model_uri or "",
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


def lora_base(store: ArtifactStore, policy: PolicySettings, sync: ModelSyncSettings) -> str | None:
    """The base the vLLM pods load LoRA releases over (what they started on); None if they load none."""
    if policy.mode != "vllm" or not policy.lora_adapters:
        return None
    current = current_release(store)
    if current is None:
        return sync.base_model_uri or None
    return current.base_model_uri or current.version.uri


def publish_release(
    store: ArtifactStore,
    *,
    iteration: int,
    model_uri: str,
    trained_from: str,
    eval_metrics: Mapping[str, float],
    manifest_key: str,
    settings: IterationSettings,
    policy: PolicySettings,
    sync: ModelSyncSettings,
    kube: ApiClient | None = None,
    poll_s: float = 5.0,
) -> training_pb2.PolicyRelease:
    """The promote step: release the candidate (as a loadable LoRA adapter where the pods can use one), then
    roll it out in ``policy.mode`` (see the module docstring)."""
    base = lora_base(store, policy, sync)
    adapter = adapter_location(model_uri)
    loadable = base is not None and _same(trained_from, base) and _is_adapter(store, adapter)
    release = promote_candidate(
        store,
        iteration=iteration,
        model_uri=adapter if loadable else model_uri,
        base_model_uri=base if loadable else None,
        eval_metrics=eval_metrics,
        manifest_key=manifest_key,
        model_id=settings.model_id,
        s3=store.settings,
    )
    roll_out(release, settings=settings, policy=policy, store=store, kube=kube, poll_s=poll_s)
    return release


def _same(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _is_adapter(store: ArtifactStore, uri: str) -> bool:
    if not uri.startswith("s3://"):
        return (Path(uri) / ADAPTER_CONFIG).is_file()
    bucket, key = parse_s3_uri(uri)
    return ArtifactStore(store.settings, bucket=bucket).exists(f"{key.rstrip('/')}/{ADAPTER_CONFIG}")
