"""Where the trainer reads and writes: a local path or an ``s3://bucket/key`` URI of the artifact store.

The trainer takes its data, base model and output as plain strings so the same call works on a laptop
(local directories) and in a PyTorchJob (S3). This module is the one place that tells the two apart and binds
a URI to an ``ArtifactStore`` for its bucket.
"""

from __future__ import annotations

from cutalign.config import S3Settings
from cutalign.store import ArtifactStore, parse_s3_uri


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


def join(location: str, *parts: str) -> str:
    """``join("s3://b/run", "model")`` -> ``"s3://b/run/model"``; local paths likewise."""
    return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])


def resolve(uri: str, store: ArtifactStore | None) -> tuple[ArtifactStore, str]:
    """The store serving ``uri``'s bucket and the key inside it.

    ``store`` supplies the endpoint and credentials (default: ``S3Settings()`` from the environment); a URI in
    another bucket of the same endpoint gets a store bound to that bucket.
    """
    bucket, key = parse_s3_uri(uri)
    base = store or ArtifactStore(S3Settings())
    if base.bucket == bucket:
        return base, key
    return ArtifactStore(base.settings, bucket=bucket), key


def as_prefix(key: str) -> str:
    """A key read as a "directory": ending in exactly one slash (empty stays empty: the bucket root)."""
    return key.rstrip("/") + "/" if key.strip("/") else ""
