"""The Kafka bus against the real broker: round trip, resume after a kill, dead letters, headers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from cutalign.bus import TypedConsumer, TypedProducer, provision_topics
from cutalign.config import KafkaSettings
from cutalign.v1 import messages_pb2, training_pb2


def _sample(i: int) -> messages_pb2.Sample:
    prompt = messages_pb2.Prompt(id=f"p{i}", instruction=f"Count from {i} to {i + 3}.", iteration=1)
    return messages_pb2.Sample(id=f"p{i}#0", prompt=prompt, response=" ".join(str(i + k) for k in range(4)))


def _drain(consumer: TypedConsumer, want: int, timeout_s: float = 30.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got.extend(consumer.poll_batch(100, 0.5))
    return got


def test_protobuf_round_trip_with_key_and_headers(kafka_settings: KafkaSettings, unique_name: str) -> None:
    provision_topics(kafka_settings)
    with TypedProducer(kafka_settings, service="test") as producer:
        for i in range(20):
            producer.send(kafka_settings.topic_samples, _sample(i), key=f"p{i}#0", trace_id=f"trace-{i}")
    with TypedConsumer(
        kafka_settings,
        group_id=unique_name,
        topics=[kafka_settings.topic_samples],
        message_type=messages_pb2.Sample,
        service="test",
    ) as consumer:
        got = _drain(consumer, 20)
        consumer.commit()
    assert sorted(e.message.id for e in got) == sorted(f"p{i}#0" for i in range(20))
    for envelope in got:
        assert envelope.key == envelope.message.id
        assert envelope.headers["schema"] == "cutalign.v1.Sample"
        assert envelope.headers["schema-version"] == "1"
        assert envelope.trace_id == f"trace-{envelope.message.id[1:-2]}"
        assert envelope.message == _sample(int(envelope.message.id[1:-2]))


def test_malformed_messages_are_dead_lettered_and_consumer_continues(
    kafka_settings: KafkaSettings, unique_name: str
) -> None:
    provision_topics(kafka_settings)
    topic = kafka_settings.topic_samples
    with TypedProducer(kafka_settings, service="test") as producer:
        producer.send(topic, _sample(1), key="p1#0")
        producer.send_raw(topic, b"\xff\xff\xff\x0f garbage", "bad-bytes", "cutalign.v1.Sample")
        producer.send_raw(topic, _sample(2).SerializeToString(), "bad-schema", "cutalign.v1.Prompt")
        producer.send(topic, _sample(3), key="p3#0")
    with TypedConsumer(
        kafka_settings, group_id=unique_name, topics=[topic], message_type=messages_pb2.Sample, service="test"
    ) as consumer:
        got = _drain(consumer, 2)
        assert consumer.commit()
        assert consumer.dead_lettered == 2
    assert sorted(e.message.id for e in got) == ["p1#0", "p3#0"]

    with TypedConsumer(
        kafka_settings,
        group_id=f"{unique_name}-dlq",
        topics=[kafka_settings.topic_deadletter],
        message_type=training_pb2.DeadLetter,
        service="test",
    ) as dlq:
        letters = {e.key: e.message for e in _drain(dlq, 2)}
    assert letters["bad-bytes"].reason == "decode_error"
    assert letters["bad-bytes"].original_value.startswith(b"\xff\xff\xff\x0f")
    assert letters["bad-bytes"].position.topic == topic
    assert letters["bad-schema"].reason == "wrong_schema"
    assert "cutalign.v1.Prompt" in letters["bad-schema"].detail


def test_commit_then_new_consumer_resumes_after_committed_offset(
    kafka_settings: KafkaSettings, unique_name: str
) -> None:
    provision_topics(kafka_settings)
    topic = kafka_settings.topic_samples
    with TypedProducer(kafka_settings, service="test") as producer:
        for i in range(10):
            producer.send(topic, _sample(i), key=f"p{i}#0")
    kwargs = dict(group_id=unique_name, topics=[topic], message_type=messages_pb2.Sample, service="test")
    with TypedConsumer(kafka_settings, **kwargs) as consumer:
        first = _drain(consumer, 10)
        assert consumer.commit()
    with TypedProducer(kafka_settings, service="test") as producer:
        for i in range(10, 15):
            producer.send(topic, _sample(i), key=f"p{i}#0")
    with TypedConsumer(kafka_settings, **kwargs) as consumer:
        second = _drain(consumer, 5)
    assert len(first) == 10
    assert sorted(e.message.id for e in second) == sorted(f"p{i}#0" for i in range(10, 15))


CONSUME_SLOWLY = textwrap.dedent(
    """
    import sys, time
    from cutalign.bus import TypedConsumer
    from cutalign.config import KafkaSettings
    from cutalign.v1 import messages_pb2
    settings = KafkaSettings()
    with TypedConsumer(settings, group_id=sys.argv[1], topics=[settings.topic_samples],
                       message_type=messages_pb2.Sample, service="killed") as consumer:
        while True:
            for envelope in consumer.poll_batch(5, 0.5):
                print(envelope.message.id, flush=True)
            consumer.commit()
            print("committed", flush=True)
    """
)


def test_consumer_killed_mid_stream_resumes_from_committed_offset(
    kafka_settings: KafkaSettings, unique_name: str, env_for: dict[str, str]
) -> None:
    provision_topics(kafka_settings)
    topic = kafka_settings.topic_samples
    with TypedProducer(kafka_settings, service="test") as producer:
        for i in range(40):
            producer.send(topic, _sample(i), key=f"p{i}#0")
    proc = subprocess.Popen(
        [sys.executable, "-c", CONSUME_SLOWLY, unique_name], env=env_for, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    committed: set[str] = set()
    seen_since_commit: set[str] = set()
    while len(committed) < 10:
        line = proc.stdout.readline().strip()
        assert line, "consumer subprocess exited early"
        if line == "committed":
            committed |= seen_since_commit
            seen_since_commit = set()
        else:
            seen_since_commit.add(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    with TypedConsumer(
        kafka_settings, group_id=unique_name, topics=[topic], message_type=messages_pb2.Sample, service="test"
    ) as consumer:
        rest = {e.message.id for e in _drain(consumer, 40 - len(committed), timeout_s=40)}
    everything = {f"p{i}#0" for i in range(40)}
    assert committed | rest == everything, "a message was lost across the kill"
    assert not committed & rest, "a committed message was delivered again"


def test_oversize_malformed_message_is_dead_lettered_truncated(
    kafka_settings: KafkaSettings, unique_name: str
) -> None:
    """A dead-letter record must fit on its topic, or the bad message would block its partition forever."""
    settings = kafka_settings.model_copy(update={"max_message_bytes": 80 * 1024})
    provision_topics(settings)
    garbage = b"\xff" * (70 * 1024)
    with TypedProducer(settings, service="test") as producer:
        producer.send_raw(settings.topic_samples, garbage, "huge", "cutalign.v1.Sample")
        producer.send(settings.topic_samples, _sample(1), key="p1#0")
    with TypedConsumer(
        settings,
        group_id=unique_name,
        topics=[settings.topic_samples],
        message_type=messages_pb2.Sample,
        service="test",
    ) as consumer:
        assert [e.message.id for e in _drain(consumer, 1)] == ["p1#0"]
        assert consumer.commit()
    with TypedConsumer(
        settings,
        group_id=f"{unique_name}-dlq",
        topics=[settings.topic_deadletter],
        message_type=training_pb2.DeadLetter,
        service="test",
    ) as dlq:
        (letter,) = [e.message for e in _drain(dlq, 1)]
    assert letter.reason == "decode_error"
    assert len(letter.original_value) == 16 * 1024
    assert letter.detail.startswith("[original value truncated from 71680 to 16384 bytes]")
