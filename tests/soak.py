"""``make soak``: ~10 minutes of a mixed stream through every service while they are killed, ending in counts.

The stream (every input has an id, so every one can be accounted for at the end):

* valid prompts (``v-N``) through the generator (a real policy server with a tiny random model), two judge
  services and two target builders, each pair one consumer group over four partitions; valid production
  feedback (``fb-...``) through the feedback API; duplicates of both (prompts re-sent, feedback retried);
* invalid input: empty and oversize prompts, raw messages without schema headers or of another type, samples
  whose judge call hangs, fails, answers 300 KB of text or a float span, judgments that cannot be trained on
  (an error marker, no polarity, bytes that are not UTF-8) written straight to the judgments topic, and
  feedback the API refuses (4xx: never in the stream);
* faults: a SIGKILL of one service every ~35 s, each restarted after 0.5-3 s (as Kubernetes would), in
  rounds that kill every service once before any twice; one store restart and one broker restart (Tansu
  persists into the store); the open iteration sealed every ~2.5 min through a builder's ``POST /seal``.

At the end the open iteration is sealed and every sealed iteration read back (checksums verified). Printed:
``valid lost`` (a valid input in no sealed iteration), ``valid duplicated`` (a valid input trained on more
than once) and ``invalid without a dead letter`` (an invalid stream input with no dead-letter record) — each
must be 0; the exit status says whether they were.

    .venv/bin/python tests/soak.py [--duration-s 600] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confluent_kafka import Producer

from builder_support import judgment  # the script's directory (tests/) is first on sys.path
from cutalign.builder import read_sealed_examples
from cutalign.builder.shards import decode_shard
from cutalign.bus import TypedProducer, provision_topics
from cutalign.bus.config import client_config
from cutalign.platform import LocalPlatform
from cutalign.policy.launcher import free_port, start_policy_server
from cutalign.store import ArtifactStore, ObjectMissing, layout
from cutalign.v1 import messages_pb2, training_pb2
from fault_support import JUDGE, read_topic
from policy_support import tiny_policy

log = logging.getLogger("soak")

TOKEN, ADMIN, SALT = "soak-feedback-token", "soak-builder-admin-token", "soak-salt-0123456789abcdef"
MAX_TEXT_BYTES = 64 * 1024
SERVICES = ("generator", "judge-a", "judge-b", "builder-a", "builder-b", "feedback")
# re-sent prompts are among the last RESEND_REACH sent (about one iteration here): within the builder's
# dedupe window of sealed iterations (builder.dedupe_iterations); a re-send older than that trains again
RESEND_REACH = 500


@dataclass
class Service:
    """One service as a subprocess that can be SIGKILLed and started again, like a pod."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as sink:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=sink, stderr=sink)

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


