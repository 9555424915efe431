"""Sealing an iteration: the immutable ``IterationManifest`` the trainer reads, with Align-P downsampling.

The manifest is written once (conditional put) after every shard it lists has been read back and verified
against its sha256. It records everything needed to reproduce and audit the training data: shards with
checksums, counts before and after downsampling, the positives dropped (``excluded_sample_ids``), the Kafka
offset ranges behind the data, judge ids and sources.

Each sample id counts once. Shards of one iteration can only overlap after a crash or a partition handover
(a builder wrote a shard it never committed and a later shard repeats a judgment); the rule is *the first
occurrence in ``shards`` order wins* — shards are listed in key order, i.e. by topic, partition, first offset,
and examples within a shard by offset. The Kafka positions of later occurrences go to ``duplicate_positions``
to record their lineage; loaders keep the first occurrence of each id (as ``read_sealed_examples`` and
``cutalign.cut.examples.load_manifest`` do). ``excluded_sample_ids`` drops every occurrence of an id.

Downsampling (docs/method.md §5): keep ``round(align_p_ratio x negatives)`` positives (at most all of them),
chosen by ``random.Random(seed).sample`` over the *sorted* positive ids, so the same data and seed always keep
the same positives, whatever order the shards were written in.

Seal handshake with a running builder (another process may seal with ``cutalign builder seal``): the sealer
first writes a marker (``iterations/NNNN/sealing.json``, holding the seal parameters), *then* lists the
shards. A builder writes a shard's manifest, *then* looks for the marker; if it is there, it completes the
seal itself with the marker's parameters (or reads the finished manifest) and treats its shard as late if the
manifest does not list it. S3 is strongly consistent, so a shard is either listed in the manifest or its
builder sees the marker: no shard can land silently in a sealed iteration.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass

from cutalign.builder.shards import SCHEMA_VERSION, list_shard_manifests, read_shard
from cutalign.config import BuilderSettings
from cutalign.store import ArtifactStore, ManifestExists, ObjectMissing, layout
from cutalign.v1 import common_pb2, messages_pb2, training_pb2

log = logging.getLogger(__name__)

KINDS = ("ALIGN_P", "ALIGN_N_MISALIGN")


class EmptyIteration(RuntimeError):
    """An iteration without a published shard cannot be sealed: the trainer would have nothing to train on."""


@dataclass(frozen=True)
class SealParams:
    align_p_ratio: float | None  # None keeps every positive
    seed: int
    sealed_by: str


def sealing_marker_key(iteration: int) -> str:
    """Written by a sealer before it lists the shards (see the module docstring)."""
    return f"{layout.iteration_prefix(iteration)}sealing.json"


def is_sealed(store: ArtifactStore, iteration: int) -> bool:
    return store.exists(layout.iteration_manifest_key(iteration))


def open_iteration(store: ArtifactStore, first_iteration: int) -> int:
    """The lowest iteration at or above ``first_iteration`` that is not sealed: where judgments go."""
    iteration = first_iteration
    while is_sealed(store, iteration):
        iteration += 1
    return iteration


def downsample(positive_ids: list[str], negatives: int, ratio: float | None, seed: int) -> list[str]:
    """The positive ids to drop (sorted): keep ``min(all, round(ratio x negatives))``, seeded, order-free;
    a ratio of None keeps them all."""
    ordered = sorted(set(positive_ids))
    keep = len(ordered) if ratio is None else min(len(ordered), round(ratio * negatives))
    kept = set(random.Random(seed).sample(ordered, keep))
    return [sid for sid in ordered if sid not in kept]


def _merged_offsets(shards: list[training_pb2.ShardManifest]) -> list[common_pb2.OffsetRange]:
    ranges = sorted(
        (s.offsets.topic, s.offsets.partition, s.offsets.first_offset, s.offsets.last_offset) for s in shards
    )
    merged: list[list] = []
    for topic, partition, first, last in ranges:
        if merged and merged[-1][:2] == [topic, partition] and first <= merged[-1][3] + 1:
            merged[-1][3] = max(merged[-1][3], last)
        else:
            merged.append([topic, partition, first, last])
    return [
        common_pb2.OffsetRange(topic=t, partition=p, first_offset=f, last_offset=la) for t, p, f, la in merged
    ]


def _published_shards(store: ArtifactStore, iteration: int) -> list[str]:
    keys = list_shard_manifests(store, iteration)
    if not keys:
        raise EmptyIteration(
            f"iteration {iteration} has no published shards under "
            f"{store.uri(layout.shards_prefix(iteration))}: "
            "nothing to seal. Check that judgments for this iteration reach the judgments topic and that the "
            "target builder runs with builder.iteration <= this iteration."
        )
    return keys


def build_iteration_manifest(
    store: ArtifactStore, iteration: int, params: SealParams
) -> training_pb2.IterationManifest:
    """Read and verify every published shard of ``iteration``; compute its manifest (nothing is written)."""
    shards = [store.get_manifest(k, training_pb2.ShardManifest) for k in _published_shards(store, iteration)]
    winners: dict[str, training_pb2.TrainingExample] = {}
    duplicates: list[common_pb2.KafkaPosition] = []
    for shard in shards:
        for example in read_shard(store, shard):
            if example.sample_id in winners:
                duplicates.append(example.position)
            else:
                winners[example.sample_id] = example
    before = Counter(training_pb2.ExampleKind.Name(e.kind) for e in winners.values())
    positives = [sid for sid, e in winners.items() if e.kind == training_pb2.ALIGN_P]
    excluded = downsample(positives, before["ALIGN_N_MISALIGN"], params.align_p_ratio, params.seed)
    after = Counter(before)
    after["ALIGN_P"] -= len(excluded)
    if duplicates:
        log.warning(
            "duplicate sample ids across shards resolved: first occurrence wins",
            extra={"iteration": iteration, "duplicates": len(duplicates)},
        )
    return training_pb2.IterationManifest(
        iteration=iteration,
        shards=shards,
        counts_by_kind={k: after[k] for k in KINDS},
        counts_before_downsampling={k: before[k] for k in KINDS},
        align_p_ratio=params.align_p_ratio,
        seed=params.seed,
        excluded_sample_ids=excluded,
        offsets=_merged_offsets(shards),
        judge_ids=sorted({e.judge_id for e in winners.values() if e.judge_id}),
        sources=sorted({messages_pb2.JudgmentSource.Name(e.source) for e in winners.values()}),
        sealed_at_ms=int(time.time() * 1000),
        schema_version=SCHEMA_VERSION,
        sealed_by=params.sealed_by,
        duplicate_positions=duplicates,
    )


def _published(store: ArtifactStore, iteration: int) -> training_pb2.IterationManifest | None:
    try:
        return store.get_manifest(layout.iteration_manifest_key(iteration), training_pb2.IterationManifest)
    except ObjectMissing:
        return None


def _seal(store: ArtifactStore, iteration: int, params: SealParams) -> training_pb2.IterationManifest:
    manifest = build_iteration_manifest(store, iteration, params)
    try:
        store.put_manifest(layout.iteration_manifest_key(iteration), manifest)
    except ManifestExists:  # another sealer won the race; its manifest is the one
        published = _published(store, iteration)
        assert published is not None
        return published
    log.info(
        "iteration sealed",
        extra={
            "iteration": iteration,
            "shards": len(manifest.shards),
            "counts": dict(manifest.counts_by_kind),
            "excluded": len(manifest.excluded_sample_ids),
            "sealed_by": params.sealed_by,
        },
    )
    return manifest


def seal_iteration(
    store: ArtifactStore, settings: BuilderSettings, iteration: int, *, sealed_by: str = "api"
) -> training_pb2.IterationManifest:
    """Seal ``iteration`` with ``settings.align_p_ratio``/``seed``; idempotent (returns an existing manifest).

    Seals what is durable in the store; a running builder's buffered judgments for this iteration arrive late
    (see ``builder.late_policy``). ``POST /seal`` on the builder flushes its buffers first.
    """
    published = _published(store, iteration)
    if published is not None:
        log.info("iteration already sealed", extra={"iteration": iteration, "sealed_by": published.sealed_by})
        return published
    _published_shards(store, iteration)  # refuse an empty iteration before announcing a seal
    params = SealParams(settings.align_p_ratio, settings.seed, sealed_by)
    marker = json.dumps({"iteration": iteration, "started_at_ms": int(time.time() * 1000), **asdict(params)})
    store.put_bytes(sealing_marker_key(iteration), marker.encode(), content_type="application/json")
    return _seal(store, iteration, params)


def complete_seal(store: ArtifactStore, iteration: int) -> training_pb2.IterationManifest | None:
    """The manifest if ``iteration`` is sealed or being sealed (the seal is finished if needed), else None.

    Looks for the marker first (one request in the common case: no seal): every seal writes it before
    anything else, so an iteration without a marker is neither sealed nor being sealed.
    """
    if not store.exists(sealing_marker_key(iteration)):
        return None
    published = _published(store, iteration)
    if published is not None:
        return published
    marker = json.loads(store.get_bytes(sealing_marker_key(iteration)))  # markers are never deleted
    ratio = marker["align_p_ratio"]
    params = SealParams(
        None if ratio is None else float(ratio), int(marker["seed"]), str(marker["sealed_by"])
    )
    return _seal(store, iteration, params)


def read_sealed_examples(
    store: ArtifactStore, manifest: training_pb2.IterationManifest
) -> list[training_pb2.TrainingExample]:
    """The examples a sealed manifest stands for: checksums verified, duplicates and exclusions dropped."""
    excluded = set(manifest.excluded_sample_ids)
    kept: dict[str, training_pb2.TrainingExample] = {}
    for shard in manifest.shards:
        for example in read_shard(store, shard):
            if example.sample_id not in excluded:
                kept.setdefault(example.sample_id, example)
    return list(kept.values())
