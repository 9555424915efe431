"""Sealing with a running builder: late judgments, seals from another process mid-stream, automatic seals."""

from __future__ import annotations

import threading
import time

import pytest

from builder_support import (
    builder_settings,
    dead_letters,
    judgment,
    running_builder,
    seal_http,
    wait_committed,
)
from cutalign.builder import read_sealed_examples, seal_iteration
from cutalign.builder.shards import list_shard_manifests, read_shard
from cutalign.bus import TypedProducer, provision_topics
from cutalign.config import KafkaSettings, S3Settings
from cutalign.store import ArtifactStore, layout
from cutalign.v1 import messages_pb2, training_pb2


def _manifest(store: ArtifactStore, iteration: int) -> training_pb2.IterationManifest:
    return store.get_manifest(layout.iteration_manifest_key(iteration), training_pb2.IterationManifest)


def _ids(store: ArtifactStore, iteration: int) -> list[str]:
    """Every sample id of a sealed iteration (downsampled positives included), read back from its shards."""
    manifest = _manifest(store, iteration)
    return [e.sample_id for e in read_sealed_examples(store, manifest)] + list(manifest.excluded_sample_ids)


def _send(kafka: KafkaSettings, ids: range, iteration: int, producer: TypedProducer | None = None) -> None:
    with producer or TypedProducer(kafka, service="test") as sender:
        for i in ids:
            sender.send(
                kafka.topic_judgments, judgment(i, positive=i % 2 == 0, iteration=iteration), f"p{i}#0"
            )
        sender.flush()


@pytest.mark.parametrize("policy", ["next", "deadletter"])
def test_late_judgments_move_to_the_open_iteration_or_are_dead_lettered(
    policy: str,
    kafka_settings: KafkaSettings,
    s3_settings: S3Settings,
    store: ArtifactStore,
    unique_name: str,
) -> None:
    provision_topics(kafka_settings)
    settings = builder_settings(unique_name, late_policy=policy, align_p_ratio=10.0)
    with running_builder(kafka_settings, s3_settings, settings, store) as builder:
        _send(kafka_settings, range(10), iteration=1)
        wait_committed(kafka_settings, unique_name, 10)
        seal_http(builder, 1)
        assert builder.open == 2
        _send(kafka_settings, range(100, 105), iteration=1)  # late for the sealed iteration 1
        _send(kafka_settings, range(3, 4), iteration=1)  # a re-sent judgment that iteration 1 holds
        _send(kafka_settings, range(200, 205), iteration=2)
        wait_committed(kafka_settings, unique_name, 10 + 5 + 1 + 5)
        seal_http(builder, 2)
        stats = builder.stats
    assert stats.duplicates == 1
    assert sorted(_ids(store, 1)) == sorted(f"p{i}#0" for i in range(10))
    late = [f"p{i}#0" for i in range(100, 105)]
    current = [f"p{i}#0" for i in range(200, 205)]
    if policy == "next":
        assert sorted(_ids(store, 2)) == sorted(late + current)
        examples = read_sealed_examples(store, _manifest(store, 2))
        assert {e.iteration for e in examples} == {2}
        assert stats.dead_lettered == 0 and stats.late_moved == 5
    else:
        assert sorted(_ids(store, 2)) == sorted(current)
        letters = dead_letters(kafka_settings)
        assert sorted(d.original_key.decode() for d in letters) == sorted(late)
        assert {d.reason for d in letters} == {"late_for_sealed_iteration"}


