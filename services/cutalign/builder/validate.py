"""Turning one judgment message into a CUT training example, or a rejection with a stable reason.

``process`` is pure (no I/O, no state beyond the ``Rules`` it is given) so every rejection path is unit-tested
without a broker. Deduplication is *not* here: it needs the durable state of the store (see ``ledger``).

A rejection reason is a stable, machine-readable code that ends up in ``DeadLetter.reason`` and in the
``cutalign_builder_dead_lettered_total{reason}`` metric; alerting and replay tooling key on it, so never
rename one. The bus itself adds ``decode_error``, ``wrong_schema`` and ``unknown_schema_version`` for
messages that never decode.

Judgment-text rules are shared with the trainer's loader (``cutalign.cut.examples``): anything the loader
would reject as a failed judge call is rejected here first, so it never reaches a shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import DecodeError, Message

from cutalign.builder.wire import invalid_utf8_field
from cutalign.bus import Envelope
from cutalign.cut.examples import judgment_problem, span_problem
from cutalign.v1 import messages_pb2, training_pb2

INVALID_UTF8 = "invalid_utf8"
DECODE_ERROR = "decode_error"
MISSING_SAMPLE_ID = "missing_sample_id"
MISSING_INSTRUCTION = "missing_instruction"
EMPTY_RESPONSE = "empty_response"
EMPTY_JUDGMENT = "empty_judgment"
ERROR_JUDGMENT = "error_judgment"
OVERSIZE_TEXT = "oversize_text"
UNKNOWN_POLARITY = "unknown_polarity"
BAD_ERROR_SPAN = "bad_error_span"
UNKNOWN_ITERATION = "unknown_iteration"
LATE_FOR_SEALED_ITERATION = "late_for_sealed_iteration"

REASONS = (
    INVALID_UTF8, DECODE_ERROR, MISSING_SAMPLE_ID, MISSING_INSTRUCTION, EMPTY_RESPONSE, EMPTY_JUDGMENT,
    ERROR_JUDGMENT, OVERSIZE_TEXT, UNKNOWN_POLARITY, BAD_ERROR_SPAN, UNKNOWN_ITERATION,
    LATE_FOR_SEALED_ITERATION,
)  # fmt: skip

LatePolicy = Literal["next", "deadletter"]


@dataclass(frozen=True)
class Rules:
    """What the builder accepts right now.

    Iterations ``first_iteration <= i < open_iteration`` are sealed (the open iteration is the lowest unsealed
    one at or above ``first_iteration``); a judgment for one of them is *late*. Any other iteration than the
    open one is unknown to this builder.
    """

    open_iteration: int
    first_iteration: int
    max_text_bytes: int


@dataclass(frozen=True)
class Accepted:
    """A valid judgment as a training example for ``example.iteration``.

    ``late_from`` is the sealed iteration it was judged for when it arrived late (``example.iteration`` is
    then the open iteration); the caller checks it against that iteration's data, then applies the policy.
    """

    example: training_pb2.TrainingExample
    late_from: int | None = None


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


def judged_iteration(sample: messages_pb2.Sample) -> int:
    """The iteration a sample belongs to: its own field, else its prompt's (producers set one or both)."""
    return sample.iteration or sample.prompt.iteration


def _decode(envelope: Envelope[Message]) -> messages_pb2.Judgment | Rejection:
    try:
        return messages_pb2.Judgment.FromString(envelope.value)
    except DecodeError as e:
        field = invalid_utf8_field(envelope.message)
        if (
            field is None
        ):  # the bus parsed the same bytes, so this is not expected; still never crash on input
            return Rejection(DECODE_ERROR, f"not a valid cutalign.v1.Judgment: {e}")
        return Rejection(INVALID_UTF8, f"field {field} is not valid UTF-8")


