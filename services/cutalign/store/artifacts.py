"""The artifact store: S3 (MinIO on a cluster, SeaweedFS locally) through the ``minio`` client.

Why this layer exists: training data and checkpoints are only trustworthy if nobody can observe a half-written
set of objects or silently read a corrupted one. So:
* every object is written with its sha256 in the object metadata, and every read verifies it (against the
  caller's expected digest when given, else against the stored one) — a mismatch is a ``ChecksumMismatch``;
* publishing is *data first, manifest last*: a manifest lists the sha256 and size of the objects it names and
  is   written with a conditional put (``If-None-Match: *``), so a manifest, once there, is never overwritten
  (``ManifestExists``) and readers that start from a manifest only ever see complete data;
* large files go up as multipart uploads (part size from settings).
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import urllib3
from google.protobuf import json_format
from google.protobuf.message import Message
from minio import Minio
from minio.error import S3Error

from cutalign.config import S3Settings

log = logging.getLogger(__name__)

SHA256_META = "sha256"
_MISSING = ("NoSuchKey", "NoSuchBucket")  # either way the object is not there
_M = TypeVar("_M", bound=Message)


class ChecksumMismatch(Exception):
    """An object's bytes do not match the digest it was published with: refuse to use it."""


class ManifestExists(Exception):
    """A manifest is immutable: a second publish to the same key is refused."""


class ObjectMissing(Exception):
    """The requested key does not exist in the bucket."""


@dataclass(frozen=True)
class ObjectRef:
    key: str
    sha256: str
    size: int


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_json(message: Message) -> bytes:
    """The canonical JSON form of a manifest (protobuf JSON mapping, field names as in the .proto)."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True, sort_keys=True).encode()


def _trusting(ca_bundle: str) -> urllib3.PoolManager:
    """minio's default HTTP client (timeouts, retries on 5xx) that verifies the endpoint by ``ca_bundle``."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=300, read=300),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=ca_bundle,
        retries=urllib3.Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


class ArtifactStore:
    """Typed access to one bucket. Thread-safe as the underlying ``Minio`` client is."""

    def __init__(self, settings: S3Settings, bucket: str | None = None) -> None:
        self.settings = settings
        self.bucket = bucket or settings.bucket
        access_key, secret_key = settings.credentials()
        self.client = Minio(
            settings.endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=_trusting(settings.ca_bundle) if settings.ca_bundle else None,
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_of(self, uri: str) -> str:
        """The key of an ``s3://`` URI in this store's bucket (refuses other buckets rather than guessing)."""
        bucket, key = parse_s3_uri(uri)
        if bucket != self.bucket:
            raise ValueError(f"{uri} is in bucket {bucket!r}, but this store serves {self.bucket!r}")
        return key

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as e:
                if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    # -- writing -------------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        digest = sha256_bytes(data)
        self.client.put_object(
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type=content_type,
            metadata={SHA256_META: digest},
        )
        return ObjectRef(key, digest, len(data))

    def put_file(
        self, key: str, path: Path | str, content_type: str = "application/octet-stream"
    ) -> ObjectRef:
        """Upload a file; files above the part size go up as a multipart upload."""
        path = Path(path)
        digest = sha256_file(path)
        size = path.stat().st_size
        with path.open("rb") as f:
            self.client.put_object(
                self.bucket,
                key,
                f,
                size,
                content_type=content_type,
                metadata={SHA256_META: digest},
                part_size=self.settings.multipart_part_size,
            )
        return ObjectRef(key, digest, size)

    def put_manifest(self, key: str, message: Message) -> ObjectRef:
        """Publish a manifest exactly once. Raises ``ManifestExists`` if the key is already taken."""
        data = manifest_json(message)
        digest = sha256_bytes(data)
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": "application/json",
            "If-None-Match": "*",
            f"x-amz-meta-{SHA256_META}": digest,
        }
        try:
            # minio-py has no public conditional put; _put_object sends our headers unchanged.
            self.client._put_object(self.bucket, key, data, headers=headers)
        except S3Error as e:
            if e.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise ManifestExists(f"manifest {self.uri(key)} already exists and is immutable") from e
            raise
        return ObjectRef(key, digest, len(data))

    def put_pointer(self, key: str, message: Message) -> ObjectRef:
        """Write a mutable pointer object (e.g. ``policy/current.json``): last writer wins, by design."""
        return self.put_bytes(key, manifest_json(message), content_type="application/json")

    def upload_dir(self, prefix: str, directory: Path | str) -> list[ObjectRef]:
        directory = Path(directory)
        refs = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            refs.append(self.put_file(prefix + path.relative_to(directory).as_posix(), path))
        return refs

    # -- reading -------------------------------------------------------------------------------------------

    def _stored_sha256(self, key: str) -> str | None:
        stat = self.client.stat_object(self.bucket, key)
        meta = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        return meta.get(f"x-amz-meta-{SHA256_META}")

    def get_bytes(self, key: str, expected_sha256: str | None = None) -> bytes:
        """Read an object and verify it (against ``expected_sha256``, else the digest stored at write)."""
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as e:
            if e.code in _MISSING:
                raise ObjectMissing(f"{self.uri(key)} does not exist") from e
            raise
        try:
            data = response.read()
            stored = response.headers.get(f"x-amz-meta-{SHA256_META}")
        finally:
            response.close()
            response.release_conn()
        expected = expected_sha256 or stored
        actual = sha256_bytes(data)
        if expected and actual != expected:
            raise ChecksumMismatch(
                f"{self.uri(key)}: sha256 is {actual}, expected {expected}; the object was modified or "
                "corrupted after it was published — do not train on it, rebuild it from its source"
            )
        return data

    def get_file(self, key: str, path: Path | str, expected_sha256: str | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.fget_object(self.bucket, key, str(path))
        except S3Error as e:
            if e.code in _MISSING:
                raise ObjectMissing(f"{self.uri(key)} does not exist") from e
            raise
        expected = expected_sha256 or self._stored_sha256(key)
        actual = sha256_file(path)
        if expected and actual != expected:
            path.unlink()
            raise ChecksumMismatch(f"{self.uri(key)}: sha256 is {actual}, expected {expected}")
        return path

    def get_manifest(self, key: str, message_cls: type[_M]) -> _M:
        data = self.get_bytes(key)
        return json_format.Parse(data.decode(), message_cls(), ignore_unknown_fields=True)

    def download_dir(self, prefix: str, directory: Path | str) -> Path:
        directory = Path(directory)
        keys = self.list(prefix)
        if not keys:
            raise ObjectMissing(f"nothing under {self.uri(prefix)}")
        for key in keys:
            self.get_file(key, directory / key[len(prefix) :].lstrip("/"))
        return directory

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str) -> list[str]:
        return sorted(
            obj.object_name
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            if obj.object_name is not None
        )

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, key)
