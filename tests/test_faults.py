"""Fault injection: each failure found by trying the services harder, as production would, is a test here.

Loopback only, bounded in count and time (the long mixed run with random kills is ``make soak``). Real
broker and store throughout; the store and broker restarts use their own platform (Tansu persisting into
SeaweedFS), so killing them does not disturb other tests. Feedback faults are in ``test_feedback.py`` (its
server fixture), the pure content rules in ``test_builder_process.py`` and ``test_judges.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from confluent_kafka import Consumer, Producer, TopicPartition

from builder_support import builder_settings, judgment, running_builder, seal_http, wait_committed
from cutalign.builder import read_sealed_examples
from cutalign.bus import TypedConsumer, TypedProducer, provision_topics
from cutalign.bus.config import client_config
from cutalign.bus.runner import SHUTDOWN_GRACE_S
from cutalign.config import FeedbackSettings, JudgeSettings, KafkaSettings
from cutalign.feedback.app import create_app
from cutalign.feedback.versions import KnownVersions
from cutalign.judging.service import run as run_judge
from cutalign.platform import LocalPlatform
from cutalign.platform.local import PlatformError
from cutalign.policy.launcher import free_port
from cutalign.store import ArtifactStore
from cutalign.store.layout import iteration_manifest_key
from cutalign.v1 import messages_pb2, training_pb2
from fault_support import JUDGE, dead_letters_by_key, processes_with_env, read_topic, sample

MIB = 1024 * 1024


def _publish(kafka: KafkaSettings, samples: list[messages_pb2.Sample]) -> None:
    with TypedProducer(kafka, service="test") as producer:
        for s in samples:
            producer.send(kafka.topic_samples, s, key=s.id)


def _committed(kafka: KafkaSettings, group: str) -> int:
    """Samples ``group`` has committed (offsets start at 0 and are contiguous)."""
    consumer = Consumer({**client_config(kafka, client_suffix="commit-probe"), "group.id": group})
    try:
        parts = [TopicPartition(kafka.topic_samples, p) for p in range(kafka.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


class JudgeThread:
    """The judge service in a thread (as the embedded stack runs it); ``stop`` is the SIGTERM path."""

    def __init__(self, kafka: KafkaSettings, settings: JudgeSettings) -> None:
        self.stop_event, self.ready = threading.Event(), threading.Event()
        self.outcome: dict[str, object] = {}

        def target() -> None:
            try:
                self.outcome["stats"] = run_judge(
                    kafka, settings, stop_event=self.stop_event, ready=self.ready
                )
            except BaseException as e:  # handed to the test below
                self.outcome["error"] = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        assert self.ready.wait(60), f"the judge service did not start: {self.outcome}"

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(SHUTDOWN_GRACE_S + 20)
        assert not self.thread.is_alive(), "the judge service did not stop"
        assert "error" not in self.outcome, f"the judge service failed: {self.outcome['error']!r}"


def _wait_committed(kafka: KafkaSettings, group: str, total: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while (done := _committed(kafka, group)) < total:
        assert time.monotonic() < deadline, f"committed {done} of {total} in {timeout_s:.0f}s"
        time.sleep(0.3)


# -- 1. judge crash loop on oversize output ---------------------------------------------------------------


def test_judge_outputs_that_cannot_be_produced_are_dead_lettered_and_the_batch_goes_on(
    kafka_settings: KafkaSettings, unique_name: str
) -> None:
    """Before: a judgment over the producer limit raised MSG_SIZE_TOO_LARGE out of the service (exit 1 before
    the commit, every restart re-publishing the batch); the valid samples of that batch got no judgment."""
    kafka = kafka_settings.model_copy(update={"max_message_bytes": MIB, "max_text_bytes": 192 * 1024})
    provision_topics(kafka)
    valid = [sample(f"p{i}#0", "ab" if i % 2 else "abc") for i in range(30)]
    bad = {
        "echo-too-large#0": sample(
            "echo-too-large#0", "ab", fault="huge_text", size=150_000, pad="y" * 900_000
        ),
        "huge-text#0": sample("huge-text#0", "ab", fault="huge_text", size=300_000),  # 9 MB of text, scaled
        "huge-response#0": sample("huge-response#0", "z" * 300_000),
        "float-span#0": sample("float-span#0", "abc", fault="float_span"),
        "mid-span#0": sample("mid-span#0", "abc", fault="mid_span"),
        "p\x07bell#0": sample("p\x07bell#0"),
    }
    _publish(kafka, valid[:15] + list(bad.values()) + valid[15:])
    judge = JudgeThread(kafka, JudgeSettings(judge=JUDGE, group_id=unique_name, http_port=0, concurrency=2))
    try:
        _wait_committed(kafka, unique_name, len(valid) + len(bad))
    finally:
        judge.stop()

    judgments = Counter(key for key, _ in read_topic(kafka, kafka.topic_judgments, messages_pb2.Judgment))
    assert judgments == Counter(s.id for s in valid), "every valid sample of the batch judged, once"
    letters = dead_letters_by_key(kafka)
    assert {k: d.reason for k, d in letters.items()} == {
        "echo-too-large#0": "output_too_large",
        "huge-text#0": "oversize_text",
        "huge-response#0": "oversize_text",
        "float-span#0": "invalid_judgment",
        "mid-span#0": "invalid_judgment",
        "p\x07bell#0": "invalid_id",
    }
    assert "over kafka.max_message_bytes=1048576" in letters["echo-too-large#0"].detail
    assert "is empty; an empty span may only blame the end" in letters["mid-span#0"].detail
    assert "pair of ints" in letters["float-span#0"].detail
    for key, letter in letters.items():
        assert messages_pb2.Sample.FromString(letter.original_value) == bad[key], "replayable as it was"


# -- 2. judge stall loop under hung calls -----------------------------------------------------------------


def test_hung_judge_calls_neither_stall_the_group_nor_rejudge_nor_leak_threads(
    kafka_settings: KafkaSettings, unique_name: str
) -> None:
    """Before: a batch of hung calls ran past max.poll.interval, the consumer was dropped from its group, the
    commit failed and the batch — already published — was judged again; every timeout left a thread behind."""
    kafka = kafka_settings.model_copy(update={"max_poll_interval_ms": 7000})
    provision_topics(kafka)
    hung = [sample(f"hang{i}#0", fault="hang") for i in range(20)]
    valid = [sample(f"p{i}#0") for i in range(5)]
    _publish(kafka, hung + valid)
    threads_before = threading.active_count()
    settings = JudgeSettings(
        judge=JUDGE,
        group_id=unique_name,
        http_port=0,
        timeout_s=1.0,
        max_retries=0,
        concurrency=2,
        batch_size=32,
    )
    started = time.monotonic()
    judge = JudgeThread(kafka, settings)
    most_children = 0
    try:
        deadline = time.monotonic() + 120
        while _committed(kafka, unique_name) < len(hung) + len(valid):
            most_children = max(most_children, len(multiprocessing.active_children()))
            assert time.monotonic() < deadline, "the batch of hung calls was never committed"
            time.sleep(0.2)
        took = time.monotonic() - started
        time.sleep(3)  # a consumer dropped from its group would be judging the batch again now
    finally:
        judge.stop()

    assert took > 7, "the batch must outlast max.poll.interval.ms for this test to mean anything"
    judgments = Counter(key for key, _ in read_topic(kafka, kafka.topic_judgments, messages_pb2.Judgment))
    assert judgments == Counter(s.id for s in valid), "each published once: never judged again"
    letters = list(read_topic(kafka, kafka.topic_deadletter, training_pb2.DeadLetter))
    assert Counter(key for key, _ in letters) == Counter(s.id for s in hung), "each dead-lettered once"
    assert {d.detail.split(":")[0] for _, d in letters} == {"JudgeTimeout"}
    assert most_children <= settings.concurrency, "the pool never holds more processes than its workers"
    assert not multiprocessing.active_children(), "the worker processes are gone with the service"
    assert threading.active_count() <= threads_before + 1, "no thread left behind by 20 timed-out calls"


def test_sigterm_stops_a_judge_with_hung_calls_within_the_stated_bound(
    kafka_settings: KafkaSettings, unique_name: str, env_for: dict[str, str]
) -> None:
    """Before: SIGTERM did not stop a judge service with hung calls within 30 s."""
    provision_topics(kafka_settings)
    _publish(kafka_settings, [sample(f"hang{i}#0", fault="hang") for i in range(4)])
    marker = f"CUTALIGN_TEST_MARKER_{uuid.uuid4().hex}"
    port = free_port()
    env = {
        **env_for,
        marker: "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), env_for.get("PYTHONPATH", "")]),
        "CUTALIGN_JUDGE_JUDGE": JUDGE,
        "CUTALIGN_JUDGE_GROUP_ID": unique_name,
        "CUTALIGN_JUDGE_HTTP_PORT": str(port),
        "CUTALIGN_JUDGE_TIMEOUT_S": "600",
        "CUTALIGN_JUDGE_CONCURRENCY": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cutalign.judging.service"], env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while len(processes_with_env(marker)) < 3:  # the service and its two workers, judging
            assert proc.poll() is None and time.monotonic() < deadline, "the judge did not start"
            time.sleep(0.2)
        time.sleep(2)  # the calls are in flight, hung
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(SHUTDOWN_GRACE_S + 15)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
    assert took <= SHUTDOWN_GRACE_S + 10, f"SIGTERM took {took:.1f}s"
    time.sleep(2)
    assert not processes_with_env(marker), "a judge worker process outlived the service"
    assert _committed(kafka_settings, unique_name) == 0, "an abandoned batch is not committed (redelivered)"


# -- 3. store or broker restart ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def persistent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    """A platform of its own whose broker persists into its store (restarts keep topics and offsets)."""
    local = LocalPlatform.ephemeral(tmp_path_factory.mktemp("persistent"))
    local.storage = "s3"
    with local:
        yield local


def _on(platform: LocalPlatform, kafka: KafkaSettings) -> KafkaSettings:
    return kafka.model_copy(update={"bootstrap_servers": platform.kafka_settings.bootstrap_servers})


def test_the_builder_stays_up_through_a_store_restart_and_loses_nothing(
    persistent: LocalPlatform, kafka_settings: KafkaSettings, unique_name: str
) -> None:
    """Before: the builder exited 1 when the store died."""
    kafka = _on(persistent, kafka_settings)
    provision_topics(kafka)
    store = ArtifactStore(persistent.s3, bucket=unique_name.replace(".", "-")[:63])
    store.ensure_bucket()
    with TypedProducer(kafka, service="test") as producer:
        for i in range(300):
            producer.send(kafka.topic_judgments, judgment(i, positive=i % 2 == 0), key=f"p{i}#0")
    # everything is buffered for 4 s before it is written: the store dies while the builder holds it
    settings = builder_settings(unique_name, align_p_ratio=10.0, shard_max_examples=1000, shard_max_seconds=4)
    with running_builder(kafka, persistent.s3, settings, store) as builder:
        deadline = time.monotonic() + 60
        while builder.stats.consumed < 300:
            assert time.monotonic() < deadline, "the builder did not read the judgments"
            time.sleep(0.05)
        assert builder.stats.shards == 0
        persistent.kill("seaweedfs")
        ready = f"http://127.0.0.1:{builder.http_port}/readyz"
        deadline = time.monotonic() + 30
        while httpx.get(ready).status_code == 200:
            assert time.monotonic() < deadline, "readiness never reported the outage"
            time.sleep(0.2)
        time.sleep(2)
        persistent.up()
        deadline = time.monotonic() + 60
        while httpx.get(ready).status_code != 200:
            assert time.monotonic() < deadline, "the builder did not recover after the store came back"
            time.sleep(0.2)
        wait_committed(kafka, unique_name, 300, timeout_s=90)
        seal_http(builder, 1)
        stats = builder.stats
    manifest = store.get_manifest(iteration_manifest_key(1), training_pb2.IterationManifest)
    ids = [e.sample_id for e in read_sealed_examples(store, manifest)] + list(manifest.excluded_sample_ids)
    assert sorted(ids) == sorted(f"p{i}#0" for i in range(300)), "every judgment once, none lost"
    assert stats.dead_lettered == 0


def test_feedback_recovers_its_fenced_producer_after_a_store_restart_and_readiness_tells_the_truth(
    persistent: LocalPlatform, kafka_settings: KafkaSettings
) -> None:
    """Before: after the platform came back every publish failed (the producer was fenced, permanently: 503
    for 14 minutes) while /readyz said 200; only a restart fixed it."""
    kafka = _on(persistent, kafka_settings)
    provision_topics(kafka)
    sha = "ab" * 32
    settings = FeedbackSettings(token="t", user_hash_salt="s" * 16, known_policy_versions=[sha])
    app = create_app(settings, kafka, versions=KnownVersions(settings, None))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer t"}

    def post(event_id: str) -> int:
        event = {"instruction": "Say hi.", "response": "hi", "positive": True, "source": "app",
                 "policy_version": sha, "event_id": event_id}  # fmt: skip
        return httpx.post(f"{base}/v1/feedback", json=event, headers=auth, timeout=60).status_code

    try:
        assert post("before") == 202
        persistent.kill("seaweedfs")  # the broker cannot store anything now
        assert post("during") == 503
        assert httpx.get(f"{base}/readyz", timeout=30).status_code == 503, "it cannot publish: not ready"
        persistent.up()
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/readyz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "readiness did not come back with the platform"
            time.sleep(0.5)
        assert [post(f"after-{i}") for i in range(5)] == [202] * 5, "publishing works again, no restart"
    finally:
        server.should_exit = True
        thread.join(30)
    on_topic = dict(read_topic(kafka, kafka.topic_judgments, messages_pb2.Judgment))
    assert {j.judge_id for j in on_topic.values()} == {"feedback:app"}
    assert len(on_topic) >= 6, "every 202 is on the topic (the 503 one may be too; its retry would dedupe)"


def test_up_never_stops_a_healthy_broker_because_the_store_failed_to_start(tmp_path: Path) -> None:
    """Before: when the store could not start (admin port taken), `cutalign up` also stopped the broker."""
    platform = LocalPlatform.ephemeral(tmp_path)
    platform.up()
    try:
        platform.kill("seaweedfs")
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 30
        while True:
            try:
                blocker.bind(("127.0.0.1", platform.settings.admin_port))
                break
            except OSError:
                assert time.monotonic() < deadline, "the admin port was never released"
                time.sleep(0.2)
        blocker.listen(1)
        try:
            with pytest.raises(PlatformError):
                platform.up(timeout_s=8)
        finally:
            blocker.close()
        state = platform.status()
        assert state["tansu"]["running"] and state["tansu"]["listening"], "the healthy broker was stopped"
        assert not state["seaweedfs"]["running"]
    finally:
        platform.down()


# -- 4. schemas -------------------------------------------------------------------------------------------


def test_messages_without_schema_headers_or_not_of_the_named_type_are_dead_lettered(
    kafka_settings: KafkaSettings, unique_name: str
) -> None:
    """Before: a message with no schema headers was taken for the expected type, and a Judgment's bytes under
    a Prompt header parsed as a Prompt."""
    provision_topics(kafka_settings)
    topic = kafka_settings.topic_prompts
    prompt = messages_pb2.Prompt(id="ok", instruction="Say hi.")
    not_a_prompt = judgment(3, positive=False).SerializeToString()
    raw = Producer(client_config(kafka_settings, client_suffix="raw"))
    raw.produce(topic, prompt.SerializeToString(), key=b"no-headers")
    raw.produce(topic, not_a_prompt, key=b"judgment-bytes",
                headers=[("schema", b"cutalign.v1.Prompt"), ("schema-version", b"1")])  # fmt: skip
    raw.flush(10)
    with TypedProducer(kafka_settings, service="test") as producer:
        producer.send(topic, prompt, key="ok")
    with TypedConsumer(
        kafka_settings, group_id=unique_name, topics=[topic], message_type=messages_pb2.Prompt, service="test"
    ) as consumer:
        got: list = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = consumer.poll_batch(100, 0.5)
        consumer.commit()
    assert [e.key for e in got] == ["ok"]
    letters = dead_letters_by_key(kafka_settings)
    assert letters["no-headers"].reason == "missing_schema"
    assert letters["judgment-bytes"].reason == "decode_error"
    assert "wire type" in letters["judgment-bytes"].detail
    assert letters["judgment-bytes"].headers["schema"] == "cutalign.v1.Prompt"
