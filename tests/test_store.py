"""The artifact store against real SeaweedFS: atomic publish, verification on read, immutable manifests."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cutalign.platform import LocalPlatform
from cutalign.store import (
    ArtifactStore,
    ChecksumMismatch,
    ManifestExists,
    ObjectMissing,
    layout,
    sha256_bytes,
)
from cutalign.v1 import training_pb2


def test_put_get_verifies_sha256(store: ArtifactStore) -> None:
    ref = store.put_bytes("a/b.bin", b"hello")
    assert ref.sha256 == sha256_bytes(b"hello") and ref.size == 5
    assert store.get_bytes("a/b.bin") == b"hello"
    assert store.get_bytes("a/b.bin", expected_sha256=ref.sha256) == b"hello"
    with pytest.raises(ChecksumMismatch, match="expected"):
        store.get_bytes("a/b.bin", expected_sha256=sha256_bytes(b"other"))


def test_tampered_object_is_detected_on_read(store: ArtifactStore) -> None:
    ref = store.put_bytes("shard.jsonl", b'{"x": 1}\n')
    # Someone overwrites the bytes behind the store's back, keeping the old digest metadata.
    store.client.put_object(
        store.bucket, "shard.jsonl", io.BytesIO(b'{"x": 2}\n'), 9, metadata={"sha256": ref.sha256}
    )
    with pytest.raises(ChecksumMismatch, match="modified or corrupted"):
        store.get_bytes("shard.jsonl")


def test_manifest_is_written_once(store: ArtifactStore) -> None:
    key = layout.iteration_manifest_key(3)
    manifest = training_pb2.IterationManifest(iteration=3, seed=7, excluded_sample_ids=["a", "b"])
    store.put_manifest(key, manifest)
    with pytest.raises(ManifestExists, match="immutable"):
        store.put_manifest(key, training_pb2.IterationManifest(iteration=3, seed=8))
    assert store.get_manifest(key, training_pb2.IterationManifest) == manifest


def test_large_file_goes_multipart_and_round_trips(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "ckpt.bin"
    src.write_bytes(bytes(range(256)) * (24 * 1024 * 1024 // 256))  # 24 MiB > 16 MiB part size
    ref = store.put_file("ckpt/model.bin", src)
    out = store.get_file("ckpt/model.bin", tmp_path / "back.bin", expected_sha256=ref.sha256)
    assert out.read_bytes() == src.read_bytes()


def test_upload_and_download_dir(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "config.json").write_text("{}")
    (tmp_path / "src" / "sub" / "w.bin").write_bytes(b"\x00\x01")
    refs = store.upload_dir("models/tiny/", tmp_path / "src")
    assert [r.key for r in refs] == ["models/tiny/config.json", "models/tiny/sub/w.bin"]
    store.download_dir("models/tiny/", tmp_path / "dst")
    assert (tmp_path / "dst" / "sub" / "w.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ObjectMissing):
        store.download_dir("models/none/", tmp_path / "x")


def test_shard_keys_derive_from_offsets() -> None:
    key = layout.shard_key(1, "cutalign.judgments", 2, 100, 199)
    assert key == "iterations/0001/shards/cutalign.judgments-002-000000000100-000000000199.jsonl"
    assert layout.shard_manifest_key(key).endswith("000000000199.manifest.json")


def test_the_embedded_store_takes_a_bucket_per_run_without_running_out_of_volumes(
    platform: LocalPlatform, unique_name: str
) -> None:
    """Every experiment arm and seed writes into a bucket of its own, and each SeaweedFS bucket is a
    collection with volumes of its own: sized by free disk (one 1 GB volume per GB), the embedded store
    refused writes (500, "no free volumes") after some 75 buckets here. A results run (arms x seeds x tasks)
    makes over a hundred; each bucket must take and give back an object."""
    buckets = 120
    stores = [
        ArtifactStore(platform.s3.model_copy(update={"bucket": f"{unique_name[:40]}-{i}"}))
        for i in range(buckets)
    ]
    for i, bucket in enumerate(stores):
        bucket.ensure_bucket()
        bucket.put_bytes("probe.txt", f"bucket {i}".encode())
    assert [b.get_bytes("probe.txt").decode() for b in stores] == [f"bucket {i}" for i in range(buckets)]
