"""Crash safety: a builder process SIGKILLed at random points while 10,000 judgments stream through.

After the restarts the sealed iteration must hold every valid judgment exactly once (read back from the
shards, checksums verified), no invalid one, and every invalid one must be on the dead-letter topic.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from builder_support import committed, dead_letters, judgment, wait_committed
from cutalign.builder import read_sealed_examples, seal_iteration
from cutalign.builder.shards import list_shard_manifests
from cutalign.bus import TypedProducer, provision_topics
from cutalign.config import BuilderSettings, KafkaSettings
from cutalign.store import ArtifactStore
from cutalign.v1 import messages_pb2

ENTRY = ["-m", "cutalign.builder.service"]  # the image's command (python -m), as the chart runs it
TOTAL, VALID, DUPLICATES = 10_000, 8_500, 1_000
INVALID_KINDS = {
    "error": "error_judgment",
    "empty": "empty_response",
    "truncated": "decode_error",
    "utf8": "invalid_utf8",
    "polarity": "unknown_polarity",
}


def _stream(rng: random.Random) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """(key, value) in production order, and the expected reason of every invalid key."""
    valid = [(f"p{i}#0", judgment(i, positive=i % 3 == 0).SerializeToString()) for i in range(VALID)]
    invalid: list[tuple[str, bytes]] = []
    expected: dict[str, str] = {}
    kinds = list(INVALID_KINDS)
    for k in range(TOTAL - VALID - DUPLICATES):
        kind = kinds[k % len(kinds)]
        message = judgment(VALID + k, positive=False)
        value = message.SerializeToString()
        if kind == "error":
            message.text = "$ERROR$"
        elif kind == "empty":
            message.sample.response = ""
        elif kind == "polarity":
            message.polarity = messages_pb2.POLARITY_UNSPECIFIED
        if kind in ("error", "empty", "polarity"):
            value = message.SerializeToString()
        elif kind == "truncated":
            value = value[: len(value) // 2]
        else:
            value = value.replace(b"Count from", b"Count \xe2\x28om")
        key = f"bad-{kind}-{k}"
        invalid.append((key, value))
        expected[key] = INVALID_KINDS[kind]
    messages = valid + invalid + rng.choices(valid, k=DUPLICATES)
    rng.shuffle(messages)
    return messages, expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen, log: Path) -> None:
    """Until ``/readyz`` answers 200 (the SIGTERM handler is installed by then)."""
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, (
            f"builder not ready:\n{log.read_text()[-3000:]}"
        )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def _builder(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as sink:
        return subprocess.Popen([sys.executable, *ENTRY], env=env, stderr=sink, stdout=sink)


@pytest.mark.slow
def test_sigkilled_builder_yields_every_valid_judgment_exactly_once(
    kafka_settings: KafkaSettings,
    store: ArtifactStore,
    unique_name: str,
    env_for: dict[str, str],
    tmp_path: Path,
) -> None:
    provision_topics(kafka_settings)
    rng = random.Random(20240607)
    messages, expected_reasons = _stream(rng)
    env = {
        **env_for,
        "CUTALIGN_KAFKA_SESSION_TIMEOUT_MS": "3000",  # a killed member leaves the group sooner
        "CUTALIGN_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "CUTALIGN_BUILDER_GROUP_ID": unique_name,
        "CUTALIGN_BUILDER_HTTP_PORT": "0",
        "CUTALIGN_BUILDER_SHARD_MAX_EXAMPLES": "150",
        "CUTALIGN_BUILDER_SHARD_MAX_SECONDS": "0.2",
    }
    log = tmp_path / "builder.log"

    def produce() -> None:
        with TypedProducer(kafka_settings, service="test") as producer:
            for start in range(0, TOTAL, 500):
                for key, value in messages[start : start + 500]:
                    producer.send_raw(kafka_settings.topic_judgments, value, key, "cutalign.v1.Judgment")
                producer.flush()
                time.sleep(0.3)

    producer = threading.Thread(target=produce)
    producer.start()
    kills = 0
    try:
        for _ in range(4):
            shards, done = len(list_shard_manifests(store, 1)), committed(kafka_settings, unique_name)
            proc = _builder(env, log)
            deadline = time.monotonic() + 30
            while True:  # wait until it is building (or has nothing left to build), then kill it mid-work
                assert proc.poll() is None, f"builder exited early:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"builder made no progress:\n{log.read_text()[-3000:]}"
                now = committed(kafka_settings, unique_name)
                if len(list_shard_manifests(store, 1)) > shards or now > done or now == TOTAL:
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.8))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        producer.join()
        port = _free_port()
        proc = _builder({**env, "CUTALIGN_BUILDER_HTTP_PORT": str(port)}, log)
        _wait_ready(port, proc, log)
        wait_committed(kafka_settings, unique_name, TOTAL)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, f"no clean exit on SIGTERM:\n{log.read_text()[-3000:]}"
    finally:
        producer.join()
        if proc.poll() is None:
            proc.kill()

    manifest = seal_iteration(store, BuilderSettings(), 1, sealed_by="test")
    examples = read_sealed_examples(store, manifest)  # every shard's sha256 verified
    ids = [e.sample_id for e in examples] + list(manifest.excluded_sample_ids)
    assert kills == 4
    assert len(ids) == len(set(ids)) == VALID
    assert set(ids) == {f"p{i}#0" for i in range(VALID)}
    assert sum(manifest.counts_before_downsampling.values()) == VALID

    letters = dead_letters(kafka_settings)
    reasons = {d.original_key.decode(): d.reason for d in letters}  # a redelivered one may appear twice
    missing = sorted(set(expected_reasons) - set(reasons))
    assert not missing, f"{len(missing)} invalid judgment(s) not dead-lettered: {missing[:20]}"
    assert reasons == expected_reasons
