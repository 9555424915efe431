"""The judge service: Samples in, Judgments out — the project's Kafka service skeleton.

Each turn of the loop: poll a batch of samples, judge them (``concurrency`` calls at once, each with a
deadline, failed calls retried with jittered exponential backoff), publish one ``Judgment`` per judged sample
(key = sample id, source ``JUDGE_SERVICE``, the sample embedded), dead-letter every sample whose judge kept
failing (reason ``judge_failed``, detail ``<ExceptionType>: <message>``), flush, and only then commit. So:

* a crash before the commit redelivers the batch and it is judged again; a judgment is a function of its
  sample, keyed by the sample id, so the builder keeps one per sample (idempotent by key): none is lost;
* a failed judge call never becomes a judgment (the reference data's ``$ERROR$`` judgments are what this
  prevents) — the sample goes to the dead-letter topic with the reason instead;
* SIGTERM (``stop_event``) lets the batch in hand finish, be published and committed, then the loop exits.

``run`` is usable in-process (tests, benchmarks, the embedded demo); ``main`` reads ``CUTALIGN_KAFKA_*`` and
``CUTALIGN_JUDGE_*`` and serves ``/healthz``, ``/readyz`` and ``/metrics`` on ``judge.http_port``.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from cutalign.bus import Envelope, TypedConsumer, TypedProducer
from cutalign.config import JudgeSettings, KafkaSettings
from cutalign.judges.base import Judge, Judgment, judge_id_of
from cutalign.judges.loader import judge_from_settings
from cutalign.judging.calls import CallPool, JudgeInput, judge_all
from cutalign.judging.metrics import DEAD_LETTERS, JUDGMENTS, polarity_label, record_call
from cutalign.observability import HealthServer, configure_logging
from cutalign.templates import join_input
from cutalign.v1 import common_pb2, messages_pb2

log = logging.getLogger(__name__)

SERVICE = "judge"
POLL_TIMEOUT_S = 1.0


class InvalidSample(ValueError):
    """A sample that cannot be judged at all (no id, a reference that is not a JSON object)."""


def judge_input(sample: messages_pb2.Sample) -> JudgeInput:
    """What the judge sees of a sample: instruction (with any Alpaca input), response, reference fields."""
    if not sample.id:
        raise InvalidSample("the sample has no id")
    reference: dict[str, Any] | None = None
    if sample.prompt.reference_json:
        try:
            parsed = json.loads(sample.prompt.reference_json)
        except json.JSONDecodeError as e:
            raise InvalidSample(f"prompt.reference_json is not valid JSON: {e}") from e
        if not isinstance(parsed, dict):
            raise InvalidSample(f"prompt.reference_json must be a JSON object, got {type(parsed).__name__}")
        reference = parsed
    return JudgeInput(join_input(sample.prompt.instruction, sample.prompt.input), sample.response, reference)


def judgment_message(
    sample: messages_pb2.Sample, judgment: Judgment, judge_id: str, now_ms: int
) -> messages_pb2.Judgment:
    return messages_pb2.Judgment(
        sample=sample,
        text=judgment.text,
        polarity=messages_pb2.POSITIVE if judgment.positive else messages_pb2.NEGATIVE,
        judge_id=judge_id,
        source=messages_pb2.JUDGE_SERVICE,
        created_at_ms=now_ms,
        error_spans=[common_pb2.Span(start=start, end=end) for start, end in judgment.error_spans],
    )


@dataclass(frozen=True)
class Rejected:
    envelope: Envelope[messages_pb2.Sample]
    reason: str
    detail: str


@dataclass
class BatchResult:
    judged: list[tuple[Envelope[messages_pb2.Sample], messages_pb2.Judgment]]
    rejected: list[Rejected]


def process_batch(
    envelopes: list[Envelope[messages_pb2.Sample]],
    judge: Judge,
    pool: CallPool,
    settings: JudgeSettings,
    judge_id: str,
) -> BatchResult:
    """Judge a batch: a Judgment message for each sample judged, a reason for each that could not be."""
    result = BatchResult([], [])
    valid: list[tuple[Envelope[messages_pb2.Sample], JudgeInput]] = []
    for envelope in envelopes:
        try:
            valid.append((envelope, judge_input(envelope.message)))
        except InvalidSample as e:
            result.rejected.append(Rejected(envelope, "invalid_sample", str(e)))
    attempted = judge_all(
        judge,
        [item for _, item in valid],
        pool,
        timeout_s=settings.timeout_s,
        max_retries=settings.max_retries,
        backoff_s=settings.backoff_s,
        on_call=lambda seconds, error: record_call(judge_id, seconds, error),
    )
    now_ms = int(time.time() * 1000)
    for (envelope, _), outcome in zip(valid, attempted, strict=True):
        if outcome.judgment is not None:
            message = judgment_message(
                envelope.message, outcome.judgment, settings.judge_id or judge_id, now_ms
            )
            result.judged.append((envelope, message))
        else:
            error = outcome.error
            detail = f"{type(error).__name__}: {error} (after {outcome.attempts} attempt(s))"
            result.rejected.append(Rejected(envelope, "judge_failed", detail))
    return result


@dataclass
class RunStats:
    judged: int = 0
    dead_lettered: int = 0
    batches: int = 0


def run(
    kafka: KafkaSettings,
    settings: JudgeSettings,
    *,
    stop_event: threading.Event,
    judge: Judge | None = None,
    ready: threading.Event | None = None,
) -> RunStats:
    """Judge samples until ``stop_event`` is set; the batch in hand is finished and committed first.

    ``judge`` overrides the configured one (already built, e.g. by a benchmark); ``ready`` is set once the
    consumer is subscribed (also what ``/readyz`` reports).
    """
    judge = judge if judge is not None else judge_from_settings(settings)
    judge_id = settings.judge_id or judge_id_of(judge)
    ready = ready if ready is not None else threading.Event()
    health = HealthServer(settings.http_port, ready=ready.is_set).start()
    pool = CallPool(settings.concurrency)
    stats = RunStats()
    log.info(
        "judge service starting",
        extra={
            "judge": judge_id,
            "http_port": health.port,
            "topic": kafka.topic_samples,
            "group": settings.group_id,
        },
    )
    try:
        with (
            TypedProducer(kafka, service=SERVICE) as producer,
            TypedConsumer(
                kafka,
                group_id=settings.group_id,
                topics=[kafka.topic_samples],
                message_type=messages_pb2.Sample,
                service=SERVICE,
            ) as consumer,
        ):
            ready.set()
            while not stop_event.is_set():
                batch = consumer.poll_batch(settings.batch_size, POLL_TIMEOUT_S)
                result = process_batch(batch, judge, pool, settings, judge_id)
                for envelope, message in result.judged:
                    producer.send(
                        kafka.topic_judgments, message, key=message.sample.id, trace_id=envelope.trace_id
                    )
                for rejected in result.rejected:
                    consumer.dead_letter(rejected.envelope, rejected.reason, rejected.detail)
                producer.flush()  # durable before the offsets move (commit flushes the dead letters)
                consumer.commit()
                _count(result, judge_id, stats)
    finally:
        ready.clear()
        pool.close()
        health.stop()
    log.info("judge service stopped", extra=asdict(stats))
    return stats


def _count(result: BatchResult, judge_id: str, stats: RunStats) -> None:
    for _, message in result.judged:
        JUDGMENTS.labels(judge_id, polarity_label(message.polarity == messages_pb2.POSITIVE)).inc()
    for rejected in result.rejected:
        DEAD_LETTERS.labels(judge_id, rejected.reason).inc()
    stats.judged += len(result.judged)
    stats.dead_lettered += len(result.rejected)
    stats.batches += 1 if result.judged or result.rejected else 0


def main(**overrides: Any) -> None:
    """Run the service from ``CUTALIGN_*`` settings (``overrides`` win) until SIGTERM/SIGINT."""
    configure_logging(SERVICE)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run(KafkaSettings(), JudgeSettings(**overrides), stop_event=stop)


if __name__ == "__main__":
    main()
