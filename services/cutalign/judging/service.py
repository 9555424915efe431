"""The judge service: Samples in, Judgments out, on the service runner (``cutalign.bus.runner``).

``process`` judges a batch: samples that cannot be judged are rejected first (``invalid_sample``: no usable
reference; ``invalid_id``: a sample id that is not printable or too long; ``oversize_text``: a response or
instruction over ``kafka.max_text_bytes``, which the builder would refuse anyway), the rest go to the judge
pool — worker *processes*, ``concurrency`` calls at once, each with a deadline (a hung call's process is
killed and replaced), failed calls retried with jittered backoff — and each sample ends as one ``Judgment``
(key = sample id, source ``JUDGE_SERVICE``, the sample embedded) or a rejection: ``judge_failed`` (detail
``<ExceptionType>: <message> (after N attempt(s))``), ``invalid_judgment`` (the judge answered something that
cannot be trained on, e.g. a float or mid-response empty span: the same rule as the builder's), or
``oversize_text`` (a judgment text over the limit). The runner produces each judgment after checking its size
(``output_too_large`` otherwise), dead-letters the rejections, flushes, then commits. So:

* a judgment is a function of its sample, keyed by the sample id: a crash before the commit redelivers the
  batch and the builder keeps one judgment per sample; within a run, a sample already judged and published is
  not judged again (a rebalance that hands back an uncommitted batch);
* a failed judge call never becomes a judgment (the reference data's ``$ERROR$`` judgments are what this
  prevents), and nothing a judge returns — 9 MB of text, a 5 MB echo — can crash the service;
* hung calls do not stall the group: the runner keeps polling with the partitions paused while a batch is
  judged; SIGTERM stops the service within ``SHUTDOWN_GRACE_S`` plus a few seconds.

``run`` is usable in-process (tests, benchmarks, the embedded demo); ``main`` reads ``CUTALIGN_KAFKA_*`` and
``CUTALIGN_JUDGE_*`` and serves ``/healthz``, ``/readyz`` and ``/metrics`` on ``judge.http_port``.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cutalign.bus import Envelope, TypedConsumer, TypedProducer
from cutalign.bus.recent import RecentIds
from cutalign.bus.runner import Output, ProduceSink, Rejection, ServiceRunner
from cutalign.checks import id_problem, oversize_field
from cutalign.config import JudgeSettings, KafkaSettings
from cutalign.judges.base import Judge, Judgment, judge_id_of
from cutalign.judges.loader import judge_from_settings
from cutalign.judging.calls import JudgeInput, JudgePool, error_name, is_invalid_judgment, judge_all
from cutalign.judging.metrics import DEAD_LETTERS, JUDGMENTS, polarity_label, record_call
from cutalign.observability import HealthServer, configure_logging, stop_on_signals
from cutalign.templates import join_input
from cutalign.v1 import common_pb2, messages_pb2

log = logging.getLogger(__name__)

SERVICE = "judge"
POLL_TIMEOUT_S = 1.0
DEDUPE_WINDOW = 100_000


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


def _unjudgeable(sample: messages_pb2.Sample, max_text_bytes: int) -> Rejection | None:
    """Why ``sample`` is not even sent to the judge, or None."""
    try:
        judge_input(sample)
    except InvalidSample as e:
        return Rejection("invalid_sample", str(e))
    problem = id_problem(sample.id, "sample.id")
    if problem is not None:
        return Rejection("invalid_id", problem)
    fields = (
        ("sample.response", sample.response),
        ("sample.prompt.instruction", sample.prompt.instruction),
        ("sample.prompt.input", sample.prompt.input),
    )
    oversize = oversize_field(fields, max_text_bytes)
    return Rejection("oversize_text", f"{oversize}: the builder could not train on it") if oversize else None


@dataclass
class RunStats:
    judged: int = 0
    dead_lettered: int = 0
    batches: int = 0
    skipped: int = 0  # already judged and published in this run


class JudgeProcess:
    """The service's ``process``: one batch of samples in, a Judgment output or a rejection per sample."""

    def __init__(
        self, pool: JudgePool, settings: JudgeSettings, kafka: KafkaSettings, judge_id: str, stats: RunStats
    ) -> None:
        self.pool, self.settings, self.kafka = pool, settings, kafka
        self.judge_id, self.stats = judge_id, stats
        self.published = RecentIds(DEDUPE_WINDOW)

    def __call__(self, batch: list[Envelope[messages_pb2.Sample]]) -> list[Sequence[Output] | Rejection]:
        results: list[Sequence[Output] | Rejection | None] = [None] * len(batch)
        todo: list[int] = []
        for i, envelope in enumerate(batch):
            if envelope.message.id and envelope.message.id in self.published:
                results[i] = []
                self.stats.skipped += 1
            elif (rejection := _unjudgeable(envelope.message, self.kafka.max_text_bytes)) is not None:
                results[i] = rejection
            else:
                todo.append(i)
        s = self.settings
        attempted = judge_all(
            self.pool,
            [judge_input(batch[i].message) for i in todo],
            timeout_s=s.timeout_s,
            max_retries=s.max_retries,
            backoff_s=s.backoff_s,
            on_call=lambda seconds, error: record_call(self.judge_id, seconds, error),
        )
        now_ms = int(time.time() * 1000)
        for i, outcome in zip(todo, attempted, strict=True):
            sample = batch[i].message
            if outcome.judgment is None:
                error = outcome.error
                assert error is not None
                reason = "invalid_judgment" if is_invalid_judgment(error) else "judge_failed"
                detail = f"{error_name(error)}: {error} (after {outcome.attempts} attempt(s))"
                results[i] = Rejection(reason, detail)
                continue
            oversize = oversize_field([("judgment text", outcome.judgment.text)], self.kafka.max_text_bytes)
            if oversize is not None:
                results[i] = Rejection("oversize_text", f"the judge answered with {oversize}")
                continue
            message = judgment_message(sample, outcome.judgment, self.judge_id, now_ms)
            results[i] = [Output(self.kafka.topic_judgments, message, sample.id)]
            self.published.add(sample.id)
            JUDGMENTS.labels(self.judge_id, polarity_label(outcome.judgment.positive)).inc()
            self.stats.judged += 1
        self.stats.batches += 1
        return [r for r in results if r is not None]


