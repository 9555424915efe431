"""Produce/consume throughput of the typed bus layer vs the raw confluent-kafka client, same broker and run.

The bus adds protobuf encoding/decoding, schema headers, delivery tracking and dead-letter checks; this
measures what that costs per message relative to raw ``Producer.produce`` / ``Consumer.consume``.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer

from cutalign.bus import TypedConsumer, TypedProducer, provision_topics
from cutalign.platform import LocalPlatform
from cutalign.v1 import messages_pb2

N = 20_000


def _sample(i: int) -> messages_pb2.Sample:
    prompt = messages_pb2.Prompt(id=f"p{i}", instruction=f"Count from {i % 90} to {i % 90 + 9}.", iteration=1)
    return messages_pb2.Sample(
        id=f"p{i}#0", prompt=prompt, response=" ".join(str(i % 90 + k) for k in range(10))
    )


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp, LocalPlatform.ephemeral(Path(tmp)) as platform:
        _measure(platform)


def _measure(platform: LocalPlatform) -> None:
    base = platform.kafka_settings
    raw_topic, typed_topic = f"raw-{uuid.uuid4().hex[:6]}", f"typed-{uuid.uuid4().hex[:6]}"
    settings = base.model_copy(
        update={"topic_samples": typed_topic, "topic_deadletter": typed_topic + ".dlq"}
    )
    provision_topics(settings, [raw_topic, typed_topic, settings.topic_deadletter])
    samples = [_sample(i) for i in range(N)]
    payloads = [s.SerializeToString() for s in samples]

    raw = Producer(
        {
            "bootstrap.servers": base.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    start = time.perf_counter()
    for s, payload in zip(samples, payloads, strict=True):
        raw.produce(raw_topic, value=payload, key=s.id.encode())
        raw.poll(0)
    raw.flush()
    raw_produce = N / (time.perf_counter() - start)

    start = time.perf_counter()
    with TypedProducer(settings, service="bench") as producer:
        for s in samples:
            producer.send(typed_topic, s, key=s.id)
    typed_produce = N / (time.perf_counter() - start)

    consumer = Consumer(
        {
            "bootstrap.servers": base.bootstrap_servers,
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 2000,
        }
    )
    consumer.subscribe([raw_topic])
    got, start = 0, None
    while got < N:
        batch = consumer.consume(1000, 1.0)
        if batch and start is None:
            start = time.perf_counter()  # measure steady-state consumption, not the group join
        for m in batch:
            messages_pb2.Sample.FromString(m.value())  # same decode work as the bus does
        got += len(batch)
        if batch:
            consumer.commit(asynchronous=False)
    assert start is not None
    raw_consume = N / (time.perf_counter() - start)
    consumer.close()

    with TypedConsumer(
        settings,
        group_id=f"typed-{uuid.uuid4().hex[:6]}",
        topics=[typed_topic],
        message_type=messages_pb2.Sample,
        service="bench",
    ) as typed:
        got, start = 0, None
        while got < N:
            batch = typed.poll_batch(1000, 1.0)
            if batch and start is None:
                start = time.perf_counter()
            got += len(batch)
            if batch:
                typed.commit()
        assert start is not None
        typed_consume = N / (time.perf_counter() - start)

    print(f"messages: {N} Samples of ~{len(payloads[0])} bytes, Tansu memory storage, loopback")
    print(
        f"produce  raw {raw_produce:9.0f} msg/s | bus {typed_produce:9.0f} msg/s | "
        f"ratio {typed_produce / raw_produce:.2f}"
    )
    print(
        f"consume  raw {raw_consume:9.0f} msg/s | bus {typed_consume:9.0f} msg/s | "
        f"ratio {typed_consume / raw_consume:.2f}"
    )
    print("(raw consume decodes the protobuf too and commits per batch, as the bus does)")