def test_seals_by_another_process_while_judgments_stream_lose_and_duplicate_nothing(
    kafka_settings: KafkaSettings, s3_settings: S3Settings, store: ArtifactStore, unique_name: str
) -> None:
    """Judgments for iteration 1 keep coming while `cutalign builder seal` seals 1, 2, 3 from outside.

    Every judgment must end up in exactly one sealed iteration: in the iteration it was durable in before that
    was sealed, or (late for 1) moved to the iteration open at the time — never only in a shard that no
    manifest lists, never twice.
    """
    provision_topics(kafka_settings)
    total = 1200
    settings = builder_settings(
        unique_name, late_policy="next", shard_max_examples=20, shard_max_seconds=0.05
    )
    streaming = threading.Event()
    streaming.set()

    def stream() -> None:
        producer = TypedProducer(kafka_settings, service="test")
        for start in range(40, total, 40):
            _send(kafka_settings, range(start, start + 40), iteration=1, producer=producer)
            time.sleep(0.15)
        streaming.clear()

    with running_builder(kafka_settings, s3_settings, settings, store) as builder:
        _send(kafka_settings, range(40), iteration=1)
        while not list_shard_manifests(store, 1):  # the builder has joined its group and is building
            time.sleep(0.05)
        producer = threading.Thread(target=stream)
        producer.start()
        sealed = []
        for iteration in (1, 2, 3):
            while streaming.is_set() and not list_shard_manifests(store, iteration):
                time.sleep(0.02)
            time.sleep(0.3)
            if not streaming.is_set():
                break
            seal_iteration(store, settings, iteration, sealed_by="cli")  # another process, racing the builder
            sealed.append(iteration)
        producer.join()
        wait_committed(kafka_settings, unique_name, total)
        stats = builder.stats
    last = sealed[-1] + 1
    seal_iteration(store, settings, last)
    assert sealed == [1, 2, 3], "the stream ended before three seals: slow it down"
    assert stats.late_moved > 0 and stats.duplicates == 0 and stats.dead_lettered == 0

    per_iteration = [_ids(store, i) for i in range(1, last + 1)]
    everything = [sid for ids in per_iteration for sid in ids]
    assert all(per_iteration), "every iteration got judgments"
    assert len(everything) == len(set(everything)) == total
    assert set(everything) == {f"p{i}#0" for i in range(total)}


@pytest.mark.parametrize(
    ("trigger", "options"), [("count", {"seal_count": 20}), ("deadline", {"seal_deadline_s": 1})]
)
def test_iterations_seal_automatically(
    trigger: str,
    options: dict,
    kafka_settings: KafkaSettings,
    s3_settings: S3Settings,
    store: ArtifactStore,
    unique_name: str,
) -> None:
    provision_topics(kafka_settings)
    settings = builder_settings(unique_name, late_policy="next", **options)
    with running_builder(kafka_settings, s3_settings, settings, store) as builder:
        _send(kafka_settings, range(30), iteration=1)
        deadline = time.monotonic() + 30
        while not store.exists(layout.iteration_manifest_key(1)):
            assert time.monotonic() < deadline, "iteration 1 was not sealed automatically"
            time.sleep(0.1)
        wait_committed(kafka_settings, unique_name, 30)
        opened = builder.open
    manifest = _manifest(store, 1)
    assert manifest.sealed_by.startswith(f"auto:{trigger}@")
    assert opened == 2
    if trigger == "count":
        assert sum(manifest.counts_before_downsampling.values()) >= 20
    rest = [e.sample_id for k in list_shard_manifests(store, 2)
            for e in read_shard(store, store.get_manifest(k, training_pb2.ShardManifest))]  # fmt: skip
    ids = _ids(store, 1) + rest
    assert sorted(ids) == sorted(f"p{i}#0" for i in range(30))


def test_production_feedback_flows_into_whichever_iteration_is_open_and_is_never_late(
    kafka_settings: KafkaSettings, s3_settings: S3Settings, store: ArtifactStore, unique_name: str
) -> None:
    """Feedback is published unassigned (iteration 0); a direct producer may still name a sealed one."""
    provision_topics(kafka_settings)
    settings = builder_settings(unique_name, late_policy="deadletter", align_p_ratio=10.0)

    def feedback(ids: range, iteration: int = 0) -> None:
        with TypedProducer(kafka_settings, service="test") as producer:
            for i in ids:
                message = judgment(i, positive=i % 2 == 0, iteration=iteration)
                message.sample.prompt.iteration = iteration
                message.source = messages_pb2.PRODUCTION_FEEDBACK
                producer.send(kafka_settings.topic_judgments, message, f"p{i}#0")

    with running_builder(kafka_settings, s3_settings, settings, store) as builder:
        feedback(range(10))
        wait_committed(kafka_settings, unique_name, 10)
        seal_http(builder, 1)
        feedback(range(10, 15))
        feedback(range(15, 20), iteration=1)  # late for the sealed iteration 1: moves, despite the policy
        wait_committed(kafka_settings, unique_name, 20)
        seal_http(builder, 2)
        stats = builder.stats
    assert sorted(_ids(store, 1)) == sorted(f"p{i}#0" for i in range(10))
    assert sorted(_ids(store, 2)) == sorted(f"p{i}#0" for i in range(10, 20))
    assert {e.iteration for e in read_sealed_examples(store, _manifest(store, 2))} == {2}
    assert stats.dead_lettered == 0 and not dead_letters(kafka_settings, idle_s=0.5)
