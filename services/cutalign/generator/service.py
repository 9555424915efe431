"""The generator: consume Prompts, generate from the verified policy, publish Samples, then commit.

Loop (one batch at a time): poll up to ``batch_size`` prompts → check the served policy version (refuse on a
mismatch, see ``guard``) → validate and format each prompt (``process``) → call the policy, at most
``policy.max_in_flight`` requests at once → publish every Sample (key = sample id ``"<prompt id>#<n>"``) and
every dead letter → ``flush()`` → **then** commit the prompts' offsets. SIGTERM sets the stop event: the batch
in hand is finished, published and committed before the process exits.

Delivery guarantee, precisely:
* **No prompt is lost silently.** An offset is committed only after everything the prompt produced is
  acknowledged by the broker: its ``n`` Samples, or one DeadLetter naming why (``empty_prompt``,
  ``prompt_too_long``, ``iteration_mismatch``, ``policy_rejected`` — a 4xx such as a prompt over the context —
  ``policy_unavailable`` after the client's retries, ``policy_error``). A prompt with any failed response is
  dead-lettered whole; none of its samples are published.
* **Within a run, each prompt id is generated for once**: ids already published are remembered (the last
  ``dedupe_window`` of them) and a redelivered prompt — a rebalance handing back an uncommitted batch, a
  producer retry upstream — is skipped (``cutalign_generator_duplicate_prompts_total``).
* **Across a crash, at-least-once with stable ids.** A process killed between its flush and its commit has
  published samples whose prompts will be redelivered and generated again. The regenerated samples carry the
  same ids (and, from the same policy, the same greedy text; sampled text too, as the seed derives from the
  sample id), so consumers deduplicate by sample id — the judge and target builder do — and each prompt id
  yields exactly one set of samples downstream. Exactly-once on the topic itself would need Kafka
  transactions.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from prometheus_client import Counter, Histogram

from cutalign.bus import Envelope, TypedConsumer, TypedProducer
from cutalign.config import GeneratorSettings, KafkaSettings, PolicySettings, S3Settings
from cutalign.generator.guard import PolicyVersionMismatch, VersionGuard
from cutalign.generator.process import Prepared, Reject, build_sample, prepare_prompt, sample_id, sample_seed
from cutalign.policy.client import Completion, PolicyClient, PolicyError, PolicyRejected, PolicyUnavailable
from cutalign.store import ArtifactStore
from cutalign.v1 import common_pb2, messages_pb2

log = logging.getLogger(__name__)

SERVICE = "generator"
SAMPLES = Counter("cutalign_generator_samples_total", "Samples published (rate() gives samples/s).")
PROMPTS = Counter("cutalign_generator_prompts_total", "Prompts consumed.")
DUPLICATES = Counter("cutalign_generator_duplicate_prompts_total", "Redelivered prompts skipped in this run.")
ERRORS = Counter("cutalign_generator_errors_total", "Prompts dead-lettered, by reason.", ["reason"])
LATENCY = Histogram(
    "cutalign_generator_policy_latency_seconds",
    "Policy call latency per response, retries included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

__all__ = ["PolicyVersionMismatch", "RunStats", "main", "run"]


@dataclass
class RunStats:
    prompts: int = 0
    samples: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    policy: common_pb2.PolicyVersion | None = None


class RecentIds:
    """The last ``capacity`` ids seen (insertion order), for skipping redeliveries within a run."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        if self.capacity == 0:
            return
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


def _failure(errors: Sequence[PolicyError]) -> Reject:
    first = errors[0]
    if any(isinstance(e, PolicyUnavailable) for e in errors):
        return Reject("policy_unavailable", str(next(e for e in errors if isinstance(e, PolicyUnavailable))))
    if isinstance(first, PolicyRejected):
        return Reject("policy_rejected", str(first))
    return Reject("policy_error", str(first))


def generate_batch(
    batch: Sequence[Envelope[messages_pb2.Prompt]],
    *,
    client: PolicyClient,
    guard: VersionGuard,
    policy: PolicySettings,
    iteration: int,
) -> tuple[list[tuple[Envelope[messages_pb2.Prompt], messages_pb2.Sample]], list[tuple[Envelope, Reject]]]:
    """Samples (with the envelope each came from) and rejections for one batch of distinct prompts."""
    prepared: list[tuple[Envelope[messages_pb2.Prompt], Prepared]] = []
    rejects: list[tuple[Envelope, Reject]] = []
    for env in batch:
        outcome = prepare_prompt(env.message, policy, iteration, client.request)
        if isinstance(outcome, Reject):
            rejects.append((env, outcome))
        else:
            prepared.append((env, outcome))
    requests = [
        (p.prompt, sample_seed(policy.seed, sample_id(env.message.id, i)))
        for env, p in prepared
        for i in range(policy.n)
    ]
    results = client.complete_many(requests)
    assert guard.version is not None
    samples = []
    for k, (env, p) in enumerate(prepared):
        responses = results[k * policy.n : (k + 1) * policy.n]
        errors = [r for r in responses if isinstance(r, PolicyError)]
        if errors:
            rejects.append((env, _failure(errors)))
            continue
        for i, completion in enumerate(responses):
            assert isinstance(completion, Completion)
            guard.verify(completion)
            LATENCY.observe(completion.latency_s)
            samples.append(
                (env, build_sample(env.message, i, completion, guard.version, iteration, p.truncated))
            )
    return samples, rejects


