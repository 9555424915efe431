"""The judge service over the real broker: a user's judge loaded by dotted path, retries and dead letters,
a SIGKILL mid-stream and a restart, SIGTERM, and the probes and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import REGISTRY

from cutalign.bus import TypedConsumer, TypedProducer, provision_topics
from cutalign.config import JudgeSettings, KafkaSettings
from cutalign.judging.service import run
from cutalign.policy.launcher import free_port
from cutalign.v1 import messages_pb2, training_pb2

USER_JUDGES = '''
import random
import time


class EvenJudge:
    """Positive iff the response is an even number; says which digit is wrong otherwise."""

    id = "even-v1"

    def __init__(self, delay_s=0.0):
        self.delay_s = delay_s

    def judge(self, instruction, response, reference):
        time.sleep(self.delay_s)
        if int(response) % 2 == 0:
            return ("Perfect.", True)
        return (f"{response} is odd; its last digit should be even.", False)


class FlakyJudge(EvenJudge):
    """Raises half the time, and hangs on responses listed in the reference."""

    id = "flaky-v1"

    def __init__(self, seed=0):
        super().__init__()
        self.random = random.Random(seed)

    def judge(self, instruction, response, reference):
        if reference and reference.get("hang"):
            time.sleep(5)
        if self.random.random() < 0.5:
            raise ConnectionError("judge endpoint reset the connection")
        return super().judge(instruction, response, reference)
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A judge module in the test's tmp dir, importable by dotted path (as a user would ship one)."""
    name = f"user_judges_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_JUDGES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _sample(i: int, reference: dict[str, object] | None = None) -> messages_pb2.Sample:
    prompt = messages_pb2.Prompt(
        id=f"p{i}",
        instruction="Name an even number.",
        iteration=1,
        reference_json=json.dumps(reference or {}),
    )
    return messages_pb2.Sample(id=f"p{i}#0", prompt=prompt, response=str(i), iteration=1)


def _publish(kafka: KafkaSettings, samples: list[messages_pb2.Sample]) -> None:
    with TypedProducer(kafka, service="test") as producer:
        for sample in samples:
            producer.send(kafka.topic_samples, sample, key=sample.id, trace_id=f"trace-{sample.id}")


def _drain(kafka: KafkaSettings, topic: str, message_type: type, want: int, timeout_s: float = 60.0) -> list:
    got: list = []
    with TypedConsumer(
        kafka,
        group_id=f"reader-{uuid.uuid4().hex[:8]}",
        topics=[topic],
        message_type=message_type,
        service="test",
    ) as consumer:
        deadline = time.monotonic() + timeout_s
        while len(got) < want and time.monotonic() < deadline:
            got.extend(consumer.poll_batch(500, 0.5))
    return got


@pytest.fixture
def service(kafka_settings: KafkaSettings) -> Iterator[dict]:
    """Starts ``run`` in a thread with given settings; stops it (SIGTERM path: stop_event) at teardown."""
    started: dict = {}

    def start(settings: JudgeSettings) -> threading.Event:
        stop, ready = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=lambda: started.setdefault(
                "stats", run(kafka_settings, settings, stop_event=stop, ready=ready)
            )
        )
        thread.start()
        started.update(stop=stop, thread=thread)
        assert ready.wait(30), "judge service did not become ready"
        return stop

    started["start"] = start
    yield started
    if "stop" in started:
        started["stop"].set()
        started["thread"].join(30)
        assert not started["thread"].is_alive(), "judge service did not stop after stop_event"


def test_user_judge_by_dotted_path_judges_every_sample_with_probes_and_metrics(
    kafka_settings: KafkaSettings, unique_name: str, user_module: str, service: dict
) -> None:
    provision_topics(kafka_settings)
    port = free_port()
    settings = JudgeSettings(judge=f"{user_module}:EvenJudge", group_id=unique_name, http_port=port)
    before = REGISTRY.get_sample_value(
        "cutalign_judge_judgments_total", {"judge": "even-v1", "polarity": "positive"}
    )
    service["start"](settings)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
        assert r.status == 200
    _publish(kafka_settings, [_sample(i) for i in range(30)])

    got = _drain(kafka_settings, kafka_settings.topic_judgments, messages_pb2.Judgment, 30)
    by_key = {e.key: e for e in got}
    assert sorted(by_key) == sorted(f"p{i}#0" for i in range(30))
    assert len(got) == 30
    for key, envelope in by_key.items():
        judgment, i = envelope.message, int(key[1:-2])
        assert judgment.sample == _sample(i), "the judged sample is embedded unchanged"
        assert judgment.source == messages_pb2.JUDGE_SERVICE
        assert judgment.judge_id == "even-v1"
        assert envelope.trace_id == f"trace-{key}", "the trace id follows the sample"
        if i % 2 == 0:
            assert (judgment.polarity, judgment.text) == (messages_pb2.POSITIVE, "Perfect.")
        else:
            assert judgment.polarity == messages_pb2.NEGATIVE
            assert judgment.text == f"{i} is odd; its last digit should be even."
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert 'cutalign_judge_judgments_total{judge="even-v1",polarity="negative"}' in metrics
    assert "cutalign_judge_call_seconds_bucket" in metrics
    after = REGISTRY.get_sample_value(
        "cutalign_judge_judgments_total", {"judge": "even-v1", "polarity": "positive"}
    )
    assert after - (before or 0) == 15


