"""Builder scale-out: judgments/s of 1 and of 2 target builder processes in one consumer group, 4 partitions.

Each run consumes the same ``N`` judgments (4 partitions, written once) with a fresh group and bucket; the
builders are the real service processes (``python -m cutalign.builder.service``). The rate is steady state:
from the first committed offset to the last (the group join is not counted), read from the group's committed
offsets. Goal: 2 builders near 2x one. On a shared 2-core machine the broker, the store and both builders
compete for the same cores, so expect less; the figure printed is what this machine gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from benchmarks.bench_builder import _judgment
from cutalign.bus import TypedProducer, provision_topics
from cutalign.config import KafkaSettings
from cutalign.platform import LocalPlatform
from cutalign.store import ArtifactStore

N = 60_000
PARTITIONS = 4
ENTRY = ["-m", "cutalign.builder.service"]  # what the image runs


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp, LocalPlatform.ephemeral(Path(tmp)) as platform:
        kafka = platform.kafka_settings.model_copy(
            update={"topic_judgments": f"scaleout-{uuid.uuid4().hex[:6]}", "partitions": PARTITIONS}
        )
        provision_topics(kafka, [kafka.topic_judgments])
        with TypedProducer(kafka, service="bench") as producer:
            for i in range(N):
                j = _judgment(i)
                producer.send(kafka.topic_judgments, j, key=j.sample.id)
        rates = {builders: _rate(platform, kafka, builders, Path(tmp)) for builders in (1, 2)}
    print(f"{N} judgments, {PARTITIONS} partitions, builder processes in one group, Tansu + SeaweedFS")
    for builders, rate in rates.items():
        print(f"{builders} builder(s)  {rate:9.0f} judgments/s")
    print(f"ratio 2 builders / 1 builder: {rates[2] / rates[1]:.2f}x (goal near 2x)")


def _committed(kafka: KafkaSettings, group: str) -> int:
    probe = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        parts = [TopicPartition(kafka.topic_judgments, p) for p in range(PARTITIONS)]
        return sum(max(tp.offset, 0) for tp in probe.committed(parts, timeout=10))
    finally:
        probe.close()


def _rate(platform: LocalPlatform, kafka: KafkaSettings, builders: int, tmp: Path) -> float:
    group = f"scaleout-{builders}-{uuid.uuid4().hex[:6]}"
    bucket = group
    ArtifactStore(platform.s3, bucket=bucket).ensure_bucket()
    access, secret = platform.s3.credentials()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUTALIGN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CUTALIGN_KAFKA_TOPIC_JUDGMENTS": kafka.topic_judgments,
        "CUTALIGN_S3_ENDPOINT": platform.s3.endpoint,
        "CUTALIGN_S3_ACCESS_KEY": access,
        "CUTALIGN_S3_SECRET_KEY": secret,
        "CUTALIGN_S3_BUCKET": bucket,
        "CUTALIGN_BUILDER_GROUP_ID": group,
        "CUTALIGN_BUILDER_HTTP_PORT": "0",
        "CUTALIGN_BUILDER_HTTP_HOST": "127.0.0.1",
        "CUTALIGN_BUILDER_ADMIN_TOKEN": "bench",
        "CUTALIGN_BUILDER_SHARD_MAX_SECONDS": "1.0",
    }
    logs = [open(tmp / f"{group}-{k}.log", "wb") for k in range(builders)]  # noqa: SIM115 - closed below
    procs = [subprocess.Popen([sys.executable, *ENTRY], env=env, stdout=log, stderr=log) for log in logs]
    try:
        first, started = 0, 0.0
        deadline = time.monotonic() + 600
        while (done := _committed(kafka, group)) < N:
            if done and not first:
                first, started = done, time.perf_counter()
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{builders} builder(s) committed {done} of {N}; logs in {tmp}")
            time.sleep(0.05)
        return (N - first) / (time.perf_counter() - started)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(60)
        for log in logs:
            log.close()
