"""Target builder throughput vs the raw consume rate of the same client on the same topic, in one run.

The builder does, per judgment: the bus's lenient decode, a full protobuf parse, validation, classification,
deduplication against the ledger, protobuf-JSON encoding into a shard; per shard: an S3 PUT of the data, a
conditional PUT of the manifest, a seal-marker check; then a synchronous offset commit. The baseline is a bare
``confluent_kafka.Consumer.consume`` loop over the same messages (no decode, no commit). Both rates are
steady state: the clock starts at the first message, not at the group join. Goal: ratio >= 0.5.

For scale it also measures the bus alone (``TypedConsumer.poll_batch`` with the builder's lenient decoding
and a commit per batch, nothing else): the most any service built on the bus can do per message.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from cutalign.builder import TargetBuilder
from cutalign.builder.wire import LenientJudgment
from cutalign.bus import TypedConsumer, TypedProducer, provision_topics
from cutalign.config import BuilderSettings, KafkaSettings
from cutalign.platform import LocalPlatform
from cutalign.store import ArtifactStore
from cutalign.v1 import common_pb2, messages_pb2

N = 50_000


def _judgment(i: int) -> messages_pb2.Judgment:
    positive = i % 4 == 0
    response = " ".join(str(i % 90 + k) for k in range(10 if positive else 9))
    prompt = messages_pb2.Prompt(id=f"p{i}", instruction=f"Count from {i % 90} to {i % 90 + 9}.", iteration=1)
    sample = messages_pb2.Sample(id=f"p{i}#0", prompt=prompt, response=response, iteration=1)
    return messages_pb2.Judgment(
        sample=sample,
        text="Perfect." if positive else f"The response stops early: {i % 90 + 9} is missing.",
        polarity=messages_pb2.POSITIVE if positive else messages_pb2.NEGATIVE,
        judge_id="counting",
        source=messages_pb2.JUDGE_SERVICE,
        error_spans=[] if positive else [common_pb2.Span(start=len(response) - 2, end=len(response))],
    )


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp, LocalPlatform.ephemeral(Path(tmp)) as platform:
        _measure(platform)


def _raw_consume_rate(kafka: KafkaSettings) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 2000,
            "fetch.message.max.bytes": kafka.max_message_bytes,
        }
    )
    consumer.subscribe([kafka.topic_judgments])
    got, first, start = 0, 0, 0.0
    while got < N:
        batch = consumer.consume(1000, 1.0)
        if batch and not got:  # steady state: the clock starts when the first batch arrives
            start, first = time.perf_counter(), len(batch)
        got += len(batch)
    rate = (got - first) / (time.perf_counter() - start)
    consumer.close()
    return rate


def _bus_rate(kafka: KafkaSettings) -> float:
    with TypedConsumer(
        kafka, group_id=f"bus-{uuid.uuid4().hex[:6]}", topics=[kafka.topic_judgments],
        message_type=LenientJudgment, service="bench",
    ) as consumer:  # fmt: skip
        got, first, start = 0, 0, 0.0
        while got < N:
            batch = consumer.poll_batch(1000, 1.0)
            if batch and not got:
                start, first = time.perf_counter(), len(batch)
            got += len(batch)
            consumer.commit()
        return (got - first) / (time.perf_counter() - start)


def _committed(kafka: KafkaSettings, group_id: str) -> int:
    """Messages the group has committed (not measured against watermarks: Tansu under-reports those)."""
    probe = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group_id})
    try:
        partitions = [TopicPartition(kafka.topic_judgments, p) for p in range(kafka.partitions)]
        return sum(max(tp.offset, 0) for tp in probe.committed(partitions, timeout=10))
    finally:
        probe.close()


def _builder_rate(kafka: KafkaSettings, store: ArtifactStore) -> tuple[float, int]:
    group = f"builder-{uuid.uuid4().hex[:6]}"
    settings = BuilderSettings(group_id=group, http_port=0, shard_max_examples=500, shard_max_seconds=1.0)
    builder = TargetBuilder(kafka, store.settings, settings, store=store)
    stop = threading.Event()
    thread = threading.Thread(target=builder.serve, args=(stop,), daemon=True)
    thread.start()
    while builder.stats.consumed == 0:
        time.sleep(0.001)
    start, already = time.perf_counter(), builder.stats.consumed
    while _committed(kafka, group) < N:  # decoded, validated, sharded, durable and committed
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    stop.set()
    thread.join(60)
    return (N - already) / elapsed, builder.stats.shards


def _measure(platform: LocalPlatform) -> None:
    kafka = platform.kafka_settings.model_copy(
        update={"topic_judgments": f"judgments-{uuid.uuid4().hex[:6]}"}
    )
    provision_topics(kafka)
    store = ArtifactStore(platform.s3, bucket="bench-builder")
    store.ensure_bucket()
    judgments = [_judgment(i) for i in range(N)]
    with TypedProducer(kafka, service="bench") as producer:
        for j in judgments:
            producer.send(kafka.topic_judgments, j, key=j.sample.id)

    raw = _raw_consume_rate(kafka)
    bus = _bus_rate(kafka)
    built, shards = _builder_rate(kafka, store)
    size = len(judgments[0].SerializeToString())
    print(f"{N} judgments of ~{size} bytes, {kafka.partitions} partitions, Tansu (memory) + SeaweedFS")
    print(f"raw consume  (Consumer.consume: no decode, no commit)     {raw:9.0f} msg/s")
    print(f"bus alone    (TypedConsumer.poll_batch, commit per batch)  {bus:9.0f} msg/s")
    print(f"builder      (decode, validate, shard to S3, commit)       {built:9.0f} judgments/s")
    print(
        f"{shards} shards; ratio builder/raw {built / raw:.3f} (goal >= 0.5), builder/bus {built / bus:.2f}"
    )
