from cutalign.v1 import common_pb2 as _common_pb2
from cutalign.v1 import messages_pb2 as _messages_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExampleKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXAMPLE_KIND_UNSPECIFIED: _ClassVar[ExampleKind]
    ALIGN_P: _ClassVar[ExampleKind]
    ALIGN_N_MISALIGN: _ClassVar[ExampleKind]
EXAMPLE_KIND_UNSPECIFIED: ExampleKind
ALIGN_P: ExampleKind
ALIGN_N_MISALIGN: ExampleKind

class TrainingExample(_message.Message):
    __slots__ = ("sample_id", "kind", "instruction", "input", "response", "judgment", "error_spans", "iteration", "judge_id", "source", "policy", "position")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    JUDGMENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_SPANS_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    JUDGE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    kind: ExampleKind
    instruction: str
    input: str
    response: str
    judgment: str
    error_spans: _containers.RepeatedCompositeFieldContainer[_common_pb2.Span]
    iteration: int
    judge_id: str
    source: _messages_pb2.JudgmentSource
    policy: _common_pb2.PolicyVersion
    position: _common_pb2.KafkaPosition
    def __init__(self, sample_id: _Optional[str] = ..., kind: _Optional[_Union[ExampleKind, str]] = ..., instruction: _Optional[str] = ..., input: _Optional[str] = ..., response: _Optional[str] = ..., judgment: _Optional[str] = ..., error_spans: _Optional[_Iterable[_Union[_common_pb2.Span, _Mapping]]] = ..., iteration: _Optional[int] = ..., judge_id: _Optional[str] = ..., source: _Optional[_Union[_messages_pb2.JudgmentSource, str]] = ..., policy: _Optional[_Union[_common_pb2.PolicyVersion, _Mapping]] = ..., position: _Optional[_Union[_common_pb2.KafkaPosition, _Mapping]] = ...) -> None: ...

class ShardManifest(_message.Message):
    __slots__ = ("key", "sha256", "size_bytes", "count", "counts_by_kind", "offsets", "iteration", "format", "created_at_ms", "schema_version")
    class CountsByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    COUNTS_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    sha256: str
    size_bytes: int
    count: int
    counts_by_kind: _containers.ScalarMap[str, int]
    offsets: _common_pb2.OffsetRange
    iteration: int
    format: str
    created_at_ms: int
    schema_version: int
    def __init__(self, key: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., count: _Optional[int] = ..., counts_by_kind: _Optional[_Mapping[str, int]] = ..., offsets: _Optional[_Union[_common_pb2.OffsetRange, _Mapping]] = ..., iteration: _Optional[int] = ..., format: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., schema_version: _Optional[int] = ...) -> None: ...

class IterationManifest(_message.Message):
    __slots__ = ("iteration", "shards", "counts_by_kind", "counts_before_downsampling", "align_p_ratio", "seed", "excluded_sample_ids", "offsets", "judge_ids", "sources", "sealed_at_ms", "schema_version", "sealed_by", "duplicate_positions")
    class CountsByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class CountsBeforeDownsamplingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    COUNTS_BEFORE_DOWNSAMPLING_FIELD_NUMBER: _ClassVar[int]
    ALIGN_P_RATIO_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    JUDGE_IDS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SEALED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEALED_BY_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardManifest]
    counts_by_kind: _containers.ScalarMap[str, int]
    counts_before_downsampling: _containers.ScalarMap[str, int]
    align_p_ratio: float
    seed: int
    excluded_sample_ids: _containers.RepeatedScalarFieldContainer[str]
    offsets: _containers.RepeatedCompositeFieldContainer[_common_pb2.OffsetRange]
    judge_ids: _containers.RepeatedScalarFieldContainer[str]
    sources: _containers.RepeatedScalarFieldContainer[str]
    sealed_at_ms: int
    schema_version: int
    sealed_by: str
    duplicate_positions: _containers.RepeatedCompositeFieldContainer[_common_pb2.KafkaPosition]
    def __init__(self, iteration: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardManifest, _Mapping]]] = ..., counts_by_kind: _Optional[_Mapping[str, int]] = ..., counts_before_downsampling: _Optional[_Mapping[str, int]] = ..., align_p_ratio: _Optional[float] = ..., seed: _Optional[int] = ..., excluded_sample_ids: _Optional[_Iterable[str]] = ..., offsets: _Optional[_Iterable[_Union[_common_pb2.OffsetRange, _Mapping]]] = ..., judge_ids: _Optional[_Iterable[str]] = ..., sources: _Optional[_Iterable[str]] = ..., sealed_at_ms: _Optional[int] = ..., schema_version: _Optional[int] = ..., sealed_by: _Optional[str] = ..., duplicate_positions: _Optional[_Iterable[_Union[_common_pb2.KafkaPosition, _Mapping]]] = ...) -> None: ...

class PolicyRelease(_message.Message):
    __slots__ = ("version", "base_model_uri", "manifest_key", "eval_metrics", "promoted_at_ms")
    class EvalMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_KEY_FIELD_NUMBER: _ClassVar[int]
    EVAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    version: _common_pb2.PolicyVersion
    base_model_uri: str
    manifest_key: str
    eval_metrics: _containers.ScalarMap[str, float]
    promoted_at_ms: int
    def __init__(self, version: _Optional[_Union[_common_pb2.PolicyVersion, _Mapping]] = ..., base_model_uri: _Optional[str] = ..., manifest_key: _Optional[str] = ..., eval_metrics: _Optional[_Mapping[str, float]] = ..., promoted_at_ms: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("original_value", "original_key", "position", "reason", "detail", "service", "created_at_ms", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ORIGINAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_KEY_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    original_value: bytes
    original_key: bytes
    position: _common_pb2.KafkaPosition
    reason: str
    detail: str
    service: str
    created_at_ms: int
    headers: _containers.ScalarMap[str, str]
    def __init__(self, original_value: _Optional[bytes] = ..., original_key: _Optional[bytes] = ..., position: _Optional[_Union[_common_pb2.KafkaPosition, _Mapping]] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., service: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...
