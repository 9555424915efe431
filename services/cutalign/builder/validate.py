"""Turning one judgment message into a CUT training example, or a rejection with a stable reason.

Two pure steps (no I/O), so every rejection path is unit-tested without a broker:

* ``process(envelope, max_text_bytes)`` validates a judgment and converts it into a ``TrainingExample`` of the
  iteration it was judged for (0: *unassigned*, as production feedback is published);
* ``route(iteration, source, rules, late_policy)`` decides which iteration the example goes to, given what
  the builder has open: an unassigned judgment goes to the open iteration; one for a sealed iteration is
  *late* and moves to the open one (production feedback always: nothing users say is dead-lettered because an
  iteration was sealed; judge-service judgments per ``builder.late_policy``).

Deduplication is *not* here: it needs the durable state of the store (see ``ledger``).

A rejection reason is a stable, machine-readable code that ends up in ``DeadLetter.reason`` and in the
``cutalign_builder_dead_lettered_total{reason}`` metric; alerting and replay tooling key on it, so never
rename one. The bus itself adds ``missing_schema``, ``decode_error``, ``wrong_schema`` and
``unknown_schema_version`` for messages that never decode.

Content rules (ids, visible text, spans, sizes) are ``cutalign.checks``, the same the judge, the generator and
the feedback API apply before producing; judgment-text rules are shared with the trainer's loader
(``cutalign.cut.examples``): anything the loader would reject is rejected here first, so it never reaches a
shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import DecodeError, Message

from cutalign.builder.wire import invalid_utf8_field
from cutalign.bus import Envelope
from cutalign.bus.runner import Rejection
from cutalign.checks import has_visible_text, id_problem, oversize_field, span_problem
from cutalign.cut.examples import judgment_problem
from cutalign.v1 import messages_pb2, training_pb2

INVALID_UTF8 = "invalid_utf8"
DECODE_ERROR = "decode_error"
MISSING_SAMPLE_ID = "missing_sample_id"
INVALID_ID = "invalid_id"
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
    INVALID_UTF8,
    DECODE_ERROR,
    MISSING_SAMPLE_ID,
    INVALID_ID,
    MISSING_INSTRUCTION,
    EMPTY_RESPONSE,
    EMPTY_JUDGMENT,
    ERROR_JUDGMENT,
    OVERSIZE_TEXT,
    UNKNOWN_POLARITY,
    BAD_ERROR_SPAN,
    UNKNOWN_ITERATION,
    LATE_FOR_SEALED_ITERATION,
)

LatePolicy = Literal["next", "deadletter"]


UNASSIGNED = 0  # the iteration of a judgment that leaves it to the builder (production feedback)


@dataclass(frozen=True)
class Rules:
    """What the builder has open right now.

    Iterations ``first_iteration <= i < open_iteration`` are sealed (the open iteration is the lowest unsealed
    one at or above ``first_iteration``); a judgment for one of them is *late*. Any other iteration than the
    open one (or ``UNASSIGNED``) is unknown to this builder.
    """

    open_iteration: int
    first_iteration: int


@dataclass(frozen=True)
class Accepted:
    """A valid judgment as a training example; ``example.iteration`` is the one it was judged for."""

    example: training_pb2.TrainingExample


@dataclass(frozen=True)
class Routed:
    """Where an example goes: ``iteration``; ``late_from`` is the sealed iteration it was judged for when it
    arrived late (the caller checks it against that iteration's data first)."""

    iteration: int
    late_from: int | None = None


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
    fields = (
        ("sample.response", sample.response),
        ("text", judgment.text),
        ("sample.prompt.instruction", sample.prompt.instruction),
        ("sample.prompt.input", sample.prompt.input),
    )
    oversize = oversize_field(fields, max_text_bytes)
    if oversize is not None:
        return Rejection(OVERSIZE_TEXT, oversize)
    if not sample.id.strip():
        return Rejection(
            MISSING_SAMPLE_ID, "judgment.sample.id is empty: the judgment cannot be deduplicated"
        )
    bad_id = id_problem(sample.id, "judgment.sample.id")
    if bad_id is not None:
        return Rejection(INVALID_ID, bad_id)
    if not has_visible_text(sample.prompt.instruction):
        return Rejection(MISSING_INSTRUCTION, "judgment.sample.prompt.instruction is empty")
    if not has_visible_text(sample.response):
        return Rejection(EMPTY_RESPONSE, "judgment.sample.response has no visible text")
    return None


def _judgment_problem(judgment: messages_pb2.Judgment) -> Rejection | None:
    text = judgment.text
    if judgment.polarity not in (messages_pb2.POSITIVE, messages_pb2.NEGATIVE):
        return Rejection(UNKNOWN_POLARITY, f"polarity {judgment.polarity} is neither POSITIVE nor NEGATIVE")
    if judgment.polarity == messages_pb2.NEGATIVE and not has_visible_text(text):
        return Rejection(EMPTY_JUDGMENT, "a negative judgment without text cannot condition Align-N")
    problem = (
        judgment_problem(text) if text.strip() else None
    )  # an empty positive is the reference convention
    if problem is not None:
        return Rejection(ERROR_JUDGMENT, problem)
    span = span_problem(((s.start, s.end) for s in judgment.error_spans), judgment.sample.response)
    if span is not None:
        return Rejection(BAD_ERROR_SPAN, span)
    return None


def route(iteration: int, rules: Rules) -> Routed | Rejection:
    """The iteration an example judged for ``iteration`` goes to: an unassigned one to the open iteration, a
    late one too (marked ``late_from``: see ``apply_late_policy``); any other is unknown here."""
    if iteration in (UNASSIGNED, rules.open_iteration):
        return Routed(rules.open_iteration)
    if rules.first_iteration <= iteration < rules.open_iteration:
        return Routed(rules.open_iteration, late_from=iteration)
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


def apply_late_policy(routed: Routed, source: int, policy: LatePolicy) -> Routed | Rejection:
    """A late judgment (not already in its sealed iteration) moves to the open one, or is dead-lettered when
    ``builder.late_policy`` says so — never production feedback, which belongs to no iteration."""
    if routed.late_from is None or policy == "next" or source == messages_pb2.PRODUCTION_FEEDBACK:
        return routed
    return Rejection(
        LATE_FOR_SEALED_ITERATION,
        f"judged for iteration {routed.late_from}, which is sealed (builder.late_policy=deadletter)",
    )


def process(envelope: Envelope[Message], max_text_bytes: int) -> Accepted | Rejection:
    """Validate and convert one judgment message (decoded leniently by the bus, see ``wire``)."""
    judgment = _decode(envelope)
    if isinstance(judgment, Rejection):
        return judgment
    problem = _text_problem(judgment, max_text_bytes) or _judgment_problem(judgment)
    if problem is not None:
        return problem
    return Accepted(to_example(judgment, judged_iteration(judgment.sample), envelope))
