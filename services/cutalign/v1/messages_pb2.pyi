from cutalign.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Polarity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLARITY_UNSPECIFIED: _ClassVar[Polarity]
    POSITIVE: _ClassVar[Polarity]
    NEGATIVE: _ClassVar[Polarity]

class JudgmentSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JUDGMENT_SOURCE_UNSPECIFIED: _ClassVar[JudgmentSource]
    JUDGE_SERVICE: _ClassVar[JudgmentSource]
    PRODUCTION_FEEDBACK: _ClassVar[JudgmentSource]
POLARITY_UNSPECIFIED: Polarity
POSITIVE: Polarity
NEGATIVE: Polarity
JUDGMENT_SOURCE_UNSPECIFIED: JudgmentSource
JUDGE_SERVICE: JudgmentSource
PRODUCTION_FEEDBACK: JudgmentSource

class Prompt(_message.Message):
    __slots__ = ("id", "instruction", "input", "reference_json", "iteration", "split", "created_at_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_JSON_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    instruction: str
    input: str
    reference_json: str
    iteration: int
    split: str
    created_at_ms: int
    def __init__(self, id: _Optional[str] = ..., instruction: _Optional[str] = ..., input: _Optional[str] = ..., reference_json: _Optional[str] = ..., iteration: _Optional[int] = ..., split: _Optional[str] = ..., created_at_ms: _Optional[int] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("id", "prompt", "response", "params", "policy", "finish_reason", "generated_tokens", "prompt_truncated", "created_at_ms", "iteration")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: Prompt
    response: str
    params: _common_pb2.GenerationParams
    policy: _common_pb2.PolicyVersion
    finish_reason: str
    generated_tokens: int
    prompt_truncated: bool
    created_at_ms: int
    iteration: int
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ..., response: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., policy: _Optional[_Union[_common_pb2.PolicyVersion, _Mapping]] = ..., finish_reason: _Optional[str] = ..., generated_tokens: _Optional[int] = ..., prompt_truncated: _Optional[bool] = ..., created_at_ms: _Optional[int] = ..., iteration: _Optional[int] = ...) -> None: ...

class Judgment(_message.Message):
    __slots__ = ("sample", "text", "polarity", "judge_id", "source", "created_at_ms", "error_spans", "rating", "feedback_source", "user_hash")
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    POLARITY_FIELD_NUMBER: _ClassVar[int]
    JUDGE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_SPANS_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_SOURCE_FIELD_NUMBER: _ClassVar[int]
    USER_HASH_FIELD_NUMBER: _ClassVar[int]
    sample: Sample
    text: str
    polarity: Polarity
    judge_id: str
    source: JudgmentSource
    created_at_ms: int
    error_spans: _containers.RepeatedCompositeFieldContainer[_common_pb2.Span]
    rating: float
    feedback_source: str
    user_hash: str
    def __init__(self, sample: _Optional[_Union[Sample, _Mapping]] = ..., text: _Optional[str] = ..., polarity: _Optional[_Union[Polarity, str]] = ..., judge_id: _Optional[str] = ..., source: _Optional[_Union[JudgmentSource, str]] = ..., created_at_ms: _Optional[int] = ..., error_spans: _Optional[_Iterable[_Union[_common_pb2.Span, _Mapping]]] = ..., rating: _Optional[float] = ..., feedback_source: _Optional[str] = ..., user_hash: _Optional[str] = ...) -> None: ...
