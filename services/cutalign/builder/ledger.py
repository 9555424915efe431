"""Which sample ids already have a durable training example — derived from the store, never from memory alone.

The truth about what was built is what the store holds, because that is what survives a crash: for the open
iteration, the examples of every shard whose manifest is published (a shard without a manifest was never
published and is ignored); for a sealed iteration, the shards its ``IterationManifest`` lists (a shard written
after the seal is not part of it). A judgment redelivered after a crash — or re-sent by its producer — is a
duplicate iff its sample id is in that set — or in one of the last ``builder.dedupe_iterations`` sealed
iterations: a prompt re-sent by its producer after its iteration was sealed comes back as the same sample id
in the open iteration (a restarted generator no longer remembers it), and must not be trained on twice. The
ledger reads each shard once and then only adds what this builder publishes; ``refresh`` picks up shards
other builders published (after a partition handover).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cutalign.builder.shards import list_shard_manifests, read_shard
from cutalign.store import ArtifactStore, ObjectMissing, layout
from cutalign.v1 import training_pb2

log = logging.getLogger(__name__)


@dataclass
class _Iteration:
    ids: set[str] = field(default_factory=set)
    shard_keys: set[str] = field(default_factory=set)
    first_shard_ms: int | None = None


class Ledger:
    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._open: dict[int, _Iteration] = {}
        self._sealed: dict[int, set[str]] = {}
        self._manifests: dict[int, training_pb2.IterationManifest] = {}
        self._recent: dict[tuple[int, int], set[str]] = {}  # (iteration, window) -> ids, until a seal

    # -- the open iteration --------------------------------------------------------------------------------

    def _entry(self, iteration: int) -> _Iteration:
        if iteration not in self._open:
            self._open[iteration] = _Iteration()
            self.refresh(iteration)
        return self._open[iteration]

    def refresh(self, iteration: int) -> None:
        """Read the shards of ``iteration`` published since the last refresh (by anyone)."""
        entry = self._open.setdefault(iteration, _Iteration())
        new = [k for k in list_shard_manifests(self.store, iteration) if k not in entry.shard_keys]
        for manifest_key in new:
            manifest = self.store.get_manifest(manifest_key, training_pb2.ShardManifest)
            self.record(iteration, manifest, [e.sample_id for e in read_shard(self.store, manifest)])
            entry.shard_keys.add(manifest_key)
        if new:
            log.info(
                "ledger refreshed", extra={"iteration": iteration, "shards": len(new), "ids": len(entry.ids)}
            )

    def record(self, iteration: int, manifest: training_pb2.ShardManifest, sample_ids: list[str]) -> None:
        """A shard of ``iteration`` is published: its ids are durable."""
        entry = self._open.setdefault(iteration, _Iteration())
        entry.ids.update(sample_ids)
        entry.shard_keys.add(layout.shard_manifest_key(manifest.key))
        if entry.first_shard_ms is None or manifest.created_at_ms < entry.first_shard_ms:
            entry.first_shard_ms = manifest.created_at_ms

    def ids(self, iteration: int) -> set[str]:
        return self._entry(iteration).ids

    def first_shard_ms(self, iteration: int) -> int | None:
        """When the first shard of ``iteration`` was published (the clock of ``builder.seal_deadline_s``)."""
        return self._entry(iteration).first_shard_ms

    # -- sealed iterations ---------------------------------------------------------------------------------

    def sealed_ids(self, iteration: int) -> set[str]:
        """Every sample id a sealed iteration holds (downsampled-away positives too: they were judged)."""
        if iteration not in self._sealed:
            manifest = self._manifests.pop(iteration, None) or self.store.get_manifest(
                layout.iteration_manifest_key(iteration), training_pb2.IterationManifest
            )
            self._sealed[iteration] = {
                e.sample_id for s in manifest.shards for e in read_shard(self.store, s)
            }
        return self._sealed[iteration]

    def recently_sealed_ids(self, iteration: int, window: int) -> set[str]:
        """The sample ids of the ``window`` sealed iterations before ``iteration`` (those that exist)."""
        key = (iteration, window)
        if key not in self._recent:
            ids: set[str] = set()
            for earlier in range(max(1, iteration - window), iteration):
                try:
                    ids |= self.sealed_ids(earlier)
                except ObjectMissing:  # never sealed (the builder started at a later iteration)
                    continue
            self._recent[key] = ids
        return self._recent[key]

    def sealed(self, iteration: int, manifest: training_pb2.IterationManifest) -> None:
        """``iteration`` was sealed: from now on its truth is ``manifest``, not the shards directory."""
        self._open.pop(iteration, None)
        self._sealed.pop(iteration, None)
        self._recent.clear()
        self._manifests[iteration] = manifest
