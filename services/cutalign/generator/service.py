"""The generator: consume Prompts, generate from the verified policy, publish Samples, then commit.

The loop is the service runner's (``cutalign.bus.runner``); the generator plugs in ``GenerateProcess``: for a
batch of up to ``batch_size`` prompts, check the served policy version (refuse on a mismatch, see ``guard``) →
validate and format each prompt (``process``) → call the policy, at most ``policy.max_in_flight`` requests at
once → one Sample output per response (key = sample id ``"<prompt id>#<n>"``) or a rejection. The runner
produces them (each checked against the size limit first), dead-letters the rejections, flushes, **then**
commits the prompts' offsets. Slow policy calls do not stall the consumer group (the runner keeps polling with
the partitions paused); a store that cannot be read (the promoted release) is retried with backoff while the
service reports not ready; SIGTERM finishes the batch in hand within the runner's grace period.

Delivery guarantee, precisely:
* **No prompt is lost silently.** An offset is committed only after everything the prompt produced is
  acknowledged by the broker: its ``n`` Samples, or one DeadLetter naming why (``empty_prompt``,
  ``invalid_id``, ``oversize_text``, ``prompt_too_long``, ``iteration_mismatch``, ``policy_rejected`` — a 4xx
  such as a prompt over the context — ``policy_unavailable`` after the client's retries, ``policy_error``,
  ``output_too_large``). A prompt with any failed response is dead-lettered whole; none of its samples are
  published.
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
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import urllib3
from minio.error import S3Error
from prometheus_client import Counter, Histogram
from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

from cutalign.bus import Envelope, TypedConsumer, TypedProducer
from cutalign.bus.recent import RecentIds
from cutalign.bus.runner import Output, ProduceSink, Rejection, ServiceRunner
from cutalign.checks import oversize_field
from cutalign.config import GeneratorSettings, KafkaSettings, PolicySettings, S3Settings
from cutalign.generator.guard import PolicyVersionMismatch, VersionGuard
from cutalign.generator.process import Prepared, build_sample, prepare_prompt, sample_id, sample_seed
from cutalign.observability import HealthServer, configure_logging, stop_on_signals
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
# The promoted release cannot be read while the store restarts: retry the batch, do not exit.
STORE_ERRORS = (S3Error, urllib3.exceptions.HTTPError)

__all__ = ["PolicyVersionMismatch", "RunStats", "main", "run"]


@dataclass
class RunStats:
    prompts: int = 0
    samples: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    policy: common_pb2.PolicyVersion | None = None


def _failure(errors: Sequence[PolicyError]) -> Rejection:
    first = errors[0]
    if any(isinstance(e, PolicyUnavailable) for e in errors):
        unavailable = next(e for e in errors if isinstance(e, PolicyUnavailable))
        return Rejection("policy_unavailable", str(unavailable))
    if isinstance(first, PolicyRejected):
        return Rejection("policy_rejected", str(first))
    return Rejection("policy_error", str(first))


class GenerateProcess:
    """The service's ``process``: a batch of prompts in, the Sample outputs or a rejection of each."""

    def __init__(
        self,
        client: PolicyClient,
        guard: VersionGuard,
        policy: PolicySettings,
        generator: GeneratorSettings,
        kafka: KafkaSettings,
        stats: RunStats,
    ) -> None:
        self.client, self.guard, self.stats = client, guard, stats
        self.policy, self.generator, self.kafka = policy, generator, kafka
        self.seen = RecentIds(generator.dedupe_window)

    def __call__(self, batch: list[Envelope[messages_pb2.Prompt]]) -> list[Sequence[Output] | Rejection]:
        results: list[Sequence[Output] | Rejection] = [[] for _ in batch]
        fresh = self._distinct(batch)
        try:
            self.guard.check()  # PolicyVersionMismatch: nothing of this batch is published or committed
        except PolicyUnavailable as e:
            for i in fresh:
                results[i] = Rejection("policy_unavailable", str(e))
        else:
            self.stats.policy = self.guard.version
            results = self._generate(batch, fresh, results)
        for i in fresh:
            result = results[i]
            if isinstance(result, Rejection):
                ERRORS.labels(result.reason).inc()
            self.seen.add(batch[i].message.id)
        self.stats.prompts += len(batch)
        PROMPTS.inc(len(batch))
        return results

    def _distinct(self, batch: list[Envelope[messages_pb2.Prompt]]) -> list[int]:
        """Indices of the prompts not generated for yet in this run (first occurrence wins)."""
        fresh: list[int] = []
        ids: set[str] = set()
        for i, env in enumerate(batch):
            pid = env.message.id
            if pid and (pid in self.seen or pid in ids):
                self.stats.duplicates += 1
                DUPLICATES.inc()
            else:
                fresh.append(i)
                ids.add(pid)
        return fresh

    def _generate(
        self,
        batch: list[Envelope[messages_pb2.Prompt]],
        fresh: list[int],
        results: list[Sequence[Output] | Rejection],
    ) -> list[Sequence[Output] | Rejection]:
        policy, iteration = self.policy, self.generator.iteration
        prepared: list[tuple[int, Prepared]] = []
        for i in fresh:
            outcome = prepare_prompt(
                batch[i].message, policy, iteration, self.client.request, self.kafka.max_text_bytes
            )
            if isinstance(outcome, Rejection):
                results[i] = outcome
            else:
                prepared.append((i, outcome))
        requests = [
            (p.prompt, sample_seed(policy.seed, sample_id(batch[i].message.id, k)))
            for i, p in prepared
            for k in range(policy.n)
        ]
        completions = self.client.complete_many(requests)
        assert self.guard.version is not None
        for j, (i, p) in enumerate(prepared):
            responses = completions[j * policy.n : (j + 1) * policy.n]
            errors = [r for r in responses if isinstance(r, PolicyError)]
            if errors:
                results[i] = _failure(errors)
                continue
            samples = []
            for k, completion in enumerate(responses):
                assert isinstance(completion, Completion)
                self.guard.verify(completion)
                LATENCY.observe(completion.latency_s)
                prompt = batch[i].message
                samples.append(
                    build_sample(prompt, k, completion, self.guard.version, iteration, p.truncated)
                )
            oversize = oversize_field((("response", s.response) for s in samples), self.kafka.max_text_bytes)
            if oversize is not None:
                results[i] = Rejection("oversize_text", f"the policy answered with a {oversize}")
                continue
            results[i] = [Output(self.kafka.topic_samples, s, s.id) for s in samples]
            self.stats.samples += len(samples)
            SAMPLES.inc(len(samples))
        return results


