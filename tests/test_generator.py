"""The generator over the real broker and a real KServe policy server: prompts in, samples of the verified
policy out; a SIGKILL mid-stream and a restart; refusal to generate from an unexpected policy; and every
rejected prompt dead-lettered with its reason (empty, too long, over the context, server down)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import REGISTRY

from cutalign.bus import TypedConsumer, TypedProducer, provision_topics
from cutalign.config import GeneratorSettings, KafkaSettings, PolicySettings
from cutalign.generator.guard import PolicyVersionMismatch
from cutalign.generator.service import RunStats, run
from cutalign.policy.generation import SamplingParams, generate
from cutalign.policy.launcher import PolicyServerProcess, free_port, start_policy_server
from cutalign.policy.loading import LoadedPolicy, load_policy
from cutalign.policy.promotion import build_release, promote
from cutalign.policy.version import dir_sha256
from cutalign.store import ArtifactStore
from cutalign.templates import get_template
from cutalign.v1 import messages_pb2, training_pb2
from policy_support import admin_load, tiny_policy

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("generator")
    return tiny_policy(root / "policy-a", seed=0), tiny_policy(root / "policy-b", seed=1)


@pytest.fixture(scope="module")
def server(checkpoints: tuple[Path, Path]) -> Iterator[PolicyServerProcess]:
    with start_policy_server(
        checkpoints[0],
        torch_threads=1,
        policy_model_id="tiny-a",
        iteration=0,
        load_roots=[str(checkpoints[0].parent)],
    ) as process:
        yield process


@pytest.fixture(scope="module")
def offline(checkpoints: tuple[Path, Path]) -> LoadedPolicy:
    return load_policy(str(checkpoints[0]))


def prompt(pid: str, instruction: str, **fields: Any) -> messages_pb2.Prompt:
    return messages_pb2.Prompt(id=pid, instruction=instruction, iteration=1, split="train", **fields)


def publish(kafka: KafkaSettings, prompts: list[messages_pb2.Prompt]) -> None:
    with TypedProducer(kafka, service="test") as producer:
        for p in prompts:
            producer.send(kafka.topic_prompts, p, key=p.id, trace_id=f"trace-{p.id}")


def drain(kafka: KafkaSettings, topic: str, message_type: type, want: int, timeout_s: float = 60.0) -> list:
    got: list = []
    with TypedConsumer(kafka, group_id=f"reader-{uuid.uuid4().hex[:8]}", topics=[topic],
                       message_type=message_type, service="test") as consumer:  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while len(got) < want and time.monotonic() < deadline:
            got.extend(consumer.poll_batch(500, 0.3))
    return got


class Running:
    """``run`` in a thread (the in-process mode the demo uses), stopped through its stop event."""

    def __init__(
        self,
        kafka: KafkaSettings,
        policy: PolicySettings,
        generator: GeneratorSettings,
        store: ArtifactStore | None = None,
    ) -> None:
        self.stop, self.ready = threading.Event(), threading.Event()
        self.result: dict[str, Any] = {}

        def target() -> None:
            try:
                self.result["stats"] = run(kafka, policy, generator, self.stop, ready=self.ready, store=store)
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                self.result["error"] = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def wait_ready(self) -> None:
        assert self.ready.wait(30) or "error" in self.result, "generator did not become ready"

    def finish(self) -> RunStats:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "generator did not stop after its stop event"
        if "error" in self.result:
            raise self.result["error"]
        return self.result["stats"]


def formatted(instruction: str) -> str:
    return get_template("plain").format_plain(instruction)


def test_every_prompt_becomes_one_sample_of_the_verified_policy(
    kafka_settings: KafkaSettings, unique_name: str, server: PolicyServerProcess, offline: LoadedPolicy,
    checkpoints: tuple[Path, Path],
) -> None:  # fmt: skip
    provision_topics(kafka_settings)
    prompts = [prompt(f"p{i}", f"Count to {i}.", reference_json=f'{{"n": {i}}}') for i in range(12)]
    publish(kafka_settings, prompts)
    before = REGISTRY.get_sample_value("cutalign_generator_samples_total") or 0.0
    policy = PolicySettings(url=server.url, backend="tgi", max_new_tokens=MAX_NEW_TOKENS)
    generator = GeneratorSettings(group_id=unique_name, iteration=1, batch_size=5,
                                  expected_policy_sha256=dir_sha256(checkpoints[0]))  # fmt: skip
    running = Running(kafka_settings, policy, generator)
    got = drain(kafka_settings, kafka_settings.topic_samples, messages_pb2.Sample, 12)
    stats = running.finish()

    assert sorted(e.key for e in got) == sorted(f"p{i}#0" for i in range(12)), "one sample per prompt, keyed"
    expected = generate(offline.model, offline.tokenizer, [formatted(p.instruction) for p in prompts],
                        SamplingParams(max_new_tokens=MAX_NEW_TOKENS))  # fmt: skip
    for envelope in got:
        sample, i = envelope.message, int(envelope.key[1:-2])
        assert sample.id == envelope.key and sample.prompt == prompts[i], "the prompt is embedded unchanged"
        assert sample.response == expected[i].text
        assert sample.finish_reason == expected[i].finish_reason and sample.generated_tokens == 16
        assert sample.policy.checkpoint_sha256 == dir_sha256(checkpoints[0])
        assert (sample.policy.model_id, sample.policy.uri) == ("tiny-a", str(checkpoints[0]))
        assert (sample.params.backend, sample.params.max_new_tokens, sample.params.template) == (
            "tgi",
            16,
            "plain",
        )
        assert (sample.iteration, sample.prompt_truncated) == (1, False) and sample.created_at_ms > 0
        assert envelope.trace_id == f"trace-p{i}", "the trace id follows the prompt"
    assert (stats.samples, stats.dead_lettered, stats.duplicates) == (12, 0, 0)
    assert (REGISTRY.get_sample_value("cutalign_generator_samples_total") or 0.0) - before == 12


def test_bad_prompts_are_dead_lettered_with_their_reason_and_duplicates_skipped(
    kafka_settings: KafkaSettings, unique_name: str, server: PolicyServerProcess
) -> None:
    provision_topics(kafka_settings)
    prompts = [
        prompt("ok", "Say hi."),
        prompt("empty", ""),
        prompt("blank", " \n\t "),
        prompt("long", "w" * 400),  # formatted > max_prompt_chars
        prompt("context", "v" * 350),  # within max_prompt_chars, but over the model's 512-token context
        messages_pb2.Prompt(id="later", instruction="Say bye.", iteration=7),  # another iteration's prompt
        prompt("ok", "Say hi."),  # redelivered / duplicated upstream
    ]
    publish(kafka_settings, prompts)
    policy = PolicySettings(url=server.url, max_new_tokens=200, max_prompt_chars=520, max_retries=1)
    generator = GeneratorSettings(group_id=unique_name, iteration=1, batch_size=16)
    running = Running(kafka_settings, policy, generator)
    letters = {e.key: e.message for e in drain(kafka_settings, kafka_settings.topic_deadletter,
                                               training_pb2.DeadLetter, 5)}  # fmt: skip
    samples = drain(kafka_settings, kafka_settings.topic_samples, messages_pb2.Sample, 1, timeout_s=10)
    stats = running.finish()

    assert [e.key for e in samples] == ["ok#0"]
    assert {k: v.reason for k, v in letters.items()} == {
        "empty": "empty_prompt",
        "blank": "empty_prompt",
        "long": "prompt_too_long",
        "context": "policy_rejected",
        "later": "iteration_mismatch",
    }
    assert "set policy.truncate_long_prompts to truncate instead" in letters["long"].detail
    assert "HTTP 400" in letters["context"].detail and "context of 512 tokens" in letters["context"].detail
    assert letters["empty"].service == "generator" and letters["empty"].original_key == b"empty"
    assert messages_pb2.Prompt.FromString(letters["later"].original_value).iteration == 7
    assert (stats.samples, stats.dead_lettered, stats.duplicates) == (1, 5, 1)


def test_over_long_prompts_are_truncated_and_recorded_when_configured(
    kafka_settings: KafkaSettings, unique_name: str, server: PolicyServerProcess, offline: LoadedPolicy
) -> None:
    provision_topics(kafka_settings)
    long = prompt("long", "Repeat: " + "abc " * 100)
    publish(kafka_settings, [long])
    policy = PolicySettings(
        url=server.url, max_new_tokens=8, max_prompt_chars=300, truncate_long_prompts=True
    )
    running = Running(kafka_settings, policy, GeneratorSettings(group_id=unique_name, iteration=1))
    [envelope] = drain(kafka_settings, kafka_settings.topic_samples, messages_pb2.Sample, 1)
    running.finish()

    sample = envelope.message
    assert sample.prompt_truncated and sample.prompt == long, (
        "the original prompt is kept; the cut is recorded"
    )
    template = get_template("plain")
    sent = template.plain.format(instruction=long.instruction[: 300 - len(template.format_plain(""))])
    assert len(sent) == 300 and sent.endswith("### Response:\n")
    assert (
        sample.response
        == generate(offline.model, offline.tokenizer, [sent], SamplingParams(max_new_tokens=8))[0].text
    )


def test_generator_refuses_to_generate_from_anything_but_the_expected_policy(
    kafka_settings: KafkaSettings,
    unique_name: str,
    server: PolicyServerProcess,
    checkpoints: tuple[Path, Path],
    store: ArtifactStore,
) -> None:
    a, b = checkpoints
    provision_topics(kafka_settings)
    refusals = REGISTRY.get_sample_value("cutalign_generator_version_refusals_total") or 0.0
    publish(kafka_settings, [prompt("p0", "Say hi.")])
    on_a = GeneratorSettings(group_id=unique_name, iteration=1, expected_policy_sha256=dir_sha256(a))
    running = Running(kafka_settings, PolicySettings(url=server.url, max_new_tokens=4), on_a)
    [first] = drain(kafka_settings, kafka_settings.topic_samples, messages_pb2.Sample, 1)
    assert first.message.policy.checkpoint_sha256 == dir_sha256(a)
    try:
        # iteration 1's candidate is promoted and the server hot-reloads it, mid-run
        release = build_release(b, uri=str(b), iteration=1, model_id="tiny-b")
        promote(store, release)
        load = {"uri": str(b), "iteration": 1, "model_id": "tiny-b", "expected_sha256": dir_sha256(b)}
        assert admin_load(server, load)[0] == 200
        publish(kafka_settings, [prompt("p1", "Say bye.")])
        running.thread.join(60)
        with pytest.raises(PolicyVersionMismatch) as info:
            running.finish()
        assert dir_sha256(a) in str(info.value) and dir_sha256(b) in str(info.value), "names both versions"
        assert "CUTALIGN_GENERATOR_EXPECTED_POLICY_SHA256" in str(info.value)

        # a generator still configured with the old policy refuses before consuming anything
        with pytest.raises(PolicyVersionMismatch):
            run(kafka_settings, PolicySettings(url=server.url), on_a, threading.Event())
        assert REGISTRY.get_sample_value("cutalign_generator_version_refusals_total") == refusals + 2

        # p1 was neither published nor committed: the generator configured for the served policy gets it
        on_b = GeneratorSettings(group_id=unique_name, iteration=1, expected_policy_sha256=dir_sha256(b))
        running = Running(kafka_settings, PolicySettings(url=server.url, max_new_tokens=4), on_b)
        samples = drain(kafka_settings, kafka_settings.topic_samples, messages_pb2.Sample, 2)
        running.finish()
    finally:
        admin_load(server, {"uri": str(a), "model_id": "tiny-a"})
    assert sorted(e.key for e in samples) == ["p0#0", "p1#0"], "p1 generated once, by the expected policy"
    second = next(e.message for e in samples if e.key == "p1#0")
    assert (second.policy.checkpoint_sha256, second.policy.iteration) == (dir_sha256(b), 1)


def test_without_a_configured_sha_it_follows_promoted_releases_and_each_prompts_iteration(
    kafka_settings: KafkaSettings,
    unique_name: str,
    server: PolicyServerProcess,
    checkpoints: tuple[Path, Path],
    store: ArtifactStore,
) -> None:
    a, b = checkpoints
    provision_topics(kafka_settings)
    publish(kafka_settings, [prompt("p0", "Say hi.")])
    follow = GeneratorSettings(group_id=unique_name, batch_size=4)  # iteration 0: follow the prompts
    assert follow.iteration == 0 and follow.expected_policy_sha256 is None, "following is the default"
    running = Running(kafka_settings, PolicySettings(url=server.url, max_new_tokens=4), follow, store)
    try:
        [first] = drain(kafka_settings, kafka_settings.topic_samples, messages_pb2.Sample, 1)
        # before any release the generator pins what is served: the base policy a
        assert (first.message.policy.checkpoint_sha256, first.message.iteration) == (dir_sha256(a), 1)

        # iteration 1 promotes b, the server hot-reloads it; iteration 2's prompts come from b, no restart
        promote(store, build_release(b, uri=str(b), iteration=1, model_id="tiny-b"))
        load = {"uri": str(b), "iteration": 1, "model_id": "tiny-b", "expected_sha256": dir_sha256(b)}
        assert admin_load(server, load)[0] == 200
        publish(kafka_settings, [messages_pb2.Prompt(id="p1", instruction="Say bye.", iteration=2)])
        got = drain(kafka_settings, kafka_settings.topic_samples, messages_pb2.Sample, 2)
        [second] = [e for e in got if e.key == "p1#0"]
        assert running.thread.is_alive()
        assert (second.message.policy.checkpoint_sha256, second.message.iteration) == (dir_sha256(b), 2)

        # the server goes back to a, which no release names: the generator refuses to generate from it
        assert admin_load(server, {"uri": str(a), "model_id": "tiny-a"})[0] == 200
        publish(kafka_settings, [messages_pb2.Prompt(id="p2", instruction="Say hi.", iteration=2)])
        running.thread.join(60)
        with pytest.raises(PolicyVersionMismatch) as info:
            running.finish()
        assert dir_sha256(b) in str(info.value) and "promoted release" in str(info.value)
    finally:
        admin_load(server, {"uri": str(a), "model_id": "tiny-a"})
        running.stop.set()


@pytest.mark.slow
def test_server_down_prompts_are_retried_then_dead_lettered_and_the_generator_keeps_going(
    kafka_settings: KafkaSettings, unique_name: str, checkpoints: tuple[Path, Path]
) -> None:
    provision_topics(kafka_settings)
    policy_server = start_policy_server(checkpoints[0], torch_threads=1)
    policy = PolicySettings(url=policy_server.url, max_new_tokens=4, max_retries=2, retry_backoff_s=0.05)
    running = Running(kafka_settings, policy, GeneratorSettings(group_id=unique_name, iteration=1))
    try:
        running.wait_ready()
        publish(kafka_settings, [prompt("before", "Say hi.")])
        assert [
            e.key for e in drain(kafka_settings, kafka_settings.topic_samples, messages_pb2.Sample, 1)
        ] == ["before#0"]
        policy_server.stop()
        publish(kafka_settings, [prompt("during-1", "Say hi."), prompt("during-2", "Say bye.")])
        letters = drain(kafka_settings, kafka_settings.topic_deadletter, training_pb2.DeadLetter, 2)
        assert running.thread.is_alive(), "a down server is not a reason to crash"
    finally:
        policy_server.stop()
        stats = running.finish()
    assert sorted(e.key for e in letters) == ["during-1", "during-2"]
    for envelope in letters:
        assert envelope.message.reason == "policy_unavailable"
        assert "after 3 attempt(s)" in envelope.message.detail and "ConnectError" in envelope.message.detail
    assert (stats.samples, stats.dead_lettered) == (1, 2)


@pytest.mark.slow
def test_sigkill_mid_stream_and_restart_yields_every_prompt_exactly_once_by_sample_id(
    kafka_settings: KafkaSettings, unique_name: str, server: PolicyServerProcess, env_for: dict[str, str]
) -> None:
    provision_topics(kafka_settings)
    n, batch = 150, 4
    publish(kafka_settings, [prompt(f"p{i:03d}", f"Spell the number {i}.") for i in range(n)])
    port = free_port()
    env = {**env_for, "CUTALIGN_POLICY_URL": server.url, "CUTALIGN_POLICY_MAX_NEW_TOKENS": "24",
           "CUTALIGN_GENERATOR_GROUP_ID": unique_name, "CUTALIGN_GENERATOR_BATCH_SIZE": str(batch),
           "CUTALIGN_GENERATOR_HTTP_PORT": str(port), "CUTALIGN_GENERATOR_ITERATION": "1",
           "OMP_NUM_THREADS": "1"}  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "cutalign.generator.service"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip

    seen: dict[str, list[messages_pb2.Sample]] = {}
    samples_topic = [kafka_settings.topic_samples]
    with TypedConsumer(kafka_settings, group_id=f"{unique_name}-reader", topics=samples_topic,
                       message_type=messages_pb2.Sample, service="test") as reader:  # fmt: skip

        def read_until(done: Any, timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while not done() and time.monotonic() < deadline:
                for e in reader.poll_batch(500, 0.1):
                    seen.setdefault(e.key, []).append(e.message)

        first = start()
        read_until(lambda: len(seen) >= 2 * batch, 60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = len(seen)
        assert 0 < killed_at < n, "the generator must be killed mid-stream"

        second = start()
        read_until(lambda: len(seen) == n, 120)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert "cutalign_generator_samples_total" in r.read().decode()
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, second.stderr.read().decode()[-2000:] if second.stderr else ""
        read_until(lambda: False, 1.0)  # anything still in flight

    assert sorted(seen) == [f"p{i:03d}#0" for i in range(n)], "no prompt lost"
    duplicated = {k: v for k, v in seen.items() if len(v) > 1}
    assert sum(len(v) - 1 for v in duplicated.values()) <= batch, "at most the batch in flight at the kill"
    for copies in duplicated.values():
        assert len({c.response for c in copies}) == 1, "a regenerated sample is the same sample"
