"""S3 artifact store: checksummed objects, immutable manifests, and the bucket layout."""

from cutalign.store.artifacts import (
    ArtifactStore,
    ChecksumMismatch,
    ManifestExists,
    ObjectMissing,
    ObjectRef,
    manifest_json,
    parse_s3_uri,
    sha256_bytes,
    sha256_file,
)

__all__ = [
    "ArtifactStore",
    "ChecksumMismatch",
    "ManifestExists",
    "ObjectMissing",
    "ObjectRef",
    "manifest_json",
    "parse_s3_uri",
    "sha256_bytes",
    "sha256_file",
]
