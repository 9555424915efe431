"""Training shards: JSONL objects of ``TrainingExample`` records, each published with a ``ShardManifest``.

Why JSONL (one ``TrainingExample`` per line, protobuf JSON mapping with the .proto field names): shards are
small (hundreds of examples), written in one go and read in one go, so a columnar format buys nothing; JSON
lines are streamable, readable with ``head``/``jq`` when a training run looks wrong, and other tools can
append or produce them without protobuf. Lines are ASCII-only (non-ASCII escaped as ``\\uXXXX``): a response
holding U+2028 or U+0085 stays on one line for every line splitter, including Python's ``str.splitlines``.

Publishing is data first, manifest last. A shard's key derives from its topic-partition and offset range, and
its bytes from the judgments at those offsets, so rewriting it after a crash yields the same key and bytes:
* manifest already there with the same content: nothing to do (idempotent);
* manifest there with *different* content: ``ShardConflict`` — two builders disagree about the same offsets,
  which must be investigated, never papered over (the existing shard is left untouched);
* no manifest: (re)write the data, then publish the manifest with a conditional put.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from cutalign.store import ArtifactStore, ManifestExists, ObjectMissing, layout, sha256_bytes
from cutalign.v1 import common_pb2, training_pb2

FORMAT = "jsonl"
SCHEMA_VERSION = 1
CONTENT_TYPE = "application/x-ndjson"


class ShardConflict(RuntimeError):
    """A shard key is already published with other content: two writers disagree about the same offsets."""


# -- encoding: the protobuf JSON mapping, ~3x faster than json_format (the builder's hottest path) ----------

_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}  # fmt: skip
_UNSUPPORTED = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_BYTES,
                FieldDescriptor.TYPE_GROUP}  # fmt: skip


def _check_encodable(descriptor: Descriptor, seen: set[str]) -> None:
    """Fail at import if the schema grows a field type ``_json_object`` does not map like json_format."""
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        nested = field.message_type
        if field.type in _UNSUPPORTED or (nested is not None and nested.GetOptions().map_entry):
            raise TypeError(
                f"{field.full_name}: the shard encoder does not map this field type; extend "
                "cutalign.builder.shards._converter (and its test against json_format)"
            )
        if nested is not None and nested.full_name not in seen:
            _check_encodable(nested, seen)


_check_encodable(training_pb2.TrainingExample.DESCRIPTOR, set())


@functools.cache
def _converter(field: FieldDescriptor) -> Callable[[Any], Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _json_object
    if field.type == FieldDescriptor.TYPE_ENUM:
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda number: names.get(
            number, number
        )  # an unknown enum value stays a number, as in json_format
    if field.type in _INT64:
        return str  # 64-bit integers are JSON strings in the protobuf mapping
    return lambda value: value


def _json_object(message: Message) -> dict[str, Any]:
    """``json_format.MessageToDict(message, preserving_proto_field_name=True)`` for the supported types."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        convert = _converter(field)
        out[field.name] = [convert(v) for v in value] if field.is_repeated else convert(value)
    return out


def encode_shard(examples: list[training_pb2.TrainingExample]) -> bytes:
    lines = [
        json.dumps(_json_object(e), sort_keys=True, ensure_ascii=True, separators=(",", ":"))
        for e in examples
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


def decode_shard(data: bytes, where: str) -> list[training_pb2.TrainingExample]:
    examples = []
    for line_no, line in enumerate(data.decode("utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            examples.append(json_format.Parse(line, training_pb2.TrainingExample()))
        except json_format.ParseError as e:
            raise ValueError(f"{where}:{line_no}: not a TrainingExample in protobuf JSON: {e}") from e
    return examples


def _kind_name(kind: int) -> str:
    return training_pb2.ExampleKind.Name(kind)


def build_manifest(
    key: str, data: bytes, examples: list[training_pb2.TrainingExample], iteration: int
) -> training_pb2.ShardManifest:
    first, last = examples[0].position, examples[-1].position
    return training_pb2.ShardManifest(
        key=key,
        sha256=sha256_bytes(data),
        size_bytes=len(data),
        count=len(examples),
        counts_by_kind=dict(Counter(_kind_name(e.kind) for e in examples)),
        offsets=common_pb2.OffsetRange(
            topic=first.topic, partition=first.partition, first_offset=first.offset, last_offset=last.offset
        ),
        iteration=iteration,
        format=FORMAT,
        created_at_ms=int(time.time() * 1000),
        schema_version=SCHEMA_VERSION,
    )


def _same_content(a: training_pb2.ShardManifest, b: training_pb2.ShardManifest) -> bool:
    left, right = training_pb2.ShardManifest(), training_pb2.ShardManifest()
    left.CopyFrom(a)
    right.CopyFrom(b)
    left.ClearField("created_at_ms")
    right.ClearField("created_at_ms")
    return left == right


def _existing(store: ArtifactStore, manifest_key: str) -> training_pb2.ShardManifest | None:
    try:
        return store.get_manifest(manifest_key, training_pb2.ShardManifest)
    except ObjectMissing:
        return None


def _check_same(existing: training_pb2.ShardManifest, ours: training_pb2.ShardManifest) -> None:
    if not _same_content(existing, ours):
        raise ShardConflict(
            f"shard {ours.key} is already published with different content (sha256 {existing.sha256}, "
            f"{existing.count} examples; this builder built sha256 {ours.sha256}, {ours.count} examples) "
            f"from offsets {ours.offsets.first_offset}..{ours.offsets.last_offset}: two builders disagree. "
            "The published shard is untouched; stop the builders and compare them (a second builder with "
            "another configuration on the same group?) before restarting."
        )


def write_shard(
    store: ArtifactStore, iteration: int, examples: list[training_pb2.TrainingExample]
) -> training_pb2.ShardManifest:
    """Publish one shard of ``examples`` (one topic-partition, ascending offsets) and its manifest."""
    positions = [(e.position.topic, e.position.partition) for e in examples]
    offsets = [e.position.offset for e in examples]
    if not examples or len(set(positions)) != 1 or offsets != sorted(set(offsets)):
        raise ValueError("a shard holds examples of one topic-partition in strictly ascending offset order")
    topic, partition = positions[0]
    key = layout.shard_key(iteration, topic, partition, offsets[0], offsets[-1])
    manifest_key = layout.shard_manifest_key(key)
    data = encode_shard(examples)
    ours = build_manifest(key, data, examples, iteration)
    existing = _existing(store, manifest_key)
    if existing is not None:
        _check_same(existing, ours)
        return existing
    store.put_bytes(key, data, content_type=CONTENT_TYPE)
    try:
        store.put_manifest(manifest_key, ours)
    except ManifestExists:
        existing = store.get_manifest(manifest_key, training_pb2.ShardManifest)
        _check_same(existing, ours)
        return existing
    return ours


def read_shard(
    store: ArtifactStore, manifest: training_pb2.ShardManifest
) -> list[training_pb2.TrainingExample]:
    """The examples of a published shard, verified against the manifest's sha256 and count."""
    data = store.get_bytes(manifest.key, expected_sha256=manifest.sha256)
    examples = decode_shard(data, store.uri(manifest.key))
    if len(examples) != manifest.count:
        raise ValueError(
            f"{store.uri(manifest.key)} holds {len(examples)} examples but its manifest says {manifest.count}"
        )
    return examples


def list_shard_manifests(store: ArtifactStore, iteration: int) -> list[str]:
    """Keys of the published shard manifests of ``iteration``, in key order (topic, partition, offset)."""
    return [k for k in store.list(layout.shards_prefix(iteration)) if k.endswith(".manifest.json")]