def _text_problem(judgment: messages_pb2.Judgment, max_text_bytes: int) -> Rejection | None:
    sample = judgment.sample
    for name, text in (
        ("sample.response", sample.response),
        ("text", judgment.text),
        ("sample.prompt.instruction", sample.prompt.instruction),
        ("sample.prompt.input", sample.prompt.input),
    ):
        size = len(text.encode("utf-8"))
        if size > max_text_bytes:
            return Rejection(
                OVERSIZE_TEXT, f"{name} is {size} bytes, over builder.max_text_bytes={max_text_bytes}"
            )
    if not sample.id.strip():
        return Rejection(
            MISSING_SAMPLE_ID, "judgment.sample.id is empty: the judgment cannot be deduplicated"
        )
    if not sample.prompt.instruction.strip():
        return Rejection(MISSING_INSTRUCTION, "judgment.sample.prompt.instruction is empty")
    if not sample.response.strip():
        return Rejection(EMPTY_RESPONSE, "judgment.sample.response is empty")
    return None


def _judgment_problem(judgment: messages_pb2.Judgment) -> Rejection | None:
    text = judgment.text
    if judgment.polarity not in (messages_pb2.POSITIVE, messages_pb2.NEGATIVE):
        return Rejection(UNKNOWN_POLARITY, f"polarity {judgment.polarity} is neither POSITIVE nor NEGATIVE")
    if judgment.polarity == messages_pb2.NEGATIVE and not text.strip():
        return Rejection(EMPTY_JUDGMENT, "a negative judgment without text cannot condition Align-N")
    problem = (
        judgment_problem(text) if text.strip() else None
    )  # an empty positive is the reference convention
    if problem is not None:
        return Rejection(ERROR_JUDGMENT, problem)
    spans = tuple((s.start, s.end) for s in judgment.error_spans)
    span = span_problem(spans, judgment.sample.response)
    if span is not None:
        return Rejection(BAD_ERROR_SPAN, span)
    return None


def _route(iteration: int, rules: Rules) -> tuple[int, int | None] | Rejection:
    if iteration == rules.open_iteration:
        return iteration, None
    if rules.first_iteration <= iteration < rules.open_iteration:
        return rules.open_iteration, iteration
    return Rejection(
        UNKNOWN_ITERATION,
        f"judged for iteration {iteration}; this builder has iteration {rules.open_iteration} open and seals "
        f"from builder.iteration={rules.first_iteration} on",
    )


def to_example(
    judgment: messages_pb2.Judgment, iteration: int, envelope: Envelope[Message]
) -> training_pb2.TrainingExample:
    sample = judgment.sample
    positive = judgment.polarity == messages_pb2.POSITIVE
    return training_pb2.TrainingExample(
        sample_id=sample.id,
        kind=training_pb2.ALIGN_P if positive else training_pb2.ALIGN_N_MISALIGN,
        instruction=sample.prompt.instruction,
        input=sample.prompt.input,
        response=sample.response,
        judgment="" if positive else judgment.text,
        error_spans=judgment.error_spans,
        iteration=iteration,
        judge_id=judgment.judge_id,
        source=judgment.source,
        policy=sample.policy,
        position=envelope.position,
    )


def process(envelope: Envelope[Message], rules: Rules) -> Accepted | Rejection:
    """Validate and classify one judgment message (decoded leniently by the bus, see ``wire``)."""
    judgment = _decode(envelope)
    if isinstance(judgment, Rejection):
        return judgment
    problem = _text_problem(judgment, rules.max_text_bytes) or _judgment_problem(judgment)
    if problem is not None:
        return problem
    routed = _route(judged_iteration(judgment.sample), rules)
    if isinstance(routed, Rejection):
        return routed
    iteration, late_from = routed
    return Accepted(to_example(judgment, iteration, envelope), late_from)


def apply_late_policy(accepted: Accepted, policy: LatePolicy) -> Accepted | Rejection:
    """A late judgment not already in its sealed iteration moves to the open one or is dead-lettered."""
    if accepted.late_from is None or policy == "next":
        return accepted
    return Rejection(
        LATE_FOR_SEALED_ITERATION,
        f"judged for iteration {accepted.late_from}, which is sealed (builder.late_policy=deadletter)",
    )
