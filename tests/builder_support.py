"""Helpers for the target builder tests: judgments, a builder on a thread, waiting for it, dead letters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
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


def seal_http(builder: TargetBuilder, iteration: int) -> dict:
    """``POST /seal?iteration=N`` on a running builder, with its admin token; the summary it answers."""
    response = httpx.post(
        f"http://127.0.0.1:{builder.http_port}/seal?iteration={iteration}",
        headers={"Authorization": f"Bearer {builder.admin_token}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def committed(kafka: KafkaSettings, group_id: str) -> int:
    """Messages of the judgments topic ``group_id`` has committed (offsets start at 0 and are contiguous).

    Counted from committed offsets rather than against the high watermark: Tansu's ListOffsets(latest)
    reports the base offset of the last record batch, so watermarks lag behind what a topic holds.
    """
    consumer = Consumer({**client_config(kafka, client_suffix="commit-probe"), "group.id": group_id})
    try:
        partitions = [TopicPartition(kafka.topic_judgments, p) for p in range(kafka.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


def wait_committed(kafka: KafkaSettings, group_id: str, total: int, timeout_s: float = 60.0) -> None:
    """Until the builder has committed (so built, skipped or dead-lettered) all ``total`` messages."""
    deadline = time.monotonic() + timeout_s
    while (done := committed(kafka, group_id)) < total:
        assert time.monotonic() < deadline, (
            f"builder committed {done} of {total} messages in {timeout_s:.0f}s"
        )
        time.sleep(0.1)


def dead_letters(kafka: KafkaSettings, idle_s: float = 1.5) -> list[training_pb2.DeadLetter]:
    """Every record on the dead-letter topic, read from the start (no group) until ``idle_s`` brings nothing.

    Reads until idle, not to the high watermark, which Tansu under-reports (see ``committed``).
    """
    consumer = Consumer({**client_config(kafka, client_suffix="dlq-reader"), "group.id": "unused"})
    consumer.assign(
        [TopicPartition(kafka.topic_deadletter, p, OFFSET_BEGINNING) for p in range(kafka.partitions)]
    )
    got: list[training_pb2.DeadLetter] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for raw in consumer.consume(500, 0.2):
                if raw.error() is None:
                    got.append(training_pb2.DeadLetter.FromString(raw.value()))
                    last = time.monotonic()
    finally:
        consumer.close()
    return got
