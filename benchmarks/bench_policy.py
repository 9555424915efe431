"""Policy serving throughput: dynamic batching vs one request at a time, and the generator against the server.

1. The embedded KServe policy server (the demo's model shape, ~1.1 M parameters) answers the same prompts
   (a) one request at a time and (b) with 16 requests in flight, which its batcher decodes together:
   generated tokens/s of each and the ratio (b)/(a).
2. The generator service end to end — Kafka prompts in, policy calls, Samples published and committed — in
   samples/s, against the server's raw request rate from (b) with the same prompts and concurrency.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from cutalign.bus import TypedConsumer, TypedProducer, provision_topics
from cutalign.config import GeneratorSettings, KafkaSettings, PolicySettings
from cutalign.generator.service import run as run_generator
from cutalign.modelinit import ModelShape, init_model
from cutalign.platform import LocalPlatform
from cutalign.policy.client import Completion, PolicyClient
from cutalign.policy.launcher import PolicyServerProcess, start_policy_server
from cutalign.templates import get_template
from cutalign.v1 import messages_pb2

N_PROMPTS = 48
N_GENERATOR = 96
MAX_NEW_TOKENS = 32
IN_FLIGHT = 16
CORPUS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!#+-=\n"


def _instructions(n: int, offset: int = 0) -> list[str]:
    return [
        f"Count from {(i + offset) % 50} to {(i + offset) % 50 + 7}, separated by commas." for i in range(n)
    ]


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "policy"
        init_model(CORPUS, model, ModelShape(), seed=0)
        with start_policy_server(
            model, torch_threads=1, max_batch_size=IN_FLIGHT, max_batch_wait_ms=5
        ) as server:
            raw_rps = _server(server)
            with LocalPlatform.ephemeral(Path(tmp) / "platform") as platform:
                _generator(server, platform.kafka_settings, raw_rps)


def batch_rows(url: str) -> tuple[float, float]:
    """(rows decoded, batches decoded) so far, from the server's Prometheus metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = re.search(r"^cutalign_policy_batch_rows_sum (\S+)$", text, re.M)
    count = re.search(r"^cutalign_policy_batch_rows_count (\S+)$", text, re.M)
    return (float(total.group(1)) if total else 0.0), (float(count.group(1)) if count else 0.0)


def _tokens_per_s(client: PolicyClient, prompts: list[str], concurrent: bool) -> tuple[float, float]:
    start = time.perf_counter()
    if concurrent:
        results = client.complete_many([(p, 0) for p in prompts])
    else:
        results = [client.complete(p) for p in prompts]
    elapsed = time.perf_counter() - start
    tokens = sum(r.generated_tokens for r in results if isinstance(r, Completion))
    assert len([r for r in results if isinstance(r, Completion)]) == len(prompts), "a request failed"
    return tokens / elapsed, len(prompts) / elapsed


def _server(server: PolicyServerProcess) -> float:
    template = get_template("plain")
    prompts = [template.format_plain(i) for i in _instructions(N_PROMPTS)]
    settings = PolicySettings(url=server.url, max_new_tokens=MAX_NEW_TOKENS, max_in_flight=IN_FLIGHT)
    with PolicyClient(settings) as client:
        client.complete_many([(p, 0) for p in prompts[:IN_FLIGHT]])  # warm-up: first-call allocations
        one_tps, one_rps = _tokens_per_s(client, prompts, concurrent=False)
        rows_before = batch_rows(server.url)
        many_tps, many_rps = _tokens_per_s(client, prompts, concurrent=True)
        rows_after = batch_rows(server.url)
    mean_rows = (rows_after[0] - rows_before[0]) / max(1.0, rows_after[1] - rows_before[1])
    print(f"policy server: {ModelShape()}")
    print(f"{N_PROMPTS} plain-template prompts (~150 tokens) x {MAX_NEW_TOKENS} new tokens, greedy, 1 thread")
    print(f"one request at a time  {one_tps:8.0f} generated tok/s | {one_rps:6.1f} req/s")
    print(
        f"{IN_FLIGHT} in flight (batched) {many_tps:8.0f} generated tok/s | {many_rps:6.1f} req/s "
        f"| mean batch {mean_rows:.1f} rows"
    )
    print(f"batching speed-up      {many_tps / one_tps:8.2f} x")
    return many_rps


def _generator(server: PolicyServerProcess, base: KafkaSettings, raw_rps: float) -> None:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    kafka = base.model_copy(
        update={
            "topic_prompts": f"{name}.prompts",
            "topic_samples": f"{name}.samples",
            "topic_deadletter": f"{name}.deadletter",
            "topic_judgments": f"{name}.judgments",
        }
    )
    provision_topics(kafka)
    policy = PolicySettings(url=server.url, max_new_tokens=MAX_NEW_TOKENS, max_in_flight=IN_FLIGHT)
    generator = GeneratorSettings(group_id=name, iteration=1, batch_size=32, poll_timeout_s=0.2, http_port=0)
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=run_generator, args=(kafka, policy, generator, stop), kwargs={"ready": ready}
    )
    thread.start()
    with (
        TypedProducer(kafka, service="bench") as producer,
        TypedConsumer(
            kafka,
            group_id=f"{name}-reader",
            topics=[kafka.topic_samples],
            message_type=messages_pb2.Sample,
            service="bench",
        ) as reader,
    ):

        def publish(instructions: list[str], prefix: str) -> None:
            for i, text in enumerate(instructions):
                p = messages_pb2.Prompt(id=f"{prefix}{i}", instruction=text, iteration=1)
                producer.send(kafka.topic_prompts, p, key=p.id)
            producer.flush()

        def wait_for(count: int) -> None:
            got = 0
            while got < count:
                got += len(reader.poll_batch(500, 0.2))

        ready.wait(60)
        publish(_instructions(8, offset=100), "warm")  # group joins and first calls happen here
        wait_for(8)
        start = time.perf_counter()
        publish(_instructions(N_GENERATOR), "p")
        wait_for(N_GENERATOR)
        elapsed = time.perf_counter() - start
    stop.set()
    thread.join(60)
    sps = N_GENERATOR / elapsed
    print(
        f"generator end to end   {sps:8.1f} samples/s ({N_GENERATOR} prompts: Kafka -> policy -> Kafka, "
        f"commit per batch of {generator.batch_size}, {IN_FLIGHT} calls in flight)"
    )
    print(f"server raw rate        {raw_rps:8.1f} req/s -> generator/server ratio {sps / raw_rps:.2f}")
