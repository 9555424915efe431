"""Step 3: seal the iteration — its immutable ``IterationManifest`` is what the trainer reads.

With a running target builder (``iteration.builder_url``), the seal goes through its ``POST /seal`` endpoint,
with the builder's admin token (``iteration.builder_admin_token``): the builder first flushes the judgments it
still buffers into shards, so they are in the manifest rather than arriving late. Without one (the embedded
demo, a builder that has stopped), ``seal_iteration`` seals what is durable in S3 directly. Both are
idempotent, and either way the manifest is then read back from the store: the bucket, not an HTTP answer, is
the source of truth the next steps use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cutalign.builder.seal import seal_iteration
from cutalign.config import BuilderSettings, IterationSettings
from cutalign.iteration.http import post_json
from cutalign.store import ArtifactStore
from cutalign.store.layout import iteration_manifest_key
from cutalign.v1 import training_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SealedIteration:
    iteration: int
    manifest_key: str
    manifest_uri: str
    manifest: training_pb2.IterationManifest

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.manifest.counts_by_kind)


def seal(
    store: ArtifactStore,
    iteration: int,
    *,
    builder_url: str | None = None,
    builder: BuilderSettings | None = None,
    timeout_s: float = 120.0,
    token: str | None = None,
) -> SealedIteration:
    """Seal ``iteration`` through the builder at ``builder_url``, or in this process when it is None.

    ``token`` is the builder's admin token (default: ``CUTALIGN_ITERATION_BUILDER_ADMIN_TOKEN``).
    """
    if builder_url:
        if token is None:
            secret = IterationSettings().builder_admin_token
            token = secret.get_secret_value() if secret is not None else None
        url = f"{builder_url.rstrip('/')}/seal?iteration={iteration}"
        post_json(url, timeout_s=timeout_s, token=token)
    else:
        seal_iteration(store, builder or BuilderSettings(), iteration, sealed_by="pipeline")
    key = iteration_manifest_key(iteration)
    manifest = store.get_manifest(key, training_pb2.IterationManifest)
    log.info("iteration %d sealed by %s: %s", iteration, manifest.sealed_by, dict(manifest.counts_by_kind))
    return SealedIteration(iteration, key, store.uri(key), manifest)