def _distinct(
    polled: list[Envelope[messages_pb2.Prompt]], seen: RecentIds, stats: RunStats
) -> dict[str, Envelope[messages_pb2.Prompt]]:
    """The polled prompts not generated for yet in this run, by prompt id (first occurrence wins)."""
    fresh: dict[str, Envelope[messages_pb2.Prompt]] = {}
    for env in polled:
        if env.message.id and (env.message.id in seen or env.message.id in fresh):
            stats.duplicates += 1
            DUPLICATES.inc()
        else:
            fresh[env.message.id or f"{env.partition}@{env.offset}"] = env
    return fresh


def _verified_batch(
    batch: list[Envelope[messages_pb2.Prompt]],
    client: PolicyClient,
    guard: VersionGuard,
    policy: PolicySettings,
    generator: GeneratorSettings,
) -> tuple[list[tuple[Envelope[messages_pb2.Prompt], messages_pb2.Sample]], list[tuple[Envelope, Reject]]]:
    """Check the served version, then generate; a server down through every retry dead-letters the batch."""
    try:
        guard.check()  # raises PolicyVersionMismatch: nothing of this batch is published or committed
    except PolicyUnavailable as e:
        return [], [(env, Reject("policy_unavailable", str(e))) for env in batch]
    return generate_batch(batch, client=client, guard=guard, policy=policy, iteration=generator.iteration)


def run(
    kafka: KafkaSettings,
    policy: PolicySettings,
    generator: GeneratorSettings,
    stop_event: threading.Event,
    max_messages: int | None = None,
    *,
    client: PolicyClient | None = None,
    ready: threading.Event | None = None,
    store: ArtifactStore | None = None,
) -> RunStats:
    """Generate until ``stop_event`` is set (or ``max_messages`` prompts were consumed). In-process usable.

    ``ready`` is set once the policy is verified and the consumer subscribed (the readiness probe). ``store``
    is where the promoted release (``policy/current.json``) is read from when no expected sha256 is
    configured (see ``guard``): with it the generator follows promotions; without it, it pins the policy
    served at start-up.

    Raises ``PolicyVersionMismatch`` — before consuming anything, or before publishing a batch — when the
    server does not serve the expected policy; the uncommitted batch is then redelivered to a generator that
    is configured for the policy being served.
    """
    own_client = client is None
    client = client or PolicyClient(policy)
    guard = VersionGuard(client, generator.expected_policy_sha256, store)
    stats = RunStats(policy=guard.check())
    seen = RecentIds(generator.dedupe_window)
    producer = TypedProducer(kafka, service=SERVICE)
    try:
        with TypedConsumer(
            kafka,
            group_id=generator.group_id,
            topics=[kafka.topic_prompts],
            message_type=messages_pb2.Prompt,
            service=SERVICE,
        ) as consumer:
            if ready is not None:
                ready.set()
            while not stop_event.is_set() and (max_messages is None or stats.prompts < max_messages):
                limit = (
                    generator.batch_size
                    if max_messages is None
                    else min(generator.batch_size, max_messages - stats.prompts)
                )
                polled = consumer.poll_batch(limit, generator.poll_timeout_s)
                stats.prompts += len(polled)
                PROMPTS.inc(len(polled))
                fresh = _distinct(polled, seen, stats)
                if fresh:
                    samples, rejects = _verified_batch(list(fresh.values()), client, guard, policy, generator)
                    stats.policy = guard.version
                    for env, sample in samples:
                        producer.send(kafka.topic_samples, sample, key=sample.id, trace_id=env.trace_id)
                    for env, reject in rejects:
                        consumer.dead_letter(env, reject.reason, reject.detail)
                        ERRORS.labels(reject.reason).inc()
                    producer.flush()  # durable first ...
                    stats.samples += len(samples)
                    stats.dead_lettered += len(rejects)
                    SAMPLES.inc(len(samples))
                    for key in fresh:
                        seen.add(key)
                consumer.commit()  # ... then commit (dead letters are flushed inside commit)
    finally:
        producer.close()
        if own_client:
            client.close()
    log.info(
        "generator stopped",
        extra={
            "prompts": stats.prompts,
            "samples": stats.samples,
            "dead_lettered": stats.dead_lettered,
            "duplicates": stats.duplicates,
        },
    )
    return stats


def main() -> None:
    """Service entry point: settings from ``CUTALIGN_*``; health/metrics on ``generator.http_port``."""
    from cutalign.observability import HealthServer, configure_logging

    configure_logging(SERVICE)
    kafka, policy, generator = KafkaSettings(), PolicySettings(), GeneratorSettings()
    # without a configured sha256 the promoted release is the expected policy: read it from the store
    store = ArtifactStore(S3Settings()) if generator.expected_policy_sha256 is None else None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the current batch, then exiting", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready = threading.Event()
    health = HealthServer(generator.http_port, ready=lambda: ready.is_set() and not stop.is_set()).start()
    try:
        run(kafka, policy, generator, stop, ready=ready, store=store)
    finally:
        health.stop()


if __name__ == "__main__":
    main()