def test_flaky_and_hanging_judge_ends_with_every_sample_judged_or_dead_lettered(
    kafka_settings: KafkaSettings, unique_name: str, user_module: str, service: dict
) -> None:
    provision_topics(kafka_settings)
    settings = JudgeSettings(
        judge=f"{user_module}:FlakyJudge",
        options_json='{"seed": 7}',
        group_id=unique_name,
        http_port=0,
        max_retries=1,
        backoff_s=0.01,
        timeout_s=0.5,
        concurrency=4,
    )
    samples = [_sample(i) for i in range(60)] + [_sample(100, {"hang": True})]
    bad = _sample(101)
    bad.prompt.reference_json = "not json"
    service["start"](settings)
    _publish(kafka_settings, [*samples, bad])
    everything = {s.id for s in samples} | {bad.id}

    judged: dict[str, messages_pb2.Judgment] = {}
    letters: dict[str, training_pb2.DeadLetter] = {}
    deadline = time.monotonic() + 60
    with (
        TypedConsumer(
            kafka_settings,
            group_id=f"{unique_name}-j",
            topics=[kafka_settings.topic_judgments],
            message_type=messages_pb2.Judgment,
            service="test",
        ) as jc,
        TypedConsumer(
            kafka_settings,
            group_id=f"{unique_name}-d",
            topics=[kafka_settings.topic_deadletter],
            message_type=training_pb2.DeadLetter,
            service="test",
        ) as dc,
    ):
        while set(judged) | set(letters) != everything and time.monotonic() < deadline:
            judged.update((e.key, e.message) for e in jc.poll_batch(500, 0.2))
            letters.update((e.key, e.message) for e in dc.poll_batch(500, 0.2))

    assert set(judged) | set(letters) == everything, "a sample was lost"
    assert not set(judged) & set(letters), "a sample was both judged and dead-lettered"
    assert letters[bad.id].reason == "invalid_sample"
    hang = letters[_sample(100).id]
    assert hang.reason == "judge_failed"
    assert hang.detail.startswith("JudgeTimeout: judge call took longer than 0.5s (after 2 attempt(s))")
    failed = [letters[k] for k in letters if k not in (bad.id, _sample(100).id)]
    assert failed, "with p=0.25 of failing twice, some of 60 samples must be dead-lettered"
    assert len(judged) > 30
    for letter in failed:
        assert letter.reason == "judge_failed"
        assert letter.detail == "ConnectionError: judge endpoint reset the connection (after 2 attempt(s))"
        assert letter.service == "judge"
        assert messages_pb2.Sample.FromString(letter.original_value).id == letter.original_key.decode()
    for judgment in judged.values():
        assert judgment.text and "ConnectionError" not in judgment.text, "a failure became a judgment"


def _committed(kafka: KafkaSettings, group: str, topic: str) -> int:
    """Sum over the partitions of ``topic`` of the offsets ``group`` committed (= messages consumed)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(kafka.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_judges_every_sample_once_and_sigterm_commits(
    kafka_settings: KafkaSettings, unique_name: str, user_module: str, env_for: dict[str, str], tmp_path: Path
) -> None:
    provision_topics(kafka_settings)
    total = 300
    _publish(kafka_settings, [_sample(i) for i in range(total)])
    env = {
        **env_for,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), env_for.get("PYTHONPATH", "")]),
        "CUTALIGN_JUDGE_JUDGE": f"{user_module}:EvenJudge",
        "CUTALIGN_JUDGE_OPTIONS_JSON": '{"delay_s": 0.01}',
        "CUTALIGN_JUDGE_GROUP_ID": unique_name,
        "CUTALIGN_JUDGE_HTTP_PORT": "0",
        "CUTALIGN_JUDGE_BATCH_SIZE": "20",
        "CUTALIGN_JUDGE_CONCURRENCY": "2",
    }
    command = [sys.executable, "-m", "cutalign.judging.service"]
    first = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    seen: list = []
    with TypedConsumer(
        kafka_settings,
        group_id=f"{unique_name}-r",
        topics=[kafka_settings.topic_judgments],
        message_type=messages_pb2.Judgment,
        service="test",
    ) as reader:
        deadline = time.monotonic() + 60
        while len(seen) < total // 3 and time.monotonic() < deadline:
            seen.extend(reader.poll_batch(500, 0.2))
        assert len(seen) >= total // 3, "the service judged too little before the kill"
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert len(seen) < total, "the kill came too late to interrupt the stream"

        second = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while len({e.key for e in seen}) < total and time.monotonic() < deadline:
                seen.extend(reader.poll_batch(500, 0.2))
        finally:
            second.send_signal(signal.SIGTERM)
            code = second.wait(30)
    assert code == 0, "SIGTERM must end the service cleanly"

    keys = Counter(e.key for e in seen)
    assert set(keys) == {f"p{i}#0" for i in range(total)}, "a sample was lost across the kill"
    duplicated = [k for k, n in keys.items() if n > 1]
    assert len(duplicated) <= 20, "only the uncommitted batch at the kill may be judged again"
    for key in duplicated:
        versions = {(e.message.text, e.message.polarity) for e in seen if e.key == key}
        assert len(versions) == 1, "a redelivered sample must get the same judgment (idempotent by key)"
    assert _committed(kafka_settings, unique_name, kafka_settings.topic_samples) == total, (
        "SIGTERM must commit everything judged"
    )
