"""Target builder, pure parts: validation and classification of judgments, shard encoding, downsampling."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from builder_support import judgment
from cutalign.builder import Accepted, Rejection, Routed, Rules, process, route
from cutalign.builder.seal import downsample
from cutalign.builder.shards import decode_shard, encode_shard
from cutalign.builder.validate import REASONS, apply_late_policy
from cutalign.builder.wire import LenientJudgment
from cutalign.bus import Envelope
from cutalign.v1 import common_pb2, messages_pb2, training_pb2

MAX_TEXT_BYTES = 1000
RULES = Rules(open_iteration=3, first_iteration=2)


def envelope(value: bytes, offset: int = 7) -> Envelope:
    """What the bus hands the builder: the bytes, parsed leniently (as it does in ``poll_batch``)."""
    return Envelope(LenientJudgment.FromString(value), "key", "judgments", 1, offset, {}, value)


def run(message: messages_pb2.Judgment) -> Accepted | Rejection | Routed:
    """Validated and routed against ``RULES``: the example (with its iteration set) or why not."""
    outcome = process(envelope(message.SerializeToString()), MAX_TEXT_BYTES)
    if isinstance(outcome, Rejection):
        return outcome
    routed = route(outcome.example.iteration, RULES)
    if isinstance(routed, Rejection):
        return routed
    outcome.example.iteration = routed.iteration
    return outcome


def test_negative_becomes_align_n_misalign_with_everything_the_trainer_and_lineage_need() -> None:
    message = judgment(5, positive=False, iteration=3)
    outcome = run(message)
    assert isinstance(outcome, Accepted)
    ex = outcome.example
    assert ex.kind == training_pb2.ALIGN_N_MISALIGN
    assert (ex.sample_id, ex.instruction, ex.response) == ("p5#0", "Count from 5 to 8.", "5 6 7")
    assert ex.judgment == "The response stops early: 8 is missing."
    assert [(s.start, s.end) for s in ex.error_spans] == [(4, 5)]
    assert (ex.iteration, ex.judge_id, ex.source) == (3, "counting", messages_pb2.JUDGE_SERVICE)
    assert ex.policy == message.sample.policy
    assert ex.position == common_pb2.KafkaPosition(topic="judgments", partition=1, offset=7)


def test_positive_becomes_align_p_without_judgment_text() -> None:
    outcome = run(judgment(5, positive=True, iteration=3))
    assert isinstance(outcome, Accepted)
    assert outcome.example.kind == training_pb2.ALIGN_P
    assert outcome.example.judgment == ""


def test_iteration_falls_back_to_the_prompt_when_the_sample_has_none() -> None:
    message = judgment(5, positive=True, iteration=3)
    message.sample.iteration = 0
    message.sample.prompt.iteration = 3
    outcome = run(message)
    assert isinstance(outcome, Accepted) and outcome.example.iteration == 3


def test_an_unassigned_judgment_goes_to_the_open_iteration() -> None:
    """Production feedback is published with iteration 0: the builder puts it in the open iteration."""
    message = judgment(5, positive=False, iteration=0)
    message.sample.prompt.iteration = 0
    accepted = process(envelope(message.SerializeToString()), MAX_TEXT_BYTES)
    assert isinstance(accepted, Accepted) and accepted.example.iteration == 0
    assert route(0, RULES) == Routed(3)


def _broken(change: str) -> messages_pb2.Judgment:
    message = judgment(5, positive=change.startswith("pos"), iteration=3)
    match change:
        case "neg-empty-response":
            message.sample.response = "  \n"
        case "neg-no-id":
            message.sample.id = ""
        case "neg-no-instruction":
            message.sample.prompt.instruction = " "
        case "neg-error-marker":
            message.text = "$ERROR$"
        case "neg-na":
            message.text = "N/A"
        case "pos-error":
            message.text = "error"
        case "neg-empty-text":
            message.text = ""
        case "neg-oversize-response":
            message.sample.response = "9 " * 600
        case "neg-oversize-judgment":
            message.text = "é" * 501  # 1002 bytes in UTF-8, 501 characters: the limit is in bytes
        case "neg-unknown-polarity":
            message.polarity = messages_pb2.POLARITY_UNSPECIFIED
        case "neg-bad-span":
            message.error_spans[0].end = 99
        case "neg-future-iteration":
            message.sample.iteration = 4
        case "neg-before-first-iteration":
            message.sample.iteration = 1
            message.sample.prompt.iteration = 1
        case "neg-invalid-id":
            message.sample.id = "p5\x00#0"
        case "neg-long-id":
            message.sample.id = "p" * 300
        case "neg-zero-width-response":
            message.sample.response = "\u200b\u200b"
        case "neg-zero-width-judgment":
            message.text = "\u200b"
        case "neg-empty-span-in-the-middle":
            message.error_spans[0].start = message.error_spans[0].end = 1
    return message


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("neg-empty-response", "empty_response"),
        ("neg-no-id", "missing_sample_id"),
        ("neg-no-instruction", "missing_instruction"),
        ("neg-error-marker", "error_judgment"),
        ("neg-na", "error_judgment"),
        ("pos-error", "error_judgment"),
        ("neg-empty-text", "empty_judgment"),
        ("neg-oversize-response", "oversize_text"),
        ("neg-oversize-judgment", "oversize_text"),
        ("neg-unknown-polarity", "unknown_polarity"),
        ("neg-bad-span", "bad_error_span"),
        ("neg-future-iteration", "unknown_iteration"),
        ("neg-before-first-iteration", "unknown_iteration"),
        ("neg-invalid-id", "invalid_id"),
        ("neg-long-id", "invalid_id"),
        ("neg-zero-width-response", "empty_response"),
        ("neg-zero-width-judgment", "empty_judgment"),
        ("neg-empty-span-in-the-middle", "bad_error_span"),
    ],
)
def test_invalid_judgments_are_rejected_with_a_stable_reason(change: str, reason: str) -> None:
    outcome = run(_broken(change))
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason == reason
    assert outcome.reason in REASONS and outcome.detail


def test_an_empty_positive_judgment_is_the_reference_convention_and_accepted() -> None:
    message = judgment(5, positive=True, iteration=3)
    message.text = ""
    assert isinstance(run(message), Accepted)


def test_invalid_utf8_is_its_own_reason_naming_the_field() -> None:
    value = judgment(5, positive=False, iteration=3).SerializeToString()
    broken = value.replace(b"Count from", b"Count \xff\xfeom")  # same length
    with pytest.raises(Exception, match="Error parsing"):
        messages_pb2.Judgment.FromString(broken)  # what the bus would have called a decode_error
    outcome = process(envelope(broken), MAX_TEXT_BYTES)
    assert outcome == Rejection("invalid_utf8", "field sample.prompt.instruction is not valid UTF-8")


def test_late_judgments_are_marked_and_the_policy_moves_or_rejects_them_but_never_feedback() -> None:
    routed = route(2, RULES)
    assert routed == Routed(3, late_from=2)
    judge_service, feedback = messages_pb2.JUDGE_SERVICE, messages_pb2.PRODUCTION_FEEDBACK
    assert apply_late_policy(routed, judge_service, "next") is routed
    rejected = apply_late_policy(routed, judge_service, "deadletter")
    assert isinstance(rejected, Rejection) and rejected.reason == "late_for_sealed_iteration"
    assert apply_late_policy(routed, feedback, "deadletter") is routed, "feedback is never late"


def test_reasons_are_distinct() -> None:
    assert len(set(REASONS)) == len(REASONS)


def test_shard_lines_are_protobuf_json_one_per_line_even_for_line_separators() -> None:
    examples = []
    for i, response in enumerate(["plain", "line\u2028sep\x85nel\nnewline", "é ünïcode 数"]):
        outcome = run(judgment(i, positive=False, iteration=3))
        assert isinstance(outcome, Accepted)
        outcome.example.response = response
        outcome.example.position.offset = i
        examples.append(outcome.example)
    data = encode_shard(examples)
    text = data.decode("ascii")  # ASCII only: non-ASCII is escaped
    assert len(text.splitlines()) == 3  # str.splitlines also splits on U+2028 and U+0085
    first = json.loads(text.splitlines()[0])
    # .proto field names, enum names
    assert first["sample_id"] == "p0#0" and first["kind"] == "ALIGN_N_MISALIGN"
    assert decode_shard(data, "test") == examples
    assert encode_shard(decode_shard(data, "test")) == data  # same examples, same bytes
    examples[1].position.offset = 2**40  # int64: a JSON string in the protobuf mapping
    examples[2].source = 7  # an enum value this schema does not know
    for line, example in zip(encode_shard(examples).decode().splitlines(), examples, strict=True):
        assert json.loads(line) == json.loads(
            json_format.MessageToJson(example, preserving_proto_field_name=True)
        )


def test_downsampling_keeps_ratio_times_negatives_deterministically_whatever_the_order() -> None:
    positives = [f"s{i:03d}" for i in range(200)]
    excluded = downsample(positives, negatives=100, ratio=0.25, seed=42)
    assert len(positives) - len(excluded) == 25
    assert excluded == sorted(excluded)
    assert downsample(list(reversed(positives)), 100, 0.25, 42) == excluded
    assert downsample(positives, 100, 0.25, 43) != excluded
    assert downsample(positives, 1000, 0.25, 42) == []  # fewer positives than wanted: keep all
    assert len(downsample(positives, 0, 0.25, 42)) == 200  # no negatives: no positive kept
