"""Target builder against real S3: idempotent shards, sealing, downsampling, duplicates, tampering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cutalign.builder import EmptyIteration, ShardConflict, read_sealed_examples, seal_iteration
from cutalign.builder.seal import complete_seal, sealing_marker_key
from cutalign.builder.shards import list_shard_manifests, read_shard, write_shard
from cutalign.config import BuilderSettings
from cutalign.cut.examples import load_manifest
from cutalign.store import ArtifactStore, ChecksumMismatch, layout
from cutalign.v1 import common_pb2, training_pb2

SETTINGS = BuilderSettings(align_p_ratio=0.5, seed=7)


def _example(sid: str, positive: bool, offset: int, partition: int = 0) -> training_pb2.TrainingExample:
    return training_pb2.TrainingExample(
        sample_id=sid,
        kind=training_pb2.ALIGN_P if positive else training_pb2.ALIGN_N_MISALIGN,
        instruction=f"Count for {sid}.",
        response="1 2 3",
        judgment="" if positive else "Stops early: 4 is missing.",
        iteration=1,
        judge_id="counting",
        source=1,
        position=common_pb2.KafkaPosition(topic="judgments", partition=partition, offset=offset),
    )


def _batch(
    first: int, last: int, partition: int = 0, prefix: str = "s"
) -> list[training_pb2.TrainingExample]:
    """Offsets first..last of a partition; sample ids ``{prefix}{offset}``; every third sample is negative."""
    return [_example(f"{prefix}{o:04d}", o % 3 != 0, o, partition) for o in range(first, last + 1)]


def test_rewriting_a_shard_is_idempotent_and_a_conflicting_rewrite_is_refused(store: ArtifactStore) -> None:
    examples = _batch(0, 9)
    first = write_shard(store, 1, examples)
    assert first.key == layout.shard_key(1, "judgments", 0, 0, 9)
    assert (first.count, dict(first.counts_by_kind)) == (10, {"ALIGN_P": 6, "ALIGN_N_MISALIGN": 4})
    assert (first.offsets.first_offset, first.offsets.last_offset) == (0, 9)
    again = write_shard(store, 1, examples)  # a builder restarted before committing
    assert again == first
    assert list_shard_manifests(store, 1) == [layout.shard_manifest_key(first.key)]

    changed = _batch(0, 9)
    changed[3].response = "something else"
    with pytest.raises(ShardConflict, match="two builders disagree"):
        write_shard(store, 1, changed)
    assert read_shard(store, first) == examples  # the published shard is untouched


def test_seal_downsamples_deterministically_and_records_lineage(s3_settings, store: ArtifactStore) -> None:
    write_shard(store, 1, _batch(0, 59, 0))
    write_shard(store, 1, _batch(0, 29, 1, prefix="t"))
    manifest = seal_iteration(store, SETTINGS, 1, sealed_by="test")
    negatives, positives = 20 + 10, 40 + 20
    assert dict(manifest.counts_before_downsampling) == {"ALIGN_P": positives, "ALIGN_N_MISALIGN": negatives}
    assert dict(manifest.counts_by_kind) == {"ALIGN_P": round(0.5 * negatives), "ALIGN_N_MISALIGN": negatives}
    assert len(manifest.excluded_sample_ids) == positives - 15
    assert [(o.partition, o.first_offset, o.last_offset) for o in manifest.offsets] == [
        (0, 0, 59),
        (1, 0, 29),
    ]
    assert list(manifest.judge_ids) == ["counting"] and list(manifest.sources) == ["JUDGE_SERVICE"]
    assert (manifest.align_p_ratio, manifest.seed, manifest.sealed_by) == (0.5, 7, "test")
    assert not manifest.duplicate_positions
    assert [s.key for s in manifest.shards] == sorted(s.key for s in manifest.shards)

    # The same judgments cut into other shards (another bucket): the same positives are kept.
    other = ArtifactStore(s3_settings, bucket=f"{store.bucket}-b"[:63])
    other.ensure_bucket()
    write_shard(other, 1, _batch(0, 29, 1, prefix="t"))
    write_shard(other, 1, _batch(30, 59, 0))
    write_shard(other, 1, _batch(0, 29, 0))
    assert list(seal_iteration(other, SETTINGS, 1).excluded_sample_ids) == list(manifest.excluded_sample_ids)
    # Another seed keeps other positives.
    reseeded = ArtifactStore(s3_settings, bucket=f"{store.bucket}-c"[:63])
    reseeded.ensure_bucket()
    write_shard(reseeded, 1, _batch(0, 59, 0))
    write_shard(reseeded, 1, _batch(0, 29, 1, prefix="t"))
    reseeded_manifest = seal_iteration(reseeded, SETTINGS.model_copy(update={"seed": 8}), 1)
    assert len(reseeded_manifest.excluded_sample_ids) == len(manifest.excluded_sample_ids)
    assert list(reseeded_manifest.excluded_sample_ids) != list(manifest.excluded_sample_ids)

    # Sealing is idempotent: the same manifest comes back; it is never rewritten.
    assert seal_iteration(store, SETTINGS.model_copy(update={"seed": 99}), 1) == manifest


def test_sealed_manifest_holds_each_sample_once_for_both_loaders(store: ArtifactStore) -> None:
    # A crash left two overlapping shards of partition 0 (offsets 0..19 and 10..29).
    write_shard(store, 1, _batch(0, 19))
    write_shard(store, 1, _batch(10, 29))
    manifest = seal_iteration(store, SETTINGS, 1)
    ids = [e.sample_id for e in read_sealed_examples(store, manifest)]
    assert len(ids) == len(set(ids))
    kept_positives = set(ids) - {f"s{o:04d}" for o in range(0, 30, 3)}
    assert set(ids) == {f"s{o:04d}" for o in range(30)} - set(manifest.excluded_sample_ids)
    assert len(kept_positives) == manifest.counts_by_kind["ALIGN_P"] == round(0.5 * 10)
    assert sorted(p.offset for p in manifest.duplicate_positions) == list(range(10, 20))

    loaded = load_manifest(store.uri(layout.iteration_manifest_key(1)), store)  # the trainer's loader
    assert sorted(e.sample_id for e in loaded.examples) == sorted(ids)


def test_the_trainer_loader_refuses_a_shard_tampered_with_after_sealing(store: ArtifactStore) -> None:
    shard = write_shard(store, 1, _batch(0, 9))
    manifest = seal_iteration(store, SETTINGS, 1)
    data = store.get_bytes(shard.key).replace(b"1 2 3", b"1 2 4", 1)
    store.put_bytes(shard.key, data)  # an edit after publication (the store records the new digest)
    with pytest.raises(ChecksumMismatch):
        load_manifest(store.uri(layout.iteration_manifest_key(1)), store)
    with pytest.raises(ChecksumMismatch):
        read_sealed_examples(store, manifest)


def test_an_empty_iteration_is_not_sealed_and_leaves_no_seal_marker(store: ArtifactStore) -> None:
    with pytest.raises(EmptyIteration, match="no published shards"):
        seal_iteration(store, SETTINGS, 4)
    assert not store.exists(sealing_marker_key(4))
    assert complete_seal(store, 4) is None


def test_an_interrupted_seal_is_completed_with_the_sealer_parameters(store: ArtifactStore) -> None:
    write_shard(store, 2, _batch(0, 29))
    marker = {"iteration": 2, "align_p_ratio": 1.0, "seed": 3, "sealed_by": "cli", "started_at_ms": 0}
    store.put_bytes(sealing_marker_key(2), json.dumps(marker).encode())  # the sealer died after its marker
    manifest = complete_seal(store, 2)
    assert manifest is not None
    assert (manifest.align_p_ratio, manifest.seed, manifest.sealed_by) == (1.0, 3, "cli")
    assert manifest.counts_by_kind["ALIGN_P"] == 10
    assert complete_seal(store, 2) == manifest


def test_cli_seals_an_iteration_and_prints_its_summary(store: ArtifactStore, env_for: dict[str, str]) -> None:
    write_shard(store, 3, _batch(0, 29))
    cutalign = str(Path(sys.executable).parent / "cutalign")
    cli = [cutalign, "builder", "seal", "--align-p-ratio", "1", "--iteration", "3"]
    done = subprocess.run(cli, env=env_for, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["manifest"] == store.uri(layout.iteration_manifest_key(3))
    assert summary["counts_by_kind"] == {"ALIGN_P": 10, "ALIGN_N_MISALIGN": 10}
    assert summary["sealed_by"] == "cli"
    again = subprocess.run([*cli, "--seed", "5"], env=env_for, capture_output=True, text=True, timeout=60)
    assert json.loads(again.stdout) == summary  # sealed once; a second seal returns the same manifest
    empty = subprocess.run([*cli[:-1], "4"], env=env_for, capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "no published shards" in empty.stderr
