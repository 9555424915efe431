"""The online iteration's steps against the real broker and store (cutalign.iteration)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cutalign.builder.shards import write_shard
from cutalign.bus import TypedConsumer, TypedProducer, provision_topics
from cutalign.bus.headers import SCHEMA
from cutalign.config import IterationSettings, JudgeSettings, KafkaSettings, TrainerSettings
from cutalign.demo.task import answer
from cutalign.iteration.assess import GATE_PASSED, PREVIOUS_ACCURACY, assess_candidate
from cutalign.iteration.deadletters import DeadLetterCounter
from cutalign.iteration.evaluate import ACCURACY, detection_metrics, evaluate_policy
from cutalign.iteration.overrides import settings_with
from cutalign.iteration.progress import IterationStalled, durable_progress, wait_for_iteration
from cutalign.iteration.promote import gate, promote_candidate, released_accuracy
from cutalign.iteration.prompts import PromptSetError, parse_prompt_set, publish_prompts
from cutalign.iteration.seal import seal
from cutalign.judges.base import Judgment
from cutalign.judges.programmatic import CountingJudge
from cutalign.policy.generation import SamplingParams, generate
from cutalign.policy.loading import load_policy
from cutalign.policy.promotion import current_release
from cutalign.policy.version import policy_sha256
from cutalign.store import ArtifactStore, ManifestExists
from cutalign.store.layout import eval_key, iteration_manifest_key, model_prefix, prompts_key, release_key
from cutalign.templates import get_template
from cutalign.v1 import common_pb2, messages_pb2, training_pb2
from policy_support import tiny_policy

ROWS = [
    {"id": "count-3-7", "instruction": "Count from 3 to 7.", "start": 3, "end": 7},
    {"id": "count-10-14", "instruction": "Count from 10 to 14.", "start": 10, "end": 14},
    {"id": "alpaca-1", "instruction": "Add the numbers.", "input": "2 and 3"},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def example(
    i: int, *, iteration: int, positive: bool, topic: str = "judgments"
) -> training_pb2.TrainingExample:
    kind = training_pb2.ALIGN_P if positive else training_pb2.ALIGN_N_MISALIGN
    return training_pb2.TrainingExample(
        sample_id=f"p{i}#0",
        kind=kind,
        instruction=f"Count from {i} to {i + 4}.",
        response=answer(i, i + 4) if positive else answer(i, i + 3),
        judgment="" if positive else f"The count stops at {i + 3}, but it should continue to {i + 4}.",
        iteration=iteration,
        judge_id="counting-v1",
        position=common_pb2.KafkaPosition(topic=topic, partition=0, offset=i),
    )


def write_examples(store: ArtifactStore, iteration: int, first: int, n: int, positives: int = 0) -> None:
    """One shard of ``n`` examples at offsets first..first+n-1, the first ``positives`` of them Align-P."""
    examples = [example(first + k, iteration=iteration, positive=k < positives) for k in range(n)]
    write_shard(store, iteration, examples)


# -- publishing prompts ------------------------------------------------------------------------------------


def test_publish_prompts_records_the_set_and_every_prompt_reaches_the_topic(
    store: ArtifactStore, kafka_settings: KafkaSettings, tmp_path: Path, unique_name: str
) -> None:
    provision_topics(kafka_settings)
    source = write_jsonl(tmp_path / "prompts.jsonl", ROWS)

    published = publish_prompts(str(source), 3, store=store, kafka=kafka_settings)

    assert published.count == 3
    assert published.uri == store.uri(prompts_key(3))
    assert store.get_bytes(prompts_key(3)) == source.read_bytes()
    received: dict[str, messages_pb2.Prompt] = {}
    with TypedConsumer(
        kafka_settings,
        group_id=unique_name,
        topics=[kafka_settings.topic_prompts],
        message_type=messages_pb2.Prompt,
        service="test",
    ) as consumer:
        deadline = time.monotonic() + 30
        while len(received) < 3 and time.monotonic() < deadline:
            for envelope in consumer.poll_batch(10, 0.5):
                assert envelope.key == envelope.message.id
                received[envelope.key] = envelope.message
    assert sorted(received) == sorted(r["id"] for r in ROWS)
    counting = received["count-3-7"]
    assert (counting.iteration, counting.split, counting.instruction) == (3, "train", "Count from 3 to 7.")
    assert json.loads(counting.reference_json) == {"start": 3, "end": 7}
    assert received["alpaca-1"].input == "2 and 3"
    assert received["alpaca-1"].reference_json == ""


def test_publish_prompts_reads_s3_and_refuses_a_different_set_for_the_same_iteration(
    store: ArtifactStore, kafka_settings: KafkaSettings
) -> None:
    provision_topics(kafka_settings)
    data = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    store.put_bytes("datasets/prompts.jsonl", data)
    source = store.uri("datasets/prompts.jsonl")

    publish_prompts(source, 1, store=store, kafka=kafka_settings)
    again = publish_prompts(source, 1, store=store, kafka=kafka_settings)  # a retried step: same bytes, fine

    assert again.count == 3
    store.put_bytes("datasets/other.jsonl", data.replace(b"Count from 3", b"Count from 4"))
    with pytest.raises(PromptSetError, match="already has a different train prompt set"):
        publish_prompts(store.uri("datasets/other.jsonl"), 1, store=store, kafka=kafka_settings)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{"id": "a", "instruction": "x"}, {"id": "a", "instruction": "y"}], "duplicate prompt id 'a'"),
        ([{"id": "a"}], "'instruction' must be a non-empty string"),
        ([{"id": "", "instruction": "x"}], "'id' must be a non-empty string"),
        ([["not", "an", "object"]], "must be a JSON object"),
        ([], "holds no prompts"),
    ],
)
def test_malformed_prompt_sets_are_refused_with_the_line(lines: list[Any], message: str) -> None:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with pytest.raises(PromptSetError, match=message):
        parse_prompt_set(data, "prompts.jsonl")


# -- waiting for judging -----------------------------------------------------------------------------------


def test_durable_progress_sums_the_iterations_shard_manifests_only(store: ArtifactStore) -> None:
    write_examples(store, 2, first=0, n=3, positives=1)
    write_examples(store, 2, first=10, n=2)
    write_examples(store, 3, first=20, n=4)  # another iteration: not counted

    progress = durable_progress(store, 2)

    assert (progress.examples, progress.shards, progress.sealed) == (5, 2, False)
    assert progress.counts_by_kind == {"ALIGN_P": 1, "ALIGN_N_MISALIGN": 4}


def test_wait_returns_once_the_target_is_durable(store: ArtifactStore) -> None:
    write_examples(store, 1, first=0, n=4)
    progress = wait_for_iteration(store, 1, 4, deadline_s=5, poll_interval_s=0.1)
    assert progress.accounted == 4


def test_wait_sees_shards_written_while_it_waits(store: ArtifactStore) -> None:
    write_examples(store, 1, first=0, n=2)
    polls: list[float] = []

    def clock() -> float:  # the second read of the store finds the shard "the builder" wrote meanwhile
        polls.append(time.monotonic())
        if len(polls) == 2:
            write_examples(store, 1, first=2, n=2)
        return time.monotonic()

    progress = wait_for_iteration(store, 1, 4, deadline_s=10, poll_interval_s=0.05, clock=clock)

    assert (progress.examples, progress.shards) == (4, 2)


def test_wait_goes_on_at_the_deadline_with_enough_examples_and_fails_without(store: ArtifactStore) -> None:
    write_examples(store, 1, first=0, n=2)

    partial = wait_for_iteration(store, 1, 10, deadline_s=0.3, min_count=2, poll_interval_s=0.1)
    assert partial.examples == 2
    with pytest.raises(IterationStalled, match="2 durable examples \\(need at least 3"):
        wait_for_iteration(store, 1, 10, deadline_s=0.3, min_count=3, poll_interval_s=0.1)


def test_wait_returns_at_once_for_a_sealed_iteration(store: ArtifactStore) -> None:
    write_examples(store, 4, first=0, n=3, positives=1)
    seal(store, 4)
    started = time.monotonic()
    progress = wait_for_iteration(store, 4, 1000, deadline_s=30, poll_interval_s=1)
    assert progress.sealed and progress.examples == 3
    assert time.monotonic() - started < 5


def _dead_letter(message: Any, key: str) -> training_pb2.DeadLetter:
    return training_pb2.DeadLetter(
        original_value=message.SerializeToString(),
        original_key=key.encode(),
        reason="policy_rejected",
        service="test",
        headers={SCHEMA: message.DESCRIPTOR.full_name},
    )


def test_wait_counts_the_iterations_distinct_dead_letters(
    store: ArtifactStore, kafka_settings: KafkaSettings
) -> None:
    provision_topics(kafka_settings)
    write_examples(store, 5, first=0, n=2)
    prompt = messages_pb2.Prompt(id="p-bad", instruction="x", iteration=5)
    sample = messages_pb2.Sample(id="p-other#0", prompt=prompt, iteration=5)
    judgment = messages_pb2.Judgment(sample=messages_pb2.Sample(id="p-late#0", iteration=5))
    elsewhere = messages_pb2.Prompt(id="p-x", instruction="x", iteration=6)
    with TypedProducer(kafka_settings, service="test") as producer:
        for message, key in [
            (prompt, "p-bad"),
            (prompt, "p-bad"),
            (sample, "p-other#0"),
            (judgment, "p-late#0"),
            (elsewhere, "p-x"),
        ]:
            producer.send(kafka_settings.topic_deadletter, _dead_letter(message, key), key)

    progress = wait_for_iteration(store, 5, 5, kafka=kafka_settings, deadline_s=30, poll_interval_s=0.5)

    assert (progress.examples, progress.dead_lettered) == (2, 3)  # the repeat and iteration 6 do not count
    with DeadLetterCounter(kafka_settings, 6) as counter:
        deadline = time.monotonic() + 20
        while counter.count < 1 and time.monotonic() < deadline:
            counter.poll(0.5)
        assert counter.count == 1


def test_wait_fails_fast_when_everything_was_dead_lettered(
    store: ArtifactStore, kafka_settings: KafkaSettings
) -> None:
    provision_topics(kafka_settings)
    prompt = messages_pb2.Prompt(id="p-bad", instruction="x", iteration=7)
    with TypedProducer(kafka_settings, service="test") as producer:
        producer.send(kafka_settings.topic_deadletter, _dead_letter(prompt, "p-bad"), "p-bad")
    with pytest.raises(IterationStalled, match="only 0 became training examples"):
        wait_for_iteration(store, 7, 1, kafka=kafka_settings, deadline_s=30, poll_interval_s=0.5)


# -- sealing -----------------------------------------------------------------------------------------------


def test_seal_in_process_writes_the_manifest_once(store: ArtifactStore) -> None:
    write_examples(store, 2, first=0, n=6, positives=4)

    sealed = seal(store, 2)
    again = seal(store, 2)

    assert sealed.manifest_uri == store.uri(iteration_manifest_key(2))
    assert dict(sealed.manifest.counts_before_downsampling) == {"ALIGN_P": 4, "ALIGN_N_MISALIGN": 2}
    assert sealed.counts == {"ALIGN_P": 0, "ALIGN_N_MISALIGN": 2}  # 0.25 x 2 negatives rounds to 0 positives
    assert again.manifest == sealed.manifest


# -- evaluation --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy") / "tiny", seed=3)


class FirstNumberJudge:
    """Positive exactly for prompts whose reference starts at an even number: a known accuracy."""

    id = "first-number-test"

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Judgment:
        assert reference is not None and "Count from" in instruction
        positive = reference["start"] % 2 == 0
        return Judgment("Perfect." if positive else "It starts at an odd number.", positive)


EVAL_ROWS = [
    {"id": f"count-{s}-{s + 4}", "instruction": f"Count from {s} to {s + 4}.", "start": s, "end": s + 4}
    for s in (2, 5, 8, 11)
]


def test_evaluate_policy_decodes_greedily_with_the_plain_template_and_counts_positives(
    tiny_policy_dir: Path,
) -> None:
    report = evaluate_policy(
        str(tiny_policy_dir), EVAL_ROWS, FirstNumberJudge(), s3=None, max_new_tokens=12, batch_size=3
    )

    assert (report.total, report.positives, report.accuracy) == (4, 2, 0.5)
    assert report.metrics()[ACCURACY] == 0.5
    assert report.policy_sha256 == policy_sha256(tiny_policy_dir)
    policy = load_policy(str(tiny_policy_dir))
    prompts = [get_template("plain").format_plain(r["instruction"]) for r in EVAL_ROWS]
    direct = generate(policy.model, policy.tokenizer, prompts, SamplingParams(max_new_tokens=12))
    assert [r.response for r in report.results] == [g.text for g in direct]


def test_evaluate_policy_with_the_counting_judge_agrees_with_the_judge(tiny_policy_dir: Path) -> None:
    report = evaluate_policy(str(tiny_policy_dir), EVAL_ROWS, CountingJudge(), s3=None, max_new_tokens=12)
    judge = CountingJudge()
    expected = [
        judge.judge(r["instruction"], res.response, {"start": r["start"], "end": r["end"]}).positive
        for r, res in zip(EVAL_ROWS, report.results, strict=True)
    ]
    assert [r.positive for r in report.results] == expected
    assert all(r.judgment for r in report.results)


def test_detection_metrics_average_over_the_steps_that_report_them() -> None:
    steps = [
        {"step": 1, "loss/total": 2.0, "detection/precision": 0.5},
        {"step": 2, "loss/total": 1.0, "detection/precision": 1.0, "detection/recall": 0.25},
        {"step": 3, "loss/total": 0.5},
    ]
    assert detection_metrics(steps) == {"detection/precision": 0.75, "detection/recall": 0.25}


# -- gate and promotion ------------------------------------------------------------------------------------


def test_gate_compares_with_the_previous_accuracy_minus_the_tolerance() -> None:
    assert gate(0.5, None, 0.0).passed
    assert gate(0.5, 0.5, 0.0).passed
    assert not gate(0.49, 0.5, 0.0).passed
    assert gate(0.45, 0.5, 0.05).passed
    assert not gate(0.44, 0.5, 0.05).passed
    assert "0.4400 < previous 0.5000" in gate(0.44, 0.5, 0.05).reason


def upload_model(store: ArtifactStore, directory: Path, iteration: int) -> str:
    store.upload_dir(model_prefix(iteration), directory)
    return store.uri(model_prefix(iteration)).rstrip("/")


def test_promote_candidate_records_the_release_with_the_servers_sha256(
    store: ArtifactStore, tiny_policy_dir: Path, tmp_path: Path
) -> None:
    uri = upload_model(store, tiny_policy_dir, 1)

    release = promote_candidate(
        store,
        iteration=1,
        model_uri=uri,
        eval_metrics={ACCURACY: 0.25},
        manifest_key=iteration_manifest_key(1),
        model_id="tiny",
        s3=store.settings,
    )

    assert release.version.checkpoint_sha256 == policy_sha256(tiny_policy_dir)
    assert (release.version.uri, release.version.iteration, release.manifest_key) == (
        uri,
        1,
        iteration_manifest_key(1),
    )
    current = current_release(store)
    assert current is not None and current.version == release.version
    assert released_accuracy(store) == 0.25
    # a retried step with the same checkpoint is a no-op; another checkpoint for the same iteration is refused
    again = promote_candidate(
        store,
        iteration=1,
        model_uri=uri,
        eval_metrics={ACCURACY: 0.25},
        manifest_key=iteration_manifest_key(1),
        model_id="tiny",
        s3=store.settings,
    )
    assert again.version == release.version
    other = upload_model(store, tiny_policy(tmp_path / "other", seed=9), 2)
    with pytest.raises(ManifestExists, match="iteration 1 already released"):
        promote_candidate(
            store,
            iteration=1,
            model_uri=other,
            eval_metrics={},
            manifest_key="",
            model_id="tiny",
            s3=store.settings,
        )
    assert store.exists(release_key(1)) and not store.exists(release_key(2))


def test_assess_candidate_evaluates_the_starting_policy_when_nothing_was_released(
    store: ArtifactStore, tiny_policy_dir: Path, tmp_path: Path
) -> None:
    candidate = upload_model(store, tiny_policy(tmp_path / "candidate", seed=4), 1)
    metrics_key = "iterations/0001/metrics/cut.jsonl"
    store.put_bytes(
        metrics_key, b'{"step": 1, "detection/precision": 0.5}\n{"step": 2, "detection/precision": 1}\n'
    )
    settings = IterationSettings(eval_max_new_tokens=8, gate_tolerance=0.0)

    first = assess_candidate(
        store,
        iteration=1,
        candidate_uri=candidate,
        starting_policy_uri=str(tiny_policy_dir),
        eval_prompts=EVAL_ROWS,
        judge=FirstNumberJudge(),
        settings=settings,
        training_metrics_uri=store.uri(metrics_key),
    )

    assert first.baseline is not None and first.baseline.policy_uri == str(tiny_policy_dir)
    assert first.decision.passed and first.decision.previous == 0.5
    assert first.metrics() == {
        ACCURACY: 0.5,
        "eval/positives": 2.0,
        "eval/total": 4.0,
        "detection/precision": 0.75,
        PREVIOUS_ACCURACY: 0.5,
        GATE_PASSED: 1.0,
    }
    assert json.loads(store.get_bytes(eval_key(1)))["metrics"][ACCURACY] == 0.5

    promote_candidate(
        store,
        iteration=1,
        model_uri=candidate,
        eval_metrics={ACCURACY: 0.75},
        manifest_key="",
        model_id="tiny",
        s3=store.settings,
    )
    second = assess_candidate(
        store,
        iteration=2,
        candidate_uri=candidate,
        starting_policy_uri=candidate,
        eval_prompts=EVAL_ROWS,
        judge=FirstNumberJudge(),
        settings=settings,
    )
    assert second.baseline is None  # compared with the release's recorded accuracy instead
    assert not second.decision.passed and second.metrics()[GATE_PASSED] == 0.0


# -- settings ----------------------------------------------------------------------------------------------


def test_settings_with_applies_parameters_and_overrides_and_refuses_conflicts() -> None:
    trainer = settings_with(TrainerSettings, {"threshold": 1.3, "lora_r": 4}, '{"max_steps": 2}')
    assert (trainer.threshold, trainer.lora_r, trainer.max_steps) == (1.3, 4, 2)
    with pytest.raises(ValueError, match="given both"):
        settings_with(TrainerSettings, {"lora_r": 4}, '{"lora_r": 8}')
    with pytest.raises(ValueError, match="invalid TrainerSettings"):
        settings_with(TrainerSettings, {}, '{"no_such_field": 1}')
    with pytest.raises(ValueError, match="must be a JSON object"):
        settings_with(JudgeSettings, {}, "[1]")
