"""Judging throughput: the judge service vs calling the same judge in a plain loop, and feedback ingestion.

* service overhead: judgments/s of the Kafka judge service (consume, judge, publish, flush, commit) with the
  guarded counting judge, against ``run_judge`` over the same samples in a loop — same judge, same run;
* an I/O-bound judge (5 ms per call, like a remote LLM): the service's concurrent calls against the loop;
* ingestion: accepted ``POST /v1/feedback`` requests/s on loopback (each acknowledged by the broker before
  its 202), against ``GET /healthz`` on the same server with the same client (the HTTP floor).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import REGISTRY

from cutalign.bus import TypedProducer, provision_topics
from cutalign.config import JudgeSettings, KafkaSettings
from cutalign.judges.base import Judge, run_judge
from cutalign.judges.loader import judge_from_settings
from cutalign.judging import service
from cutalign.platform import LocalPlatform
from cutalign.policy.launcher import free_port
from cutalign.v1 import messages_pb2

N_FAST = 10_000
N_SLOW = 400
N_HTTP = 1_500


class SlowJudge:
    """The counting judge behind a 5 ms wait, standing in for a remote LLM call."""

    id = "slow-counting"

    def __init__(self, inner: Judge) -> None:
        self.inner = inner

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Any:
        time.sleep(0.005)
        return self.inner.judge(instruction, response, reference)


def _sample(i: int) -> messages_pb2.Sample:
    start = i % 90
    numbers = [str(start + k) for k in range(10)]
    if i % 3 == 0:
        numbers[4] = str(start + 7)  # a wrong number in a third of the responses
    prompt = messages_pb2.Prompt(id=f"p{i}", instruction=f"Count from {start} to {start + 9}.", iteration=1)
    return messages_pb2.Sample(id=f"p{i}#0", prompt=prompt, response=" ".join(numbers), iteration=1)


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp, LocalPlatform.ephemeral(Path(tmp)) as platform:
        _judging(platform.kafka_settings)
        _ingestion(platform.kafka_settings)


def _loop_rate(judge: Judge, samples: list[messages_pb2.Sample], repeats: int) -> float:
    """Best of ``repeats`` plain loops: the baseline at its fastest, so overhead is never understated."""
    inputs = [service.judge_input(s) for s in samples]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in inputs:
            run_judge(judge, item.instruction, item.response, item.reference)
        best = min(best, time.perf_counter() - start)
    return len(inputs) / best


def _service_rate(
    base: KafkaSettings, judge: Judge, samples: list[messages_pb2.Sample], concurrency: int, batch_size: int
) -> float:
    """Judgments/s of the service in steady state: from its first committed batch to its last (so the
    consumer group join is not counted)."""
    name = f"bench-{uuid.uuid4().hex[:6]}"
    kafka = base.model_copy(
        update={f"topic_{t}": f"{name}.{t}" for t in ("prompts", "samples", "judgments", "deadletter")}
    )
    provision_topics(kafka)
    with TypedProducer(kafka, service="bench") as producer:
        for s in samples:
            producer.send(kafka.topic_samples, s, key=s.id)
    judge_id = f"{name}-judge"
    settings = JudgeSettings(
        judge_id=judge_id, group_id=name, http_port=0, batch_size=batch_size, concurrency=concurrency
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=service.run, args=(kafka, settings), kwargs={"stop_event": stop, "judge": judge}
    )
    thread.start()

    def published() -> float:
        return sum(
            REGISTRY.get_sample_value("cutalign_judge_judgments_total", {"judge": judge_id, "polarity": p})
            or 0.0
            for p in ("positive", "negative")
        )

    first_count, first_at = 0.0, 0.0
    deadline = time.monotonic() + 120
    while published() < len(samples) and thread.is_alive() and time.monotonic() < deadline:
        count = published()
        if count and not first_count:
            first_count, first_at = count, time.perf_counter()
        time.sleep(0.002)
    elapsed = time.perf_counter() - first_at
    stop.set()
    thread.join()
    if published() < len(samples):
        raise RuntimeError(f"the service judged only {published():.0f} of {len(samples)} samples")
    return (len(samples) - first_count) / elapsed


def _judging(kafka: KafkaSettings) -> None:
    judge = judge_from_settings(JudgeSettings(judge="counting"))  # guarded, as deployed
    fast = [_sample(i) for i in range(N_FAST)]
    loop = _loop_rate(judge, fast, repeats=3)
    service_1 = _service_rate(kafka, judge, fast, concurrency=1, batch_size=500)
    service_4 = _service_rate(kafka, judge, fast, concurrency=4, batch_size=500)
    print(f"counting judge (guarded), {N_FAST} samples, Tansu memory storage, loopback")
    print(f"  plain loop         {loop:8.0f} judgments/s")
    for calls, rate in ((1, service_1), (4, service_4)):
        ratio = loop / rate
        print(f"  service, {calls} call(s) {rate:8.0f} judgments/s | overhead ratio loop/service {ratio:.2f}")

    slow_judge = SlowJudge(judge)
    slow = fast[:N_SLOW]
    slow_loop = _loop_rate(slow_judge, slow, repeats=1)
    slow_service = _service_rate(kafka, slow_judge, slow, concurrency=4, batch_size=40)
    print(f"I/O-bound judge (5 ms/call), {N_SLOW} samples")
    print(f"  plain loop         {slow_loop:8.0f} judgments/s")
    speedup = slow_service / slow_loop
    print(f"  service, 4 call(s) {slow_service:8.0f} judgments/s | speed-up service/loop {speedup:.2f}")


def _ingestion(base: KafkaSettings) -> None:
    kafka = base.model_copy(update={"topic_judgments": f"bench-{uuid.uuid4().hex[:6]}.judgments"})
    provision_topics(kafka, [kafka.topic_judgments])
    sha = hashlib.sha256(b"bench policy").hexdigest()
    port, token = free_port(), uuid.uuid4().hex
    env = {
        **os.environ,
        "CUTALIGN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CUTALIGN_KAFKA_TOPIC_JUDGMENTS": kafka.topic_judgments,
        "CUTALIGN_FEEDBACK_TOKEN": token,
        "CUTALIGN_FEEDBACK_USER_HASH_SALT": uuid.uuid4().hex,
        "CUTALIGN_FEEDBACK_KNOWN_POLICY_VERSIONS": json.dumps([sha]),
        "CUTALIGN_FEEDBACK_RATE_LIMIT_PER_S": "1000000",
        "CUTALIGN_FEEDBACK_RATE_LIMIT_BURST": "1000000",
        "CUTALIGN_FEEDBACK_HOST": "127.0.0.1",
        "CUTALIGN_FEEDBACK_PORT": str(port),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "cutalign.feedback.app"], env=env, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, limits=httpx.Limits(max_connections=16)) as client:

            def post(i: int) -> int:
                event = {
                    "instruction": f"Count from {i} to {i + 3}.",
                    "response": f"{i} {i + 1} {i + 3}",
                    "feedback": f"It skips {i + 2}.",
                    "positive": False,
                    "source": "bench",
                    "policy_version": sha,
                    "user_id": f"user-{i % 50}",
                    "event_id": f"e{i}",
                }
                return client.post("/v1/feedback", json=event).status_code

            def health(_: int) -> int:
                return client.get("/healthz").status_code

            rates = {}
            for name, fn in (("healthz", health), ("feedback", post)):
                with ThreadPoolExecutor(16) as pool:
                    start = time.perf_counter()
                    codes = list(pool.map(fn, range(N_HTTP)))
                    rates[name] = N_HTTP / (time.perf_counter() - start)
                expected = 202 if name == "feedback" else 200
                if set(codes) != {expected}:
                    raise RuntimeError(f"{name}: unexpected statuses {sorted(set(codes))}")
    finally:
        server.terminate()
        server.wait(30)
    print(f"feedback ingestion, {N_HTTP} requests, 16 concurrent clients, loopback (uvicorn, 1 process)")
    print(f"  GET /healthz       {rates['healthz']:8.0f} requests/s (HTTP floor)")
    print(
        f"  POST /v1/feedback  {rates['feedback']:8.0f} requests/s (each acknowledged by the broker) | "
        f"ratio {rates['feedback'] / rates['healthz']:.2f}"
    )


def _wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the feedback server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise RuntimeError("the feedback server did not become ready in 30 s")


if __name__ == "__main__":
    run()
