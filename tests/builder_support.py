"""Helpers for the target builder tests: judgments, a builder on a thread, waiting for it, dead letters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from cutalign.builder import RunStats, TargetBuilder
from cutalign.bus.config import client_config
from cutalign.config import BuilderSettings, KafkaSettings, S3Settings
from cutalign.store import ArtifactStore
from cutalign.v1 import common_pb2, messages_pb2, training_pb2


def judgment(i: int, *, positive: bool, iteration: int = 1, sid: str | None = None) -> messages_pb2.Judgment:
    """A valid judgment of sample ``p{i}#0`` (a counting task: the negative misses the last number)."""
    sample_id = sid or f"p{i}#0"
    prompt = messages_pb2.Prompt(id=sample_id.split("#")[0], instruction=f"Count from {i} to {i + 3}.")
    response = " ".join(str(i + k) for k in range(4 if positive else 3))
    sample = messages_pb2.Sample(
        id=sample_id,
        prompt=prompt,
        response=response,
        iteration=iteration,
        policy=common_pb2.PolicyVersion(
            model_id="tiny", checkpoint_sha256="ab" * 32, iteration=iteration - 1
        ),
    )
    return messages_pb2.Judgment(
        sample=sample,
        text="Perfect." if positive else f"The response stops early: {i + 3} is missing.",
        polarity=messages_pb2.POSITIVE if positive else messages_pb2.NEGATIVE,
        judge_id="counting",
        source=messages_pb2.JUDGE_SERVICE,
        error_spans=[] if positive else [common_pb2.Span(start=len(response) - 1, end=len(response))],
    )


def builder_settings(group_id: str, **overrides: Any) -> BuilderSettings:
    values: dict[str, Any] = {
        "group_id": group_id,
        "http_port": 0,
        "shard_max_examples": 50,
        "shard_max_seconds": 0.3,
        **overrides,
    }
    return BuilderSettings(**values)


@contextmanager
def running_builder(
    kafka: KafkaSettings, s3: S3Settings, settings: BuilderSettings, store: ArtifactStore
) -> Iterator[TargetBuilder]:
    """A builder serving on a thread; stopped (flush + commit) on exit, re-raising whatever made it fail."""
    stop = threading.Event()
    builder = TargetBuilder(kafka, s3, settings, store=store)
    outcome: dict[str, RunStats | BaseException] = {}

    def serve() -> None:
        try:
            outcome["stats"] = builder.serve(stop)
        except BaseException as e:  # handed to the test thread below
            outcome["error"] = e
            builder.ready.set()

    thread = threading.Thread(target=serve, name="builder", daemon=True)
    thread.start()
    assert builder.ready.wait(30), "the builder did not start"
    try:
        yield builder
    finally:
        stop.set()
        thread.join(60)
        if isinstance(outcome.get("error"), BaseException):
            raise outcome["error"]  # type: ignore[misc]


def committed_lag(kafka: KafkaSettings, group_id: str, topic: str) -> int:
    """Messages of ``topic`` not yet committed by ``group_id`` (queried without joining the group)."""
    consumer = Consumer({**client_config(kafka, client_suffix="lag-probe"), "group.id": group_id})
    try:
        partitions = [TopicPartition(topic, p) for p in range(kafka.partitions)]
        committed = consumer.committed(partitions, timeout=10)
        lag = 0
        for tp in committed:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def wait_caught_up(kafka: KafkaSettings, group_id: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (lag := committed_lag(kafka, group_id, kafka.topic_judgments)) > 0:
        assert time.monotonic() < deadline, f"builder still {lag} message(s) behind after {timeout_s:.0f}s"
        time.sleep(0.2)


def dead_letters(kafka: KafkaSettings, timeout_s: float = 30.0) -> list[training_pb2.DeadLetter]:
    """Every record on the dead-letter topic now (up to its end offsets), read without joining a group."""
    consumer = Consumer({**client_config(kafka, client_suffix="dlq-reader"), "group.id": "unused"})
    partitions = [
        TopicPartition(kafka.topic_deadletter, p, OFFSET_BEGINNING) for p in range(kafka.partitions)
    ]
    ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
    reached = {p: 0 for p in ends}
    consumer.assign(partitions)
    got: list[training_pb2.DeadLetter] = []
    try:
        deadline = time.monotonic() + timeout_s
        while any(reached[p] < ends[p] for p in ends):
            assert time.monotonic() < deadline, f"dead-letter topic not read to its end in {timeout_s:.0f}s"
            for raw in consumer.consume(500, 0.5):
                if raw.error() is None:
                    got.append(training_pb2.DeadLetter.FromString(raw.value()))
                    reached[raw.partition()] = raw.offset() + 1
    finally:
        consumer.close()
    return got