def run(
    kafka: KafkaSettings,
    policy: PolicySettings,
    generator: GeneratorSettings,
    stop_event: threading.Event,
    *,
    client: PolicyClient | None = None,
    ready: threading.Event | None = None,
    store: ArtifactStore | None = None,
    http_port: int | None = None,
) -> RunStats:
    """Generate until ``stop_event`` is set. In-process usable.

    ``ready`` is set once the policy is verified and the consumer subscribed; with ``http_port``, ``/readyz``
    there also says whether the generator is retrying a failure (``/healthz``, ``/metrics`` too). ``store``
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
    stats = RunStats(policy=_first_check(guard, stop_event))
    producer = TypedProducer(kafka, service=SERVICE)
    consumer = TypedConsumer(
        kafka,
        group_id=generator.group_id,
        topics=[kafka.topic_prompts],
        message_type=messages_pb2.Prompt,
        service=SERVICE,
        on_dead_letter=lambda reason: _dead_lettered(stats),
    )
    runner = ServiceRunner(
        consumer,
        GenerateProcess(client, guard, policy, generator, kafka, stats),
        ProduceSink(producer, consumer),
        stop_event=stop_event,
        batch_size=generator.batch_size,
        poll_timeout_s=generator.poll_timeout_s,
        transient=STORE_ERRORS,
        subscribed=ready,
    )
    health = HealthServer(http_port, ready=lambda: runner.ready).start() if http_port is not None else None
    try:
        runner.run()
    finally:
        if health is not None:
            health.stop()
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


def _first_check(guard: VersionGuard, stop_event: threading.Event) -> common_pb2.PolicyVersion:
    """The served version at start-up, waiting (with backoff) for a policy server or store still starting."""
    retrying = Retrying(
        retry=retry_if_exception_type((PolicyUnavailable, *STORE_ERRORS)),
        wait=wait_exponential_jitter(initial=0.5, max=15.0),
        stop=lambda state: stop_event.is_set(),
        sleep=lambda seconds: None if stop_event.wait(seconds) else None,
        before_sleep=lambda state: log.warning(
            "cannot verify the served policy yet; retrying",
            extra={"error": str(state.outcome.exception() if state.outcome else None)},
        ),
        reraise=True,
    )
    return retrying(guard.check)


def _dead_lettered(stats: RunStats) -> None:
    stats.dead_lettered += 1


def main() -> None:
    """Service entry point: settings from ``CUTALIGN_*``; health/metrics on ``generator.http_port``."""
    configure_logging(SERVICE)
    kafka, policy, generator = KafkaSettings(), PolicySettings(), GeneratorSettings()
    # without a configured sha256 the promoted release is the expected policy: read it from the store
    store = ArtifactStore(S3Settings()) if generator.expected_policy_sha256 is None else None
    run(kafka, policy, generator, stop_on_signals(), store=store, http_port=generator.http_port)


if __name__ == "__main__":
    main()