def run(
    kafka: KafkaSettings,
    settings: JudgeSettings,
    *,
    stop_event: threading.Event,
    judge: Judge | None = None,
    ready: threading.Event | None = None,
) -> RunStats:
    """Judge samples until ``stop_event`` is set; the batch in hand is finished and committed first.

    ``judge`` overrides the configured one (already built, e.g. by a benchmark; it must be picklable: each
    worker process gets a copy); ``ready`` is set once the consumer is subscribed.
    """
    make_judge = functools.partial(_same, judge) if judge is not None else None
    judge = judge if judge is not None else judge_from_settings(settings)  # fails fast on a bad judge spec
    judge_id = settings.judge_id or judge_id_of(judge)
    stats = RunStats()
    pool = JudgePool(make_judge or functools.partial(judge_from_settings, settings), settings.concurrency)
    producer = TypedProducer(kafka, service=SERVICE)
    consumer = TypedConsumer(
        kafka,
        group_id=settings.group_id,
        topics=[kafka.topic_samples],
        message_type=messages_pb2.Sample,
        service=SERVICE,
        on_dead_letter=lambda reason: _dead_lettered(judge_id, reason, stats),
    )
    runner = ServiceRunner(
        consumer,
        JudgeProcess(pool, settings, kafka, judge_id, stats),
        ProduceSink(producer, consumer),
        stop_event=stop_event,
        batch_size=settings.batch_size,
        poll_timeout_s=POLL_TIMEOUT_S,
        subscribed=ready,
    )
    health = HealthServer(settings.http_port, ready=lambda: runner.ready).start()
    log.info(
        "judge service starting",
        extra={"judge": judge_id, "http_port": health.port, "topic": kafka.topic_samples,
               "group": settings.group_id, "workers": settings.concurrency},
    )  # fmt: skip
    try:
        runner.run()
    finally:
        pool.close()
        health.stop()
    log.info("judge service stopped", extra=stats.__dict__)
    return stats


def _same(judge: Judge) -> Judge:
    """The judge a worker process is given (a pickled copy of ``judge``)."""
    return judge


def _dead_lettered(judge_id: str, reason: str, stats: RunStats) -> None:
    DEAD_LETTERS.labels(judge_id, reason).inc()
    stats.dead_lettered += 1


def main(**overrides: Any) -> None:
    """Run the service from ``CUTALIGN_*`` settings (``overrides`` win) until SIGTERM/SIGINT."""
    configure_logging(SERVICE)
    run(KafkaSettings(), JudgeSettings(**overrides), stop_event=stop_on_signals())


if __name__ == "__main__":
    main()