@dataclass
class Ledger:
    """What the soak sent, by id: what must end in training data, what must end in a dead letter."""

    valid: set[str] = field(default_factory=set)
    invalid: dict[str, str] = field(default_factory=dict)  # id -> the kind of fault
    refused_by_api: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    feedback_retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Soak:
    def __init__(self, root: Path, duration_s: float, seed: int) -> None:
        self.root, self.duration_s, self.rng = root, duration_s, random.Random(seed)
        self.ledger = Ledger()
        self.platform = LocalPlatform.ephemeral(root / "platform")
        self.platform.storage = "s3"  # the broker persists into the store: both restart without loss
        self.events: list[str] = []
        self.iteration = 1
        self.seals = 0

    # -- setting up ------------------------------------------------------------------------------------------

    def run(self) -> int:
        with self.platform:
            self.kafka = self.platform.kafka_settings.model_copy(
                update={f"topic_{t}": f"soak.{t}" for t in ("prompts", "samples", "judgments", "deadletter")}
                | {"partitions": 4}
            )
            provision_topics(self.kafka)
            self.store = ArtifactStore(self.platform.s3, bucket="soak")
            self.store.ensure_bucket()
            policy = tiny_policy(self.root / "policy")
            with start_policy_server(
                policy, torch_threads=1, log_path=self.root / "policy-server.log"
            ) as server:
                self.policy_url = server.url
                self.sha = httpx.get(f"{server.url}/v1/policy/version", timeout=30).json()["policy"][
                    "checkpoint_sha256"
                ]
                self.services = {name: self._service(name) for name in SERVICES}
                try:
                    for service in self.services.values():
                        service.start()
                    self._wait(lambda: all(s.ready() for s in self.services.values()), 180, "services ready")
                    self._stream_with_faults()
                    self._drain()
                    codes = {name: s.terminate() for name, s in self.services.items()}
                finally:
                    for service in self.services.values():
                        if service.proc is not None and service.proc.poll() is None:
                            service.kill()
            return self._report(codes)

    def _service(self, name: str) -> Service:
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1",
            "CUTALIGN_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            **{
                f"CUTALIGN_KAFKA_TOPIC_{t.upper()}": f"soak.{t}"
                for t in ("prompts", "samples", "judgments", "deadletter")
            },
            "CUTALIGN_KAFKA_PARTITIONS": "4",
            "CUTALIGN_S3_ENDPOINT": self.platform.s3.endpoint,
            "CUTALIGN_S3_ACCESS_KEY": self.platform.s3.credentials()[0],
            "CUTALIGN_S3_SECRET_KEY": self.platform.s3.credentials()[1],
            "CUTALIGN_S3_BUCKET": "soak",
            "CUTALIGN_POLICY_URL": self.policy_url,
            "CUTALIGN_POLICY_MAX_NEW_TOKENS": "8",
        }
        kind = name.split("-")[0]
        module = {  # what the images run (python -m)
            "generator": "cutalign.generator.service",
            "judge": "cutalign.judging.service",
            "builder": "cutalign.builder.service",
            "feedback": "cutalign.feedback.app",
        }[kind]
        env |= {
            "generator": {
                "CUTALIGN_GENERATOR_HTTP_PORT": str(port),
                "CUTALIGN_GENERATOR_BATCH_SIZE": "16",
                "CUTALIGN_GENERATOR_GROUP_ID": "soak-generator",
            },
            "judge": {
                "CUTALIGN_JUDGE_JUDGE": JUDGE,
                "CUTALIGN_JUDGE_HTTP_PORT": str(port),
                "CUTALIGN_JUDGE_GROUP_ID": "soak-judge",
                "CUTALIGN_JUDGE_CONCURRENCY": "2",
                "CUTALIGN_JUDGE_TIMEOUT_S": "2",
                "CUTALIGN_JUDGE_MAX_RETRIES": "1",
                "CUTALIGN_JUDGE_BACKOFF_S": "0.05",
                "CUTALIGN_JUDGE_BATCH_SIZE": "32",
            },
            "builder": {
                "CUTALIGN_BUILDER_HTTP_PORT": str(port),
                "CUTALIGN_BUILDER_HTTP_HOST": "127.0.0.1",
                "CUTALIGN_BUILDER_GROUP_ID": "soak-builder",
                "CUTALIGN_BUILDER_ADMIN_TOKEN": ADMIN,
                "CUTALIGN_BUILDER_LATE_POLICY": "next",
                "CUTALIGN_BUILDER_SHARD_MAX_SECONDS": "1",
            },
            "feedback": {
                "CUTALIGN_FEEDBACK_TOKEN": TOKEN,
                "CUTALIGN_FEEDBACK_USER_HASH_SALT": SALT,
                "CUTALIGN_FEEDBACK_HOST": "127.0.0.1",
                "CUTALIGN_FEEDBACK_PORT": str(port),
                "CUTALIGN_FEEDBACK_RATE_LIMIT_PER_S": "1000",
                "CUTALIGN_FEEDBACK_POLICY_REFRESH_S": "5",
            },
        }[kind]
        return Service(name, [sys.executable, "-m", module], env, port, self.root / f"{name}.log")

    # -- the stream and the faults ---------------------------------------------------------------------------

    def _stream_with_faults(self) -> None:
        started = time.monotonic()
        kill_order = [s for _ in range(3) for s in self.rng.sample(SERVICES, len(SERVICES))]
        next_kill, next_seal = started + 30, started + 150
        store_at, broker_at = started + 0.35 * self.duration_s, started + 0.7 * self.duration_s
        producer = TypedProducer(self.kafka, service="soak")
        raw = Producer(client_config(self.kafka, client_suffix="soak-raw"))
        posting = ThreadPoolExecutor(4, thread_name_prefix="feedback-client")
        n = 0
        while (now := time.monotonic()) - started < self.duration_s:
            self._publish_round(n, producer, raw, posting)
            n += 1
            if now >= next_kill and kill_order:
                self._kill_and_restart(kill_order.pop(0))
                next_kill = now + self.rng.uniform(25, 45)
            if store_at and now >= store_at:
                self._restart("seaweedfs", 4.0)
                store_at = 0
            if broker_at and now >= broker_at:
                self._restart("tansu", 2.0)
                broker_at = 0
            if now >= next_seal:
                self._seal()
                next_seal = now + 150
            time.sleep(0.25)
        posting.shutdown(wait=True)
        self._send_with_retry(producer.flush)
        raw.flush(60)

    def _publish_round(
        self, n: int, producer: TypedProducer, raw: Producer, posting: ThreadPoolExecutor
    ) -> None:
        """One quarter second of traffic: ~1 valid prompt, sometimes a fault or a duplicate, feedback."""
        prompts_topic, judgments_topic = self.kafka.topic_prompts, self.kafka.topic_judgments
        sends: list[tuple[str, object, str]] = [(prompts_topic, self._prompt(f"v-{n}"), f"v-{n}")]
        self.ledger.valid.add(f"v-{n}#0")
        roll = self.rng.random()
        if roll < 0.04:
            kind = self.rng.choice(["hang", "fail", "huge_text", "float_span"])
            sends.append((prompts_topic, self._prompt(f"bad-{kind}-{n}", fault=kind), f"bad-{kind}-{n}"))
            self.ledger.invalid[f"bad-{kind}-{n}#0"] = f"judge {kind}"
        elif roll < 0.07:
            kind = self.rng.choice(["empty", "oversize"])
            instruction = "" if kind == "empty" else "w" * (MAX_TEXT_BYTES + 1)
            sends.append(
                (
                    prompts_topic,
                    messages_pb2.Prompt(
                        id=f"bad-{kind}-{n}", instruction=instruction, iteration=self.iteration
                    ),
                    f"bad-{kind}-{n}",
                )
            )
            self.ledger.invalid[f"bad-{kind}-{n}"] = f"prompt {kind}"
        elif roll < 0.10:
            kind = self.rng.choice(["error", "polarity", "utf8"])
            message = judgment(10**6 + n, positive=False, iteration=self.iteration, sid=f"bad-j-{kind}-{n}#0")
            if kind == "error":
                message.text = "$ERROR$"
            elif kind == "polarity":
                message.polarity = messages_pb2.POLARITY_UNSPECIFIED
            value = message.SerializeToString()
            if kind == "utf8":
                value = value.replace(b"Count from", b"Count \xe2\x28om")
            self._send_with_retry(
                lambda: producer.send_raw(
                    judgments_topic, value, f"bad-j-{kind}-{n}#0", "cutalign.v1.Judgment"
                )
            )
            self.ledger.invalid[f"bad-j-{kind}-{n}#0"] = f"judgment {kind}"
        elif roll < 0.12:
            key = f"bad-raw-{n}"
            value = judgment(n, positive=True).SerializeToString()
            headers = None if n % 2 else [("schema", b"cutalign.v1.Prompt"), ("schema-version", b"1")]
            raw.produce(prompts_topic, value, key=key.encode(), headers=headers)
            raw.poll(0)
            self.ledger.invalid[key] = "raw message"
        elif roll < 0.16 and n > 10:
            again = self.rng.randrange(max(0, n - RESEND_REACH), n)  # a producer retrying a recent prompt
            sends.append((prompts_topic, self._prompt(f"v-{again}"), f"v-{again}"))
            self.ledger.duplicates += 1
        for topic, message, key in sends:
            self._send_with_retry(lambda t=topic, m=message, k=key: producer.send(t, m, k))  # type: ignore[misc]
        if n % 2 == 0:
            posting.submit(self._post_feedback, n)
        if n % 25 == 0:
            posting.submit(self._post_refused, n)

    def _prompt(self, pid: str, **reference: object) -> messages_pb2.Prompt:
        return messages_pb2.Prompt(
            id=pid,
            instruction=f"Count from {len(pid)} to {len(pid) + 3}.",
            iteration=self.iteration,
            reference_json=json.dumps(reference),
        )

    def _send_with_retry(self, send: Callable[[], object]) -> None:
        """A producer outside the services: it waits out the broker and store restarts like any client."""
        for _ in range(600):
            try:
                send()
                return
            except (BufferError, RuntimeError) as e:
                log.info("send failed (%s); retrying", e)
                time.sleep(0.5)
        raise RuntimeError("the soak's own producer could not send for 5 minutes")

    def _post_feedback(self, n: int) -> None:
        """A valid event, retried with its event id until accepted (a client does that on 503)."""
        event = {
            "instruction": f"Count from {n} to {n + 2}.",
            "response": f"{n} {n + 2}",
            "feedback": f"It skips {n + 1}.",
            "positive": False,
            "source": "soak-app",
            "policy_version": self.sha,
            "event_id": f"e-{n}",
        }
        port = self.services["feedback"].port
        for attempt in range(300):
            try:
                r = httpx.post(
                    f"http://127.0.0.1:{port}/v1/feedback",
                    json=event,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=30,
                )
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code == 202:
                with self.ledger.lock:
                    self.ledger.valid.add(r.json()["sample_id"])
                    self.ledger.feedback_retries += attempt
                if n % 10 == 0:  # a client that retries a request that had already succeeded
                    httpx.post(
                        f"http://127.0.0.1:{port}/v1/feedback",
                        json=event,
                        headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=30,
                    )
                    with self.ledger.lock:
                        self.ledger.duplicates += 1
                return
            time.sleep(1.0)
        raise RuntimeError(f"feedback event e-{n} was never accepted")

    def _post_refused(self, n: int) -> None:
        """Feedback the API must refuse: it never enters the stream."""
        port = self.services["feedback"].port
        bad = [
            (
                {
                    "instruction": "x",
                    "response": "\u200b",
                    "positive": True,
                    "source": "soak-app",
                    "policy_version": self.sha,
                },
                {"Authorization": f"Bearer {TOKEN}"},
            ),
            (
                {
                    "instruction": "x",
                    "response": "y",
                    "positive": True,
                    "source": "soak-app",
                    "policy_version": "0" * 64,
                },
                {"Authorization": f"Bearer {TOKEN}"},
            ),
            ({"instruction": "x"}, {"Authorization": "Bearer wrong"}),
        ]
        body, headers = bad[n % len(bad)]
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/feedback", json=body, headers=headers, timeout=30)
        except httpx.HTTPError:
            return
        if 400 <= r.status_code < 500:
            with self.ledger.lock:
                self.ledger.refused_by_api[str(r.status_code)] += 1

    def _kill_and_restart(self, name: str) -> None:
        service = self.services[name]
        service.kill()
        self.events.append(f"{time.strftime('%H:%M:%S')} SIGKILL {name}")
        log.info("SIGKILL %s", name)
        time.sleep(self.rng.uniform(0.5, 3.0))
        service.start()

    def _restart(self, server: str, down_s: float) -> None:
        self.platform.kill(server)  # type: ignore[arg-type]
        self.events.append(f"{time.strftime('%H:%M:%S')} {server} killed, restarted after {down_s:.0f} s")
        log.info("%s killed", server)
        time.sleep(down_s)
        self.platform.up()

    def _seal(self) -> None:
        """Seal the open iteration through a live builder (retried while builders are down or recovering)."""
        for _ in range(120):
            for name in ("builder-a", "builder-b"):
                try:
                    r = httpx.post(
                        f"http://127.0.0.1:{self.services[name].port}/seal?iteration={self.iteration}",
                        headers={"Authorization": f"Bearer {ADMIN}"},
                        timeout=120,
                    )
                except httpx.HTTPError:
                    continue
                if r.status_code == 200 or (r.status_code == 409 and "no published shards" in r.text):
                    self.seals += r.status_code == 200
                    self.events.append(f"{time.strftime('%H:%M:%S')} sealed iteration {self.iteration}")
                    self.iteration += 1 if r.status_code == 200 else 0
                    return
                if r.status_code == 409 and "not open yet" in r.text:
                    continue  # this builder has not caught up with the previous seal yet
            time.sleep(1.0)
        raise RuntimeError(f"iteration {self.iteration} could not be sealed")

    # -- the end -------------------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Until every input is in an example or a dead letter (or 5 minutes pass), then seal the rest."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            accounted = self._built_ids() | set(self._letters())
            missing = (self.ledger.valid | set(self.ledger.invalid)) - accounted
            log.info("draining: %d inputs not accounted for yet", len(missing))
            if not missing:
                break
            time.sleep(10)
        self._seal()

    def _built_ids(self) -> set[str]:
        """Sample ids in published shards of every iteration so far (sealed or not)."""
        ids: set[str] = set()
        for i in range(1, self.iteration + 1):
            for key in self.store.list(layout.shards_prefix(i)):
                if key.endswith(".jsonl"):
                    ids |= {e.sample_id for e in decode_shard(self.store.get_bytes(key), key)}
        return ids

    def _letters(self) -> dict[str, training_pb2.DeadLetter]:
        return dict(read_topic(self.kafka, self.kafka.topic_deadletter, training_pb2.DeadLetter, idle_s=3))

    def _report(self, codes: dict[str, int]) -> int:
        trained: Counter[str] = Counter()
        overlaps = 0
        for i in range(1, self.iteration + 1):
            try:
                manifest = self.store.get_manifest(
                    layout.iteration_manifest_key(i), training_pb2.IterationManifest
                )
            except ObjectMissing:
                continue
            overlaps += len(manifest.duplicate_positions)
            kept = [e.sample_id for e in read_sealed_examples(self.store, manifest)]
            trained.update(kept + list(manifest.excluded_sample_ids))
        letters = self._letters()
        valid_lost = sorted(self.ledger.valid - set(trained))
        valid_duplicated = sorted(sid for sid in self.ledger.valid if trained[sid] > 1)
        invalid_silent = sorted(set(self.ledger.invalid) - set(letters))
        reasons = Counter(letters[k].reason for k in self.ledger.invalid if k in letters)
        kills = ", ".join(f"{name} {s.kills}" for name, s in self.services.items())
        print(
            f"\nsoak of {self.duration_s:.0f} s: {len(self.ledger.valid)} valid inputs "
            f"({sum(1 for v in self.ledger.valid if v.startswith('v-'))} prompts, "
            f"{sum(1 for v in self.ledger.valid if v.startswith('fb-'))} feedback events), "
            f"{len(self.ledger.invalid)} invalid in the stream, {sum(self.ledger.refused_by_api.values())} "
            f"refused by the feedback API {dict(self.ledger.refused_by_api)}, {self.ledger.duplicates} "
            f"duplicates re-sent, {self.ledger.feedback_retries} feedback retries after 503/timeouts"
        )
        print(f"faults: SIGKILLs: {kills}; 1 store restart, 1 broker restart; {self.seals} iterations sealed")
        print(f"dead-letter reasons of the invalid inputs: {dict(sorted(reasons.items()))}")
        print(f"shard overlaps resolved by the manifests (first occurrence wins): {overlaps}")
        print(f"exit codes on SIGTERM: {codes}")
        for event in self.events:
            print(f"  {event}")
        print(f"valid lost: {len(valid_lost)}")
        print(f"valid duplicated: {len(valid_duplicated)}")
        print(f"invalid without a dead letter: {len(invalid_silent)}")
        for name, ids in (("lost", valid_lost), ("duplicated", valid_duplicated), ("silent", invalid_silent)):
            if ids:
                print(f"  {name}: {ids[:20]}")
        # uvicorn re-raises SIGTERM once it has drained (the feedback API): that is its clean exit
        stopped = all(c == 0 or (name == "feedback" and c == -signal.SIGTERM) for name, c in codes.items())
        clean = not (valid_lost or valid_duplicated or invalid_silent) and stopped
        return 0 if clean else 1

    def _wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}:\n{self._log_tails()}")
            time.sleep(0.5)

    def _log_tails(self) -> str:
        """The end of each service's log (the run's directory is removed when the soak exits)."""
        return "\n".join(
            f"--- {name}\n{s.log_path.read_text(errors='replace')[-1500:]}"
            for name, s in getattr(self, "services", {}).items()
            if s.log_path.exists()
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=600.0, help="How long the stream runs.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the stream and the fault schedule.")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the logs and data in this directory.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("cutalign").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return Soak(args.keep, args.duration_s, args.seed).run()
    with tempfile.TemporaryDirectory() as tmp:
        return Soak(Path(tmp), args.duration_s, args.seed).run()


if __name__ == "__main__":
    sys.exit(main())
