"""Promotion: how a newly trained checkpoint becomes the policy that generates the next iteration's samples.

A release is a ``PolicyRelease`` (the checkpoint's ``PolicyVersion`` — model id, sha256, iteration, URI — plus
its base model, the iteration manifest it was trained on, and its evaluation metrics). ``promote`` writes it
twice through the artifact store:

* ``policy/releases/{i:04d}.json`` — immutable (conditional put): the record of what iteration ``i`` released;
  promoting the same iteration twice is refused (``ManifestExists``);
* ``policy/current.json`` — the mutable pointer to the release that should be served (last writer wins);
  ``rollback`` points it back at an earlier release.

How the served policy follows depends on the serving mode (``cutalign.policy.rollout.roll_out``): the
embedded server hot-reloads it (``--watch_current true``, or ``POST /v1/policy/load`` with its admin token),
checking the files against the release's sha256 and swapping between two batches; vLLM loads a LoRA release
at runtime (the pods' model sync); vLLM/TGI Deployments roll onto a full release, and KServe onto its
storage URI. The generator then refuses to generate until the server reports exactly the promoted release
(``generator.guard``) — so no sample is ever attributed to a policy that did not produce it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path

from cutalign.policy.version import describe, policy_version
from cutalign.store import ArtifactStore, ObjectMissing, ObjectRef
from cutalign.store.layout import CURRENT_POLICY_KEY, RELEASES_PREFIX, release_key
from cutalign.v1 import training_pb2

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def build_release(
    model_dir: Path | str,
    *,
    uri: str,
    iteration: int,
    model_id: str,
    base_dir: Path | str | None = None,
    base_model_uri: str = "",
    manifest_key: str = "",
    eval_metrics: Mapping[str, float] | None = None,
) -> training_pb2.PolicyRelease:
    """A release for the local checkpoint ``model_dir`` that is (or will be) stored at ``uri``.

    For a LoRA adapter pass its base too (``base_dir`` to hash, ``base_model_uri`` for the server to load).
    """
    return training_pb2.PolicyRelease(
        version=policy_version(model_dir, model_id=model_id, iteration=iteration, uri=uri, base_dir=base_dir),
        base_model_uri=base_model_uri,
        manifest_key=manifest_key,
        eval_metrics=dict(eval_metrics or {}),
    )


def validate_release(release: training_pb2.PolicyRelease) -> None:
    v = release.version
    problems = []
    if not _SHA256.match(v.checkpoint_sha256):
        problems.append("version.checkpoint_sha256 must be a lowercase hex sha256 (use build_release)")
    if not v.uri:
        problems.append("version.uri must name the checkpoint (s3://bucket/prefix or a directory)")
    if v.iteration < 0:
        problems.append("version.iteration must be >= 0")
    if problems:
        raise ValueError("invalid PolicyRelease: " + "; ".join(problems))


def promote(store: ArtifactStore, release: training_pb2.PolicyRelease) -> ObjectRef:
    """Record ``release`` for its iteration (once) and point ``policy/current.json`` at it."""
    validate_release(release)
    stamped = training_pb2.PolicyRelease()
    stamped.CopyFrom(release)
    if not stamped.promoted_at_ms:
        stamped.promoted_at_ms = int(time.time() * 1000)
    store.put_manifest(
        release_key(stamped.version.iteration), stamped
    )  # raises ManifestExists if re-promoted
    ref = store.put_pointer(CURRENT_POLICY_KEY, stamped)
    log.info("policy promoted: %s", describe(stamped.version))
    return ref


def current_release(store: ArtifactStore) -> training_pb2.PolicyRelease | None:
    """The release ``policy/current.json`` points at, or None before the first promotion."""
    try:
        return store.get_manifest(CURRENT_POLICY_KEY, training_pb2.PolicyRelease)
    except ObjectMissing:
        return None


def recent_releases(store: ArtifactStore, count: int) -> list[training_pb2.PolicyRelease]:
    """The ``count`` most recent releases (highest iterations first), from ``policy/releases/``."""
    keys = sorted(k for k in store.list(RELEASES_PREFIX) if k.endswith(".json"))[-count:] if count else []
    return [store.get_manifest(k, training_pb2.PolicyRelease) for k in reversed(keys)]


def rollback(store: ArtifactStore, iteration: int) -> training_pb2.PolicyRelease:
    """Point ``policy/current.json`` back at the release recorded for ``iteration``."""
    release = store.get_manifest(release_key(iteration), training_pb2.PolicyRelease)
    store.put_pointer(CURRENT_POLICY_KEY, release)
    log.warning("policy rolled back to %s", describe(release.version))
    return release
