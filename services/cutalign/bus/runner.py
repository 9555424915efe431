"""The one service runner: poll -> process -> sink -> durable -> commit, and what goes wrong in between.

The generator, the judge and the target builder are this loop with their own two pieces plugged in
(confluent-kafka's consumer example and quix's ``Application`` have the same shape):

* ``process(batch)`` — the service's logic, one result per polled message, in order: the service's output for
  it (messages to produce, a training example, nothing) or a ``Rejection`` (a stable reason and a detail),
  which the runner dead-letters. It may be slow (policy or judge calls) and does not touch Kafka;
* a ``Sink`` — where outputs become durable. ``put(envelope, output)`` takes one output (or refuses it with a
  ``Rejection``: too large to produce, a duplicate, a sealed iteration...); ``durable(final)`` makes what was
  put durable and answers whether *everything* put so far is, i.e. whether the offsets may be committed.
  ``ProduceSink`` (generator, judge) produces to topics, checking each message against the size limit before
  producing, and flushes; the builder's sink buffers examples and answers True once its shards are written.

What the runner guarantees, for every service alike:

* **Commit after durable.** Offsets are committed only when the sink says everything is durable and the dead
  letters are flushed; a crash before that redelivers, and handlers are idempotent by key.
* **Nothing a message causes stops the service.** A rejected message or output is dead-lettered with its
  reason and the offset moves on. Errors the service declares *transient* (a broker, store or policy server
  restarting) are retried with jittered exponential backoff (tenacity), forever, while ``ready`` is False;
  the service never exits for them. Anything else is a bug or a misconfiguration and stops the service.
* **Slow batches do not stall the group.** Each batch is worked on in a work thread; once it has taken longer
  than ``HOLD_AFTER_S``, the poll thread pauses every assigned partition and keeps polling until it is done,
  so the consumer stays in its group (heartbeats, ``max.poll.interval.ms``) and serves rebalances, and the
  batch's outputs are committed, never published and then judged again by a new owner.
* **Rebalances.** Revoked partitions are handed to ``sink.revoked`` between batches (their uncommitted
  offsets are forgotten by the consumer: the new owner re-reads them).
* **SIGTERM** (``stop_event``): no new batch is taken; the batch in hand is finished, made durable and
  committed if that takes at most ``SHUTDOWN_GRACE_S``; otherwise it is abandoned uncommitted (redelivered to
  the next owner) and the runner returns. So a service stops within ``SHUTDOWN_GRACE_S`` plus the time to
  close its clients (a few seconds), whatever its plug-ins do.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from confluent_kafka import KafkaException
from google.protobuf.message import Message as ProtoMessage
from prometheus_client import Gauge
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from cutalign.bus.consumer import Envelope, TypedConsumer
from cutalign.bus.producer import DeliveryError, MessageTooLarge, TypedProducer

log = logging.getLogger(__name__)

M = TypeVar("M", bound=ProtoMessage)
R = TypeVar("R")
R_in = TypeVar("R_in", contravariant=True)
T = TypeVar("T")

HOLD_AFTER_S = 1.0  # a batch still in the works after this long gets its partitions paused
KEEPALIVE_S = 0.2  # poll interval while paused
SHUTDOWN_GRACE_S = 10.0  # how long SIGTERM waits for the batch in hand
LAG_EVERY_S = 15.0  # lag reads fresh watermarks from the broker: a round trip per partition

OUTPUT_TOO_LARGE = "output_too_large"
OUTPUT_REFUSED = "output_refused"


@dataclass(frozen=True)
class Rejection:
    """Why a message is not processed: a stable machine-readable ``reason`` (dead letters and metrics key on
    it, so never rename one) and a human ``detail``."""

    reason: str
    detail: str


class Sink(Protocol[R_in]):
    """Where a service's outputs become durable (see the module docstring)."""

    def put(self, envelope: Envelope[Any], output: R_in) -> Rejection | None: ...

    def durable(self, final: bool) -> bool: ...

    def revoked(self, partitions: list[tuple[str, int]]) -> None: ...


class Abandoned(RuntimeError):
    """The runner was stopped while a batch was still being worked on or retried; it is not committed."""


@dataclass
class RunnerStats:
    consumed: int = 0
    rejected: int = 0
    batches: int = 0
    retries: int = 0


class ServiceRunner(Generic[M, R]):
    def __init__(
        self,
        consumer: TypedConsumer[M],
        process: Callable[[list[Envelope[M]]], Sequence[R | Rejection]],
        sink: Sink[R],
        *,
        stop_event: threading.Event,
        batch_size: int,
        poll_timeout_s: float | Callable[[], float] = 1.0,
        transient: tuple[type[BaseException], ...] = (),
        on_rejected: Callable[[Rejection], None] = lambda rejection: None,
        lag_gauge: Gauge | None = None,
        subscribed: threading.Event | None = None,
    ) -> None:
        self.consumer = consumer
        self.process = process
        self.sink = sink
        self.stop = stop_event
        self.batch_size = batch_size
        self._poll_timeout = poll_timeout_s if callable(poll_timeout_s) else lambda: float(poll_timeout_s)
        self.transient: tuple[type[BaseException], ...] = (DeliveryError, KafkaException, *transient)
        self.on_rejected = on_rejected
        self.lag_gauge = lag_gauge
        self.stats = RunnerStats()
        self.subscribed = subscribed or threading.Event()
        self._degraded = False
        self._revoked: list[tuple[str, int]] = []
        self._retrying = Retrying(
            retry=retry_if_exception_type(self.transient),
            wait=wait_exponential_jitter(initial=0.2, max=10.0),
            # stopping: a few more tries within the grace period (at most a second apart), then give up
            stop=lambda state: self.stop.is_set() and (state.seconds_since_start or 0) > SHUTDOWN_GRACE_S,
            sleep=self._sleep,
            before_sleep=self._degrade,
            reraise=True,
        )
        consumer.on_revoke = self._revoked.extend  # called on this (the poll) thread, inside poll

    @property
    def ready(self) -> bool:
        """Subscribed, not retrying a failure, not stopping: what ``/readyz`` reports."""
        return self.subscribed.is_set() and not self._degraded and not self.stop.is_set()

    def run(self) -> RunnerStats:
        """Until ``stop_event`` is set (see the module docstring); raises what is neither rejected nor
        transient, after closing the consumer without committing the batch it happened in."""
        next_lag = 0.0
        with self.consumer:
            self.subscribed.set()
            try:
                while not self.stop.is_set():
                    batch = self.consumer.poll_batch(self.batch_size, self._poll_timeout())
                    self._hand_over_revoked()
                    durable = self._work(functools.partial(self._handle, batch))
                    if durable is None:
                        return self.stats
                    if durable:
                        self._commit()
                    if time.monotonic() >= next_lag and self.lag_gauge is not None:
                        self._update_lag()
                        next_lag = time.monotonic() + LAG_EVERY_S
                if self._work(lambda: self._settle(final=True)):
                    self._commit()
            finally:
                self.subscribed.clear()
        return self.stats

    # -- one batch (on the work thread) ----------------------------------------------------------------------

    def _handle(self, batch: list[Envelope[M]]) -> bool:
        results = self._retry(lambda: self.process(batch)) if batch else []
        for envelope, result in zip(batch, results, strict=True):
            rejection = (
                result
                if isinstance(result, Rejection)
                else self._retry(functools.partial(self.sink.put, envelope, result))
            )
            if rejection is not None:
                self.consumer.dead_letter(envelope, rejection.reason, rejection.detail)
                self.stats.rejected += 1
                self.on_rejected(rejection)
        self.stats.consumed += len(batch)
        self.stats.batches += 1 if batch else 0
        return self._settle(final=False)

    def _settle(self, final: bool) -> bool:
        """Make outputs and dead letters durable; whether everything put so far is (so may be committed)."""
        durable = self._retry(lambda: self.sink.durable(final))
        self._retry(self.consumer.flush_dead_letters)
        return durable

    def _commit(self) -> None:
        """On the poll thread (librdkafka's synchronous commit waits on it). A failure is not retried here:
        the offsets stay pending and the next commit includes them."""
        try:
            self.consumer.commit()
        except (KafkaException, DeliveryError) as e:
            log.warning("commit failed; the next one will include these offsets", extra={"error": str(e)})

    def _retry(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried on transient errors with jittered backoff until it works or the runner stops."""
        try:
            result = fn()  # the common case, without the retry machinery (called for every message)
        except self.transient:
            try:
                result = self._retrying(fn)
            except self.transient as e:
                raise Abandoned(f"stopped while retrying: {type(e).__name__}: {e}") from e
        if self._degraded:
            log.info("recovered; ready again", extra={"service": self.consumer.service})
            self._degraded = False
        return result

    def _sleep(self, seconds: float) -> None:
        if self.stop.is_set():
            time.sleep(min(seconds, 1.0))
        else:
            self.stop.wait(seconds)

    def _degrade(self, state: RetryCallState) -> None:
        self._degraded = True
        self.stats.retries += 1
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "transient failure; not ready while retrying",
            extra={
                "service": self.consumer.service,
                "attempt": state.attempt_number,
                "error": f"{type(error).__name__}: {error}",
                "retry_in_s": round(state.upcoming_sleep, 2),
            },
        )

    # -- the poll thread -------------------------------------------------------------------------------------

    def _work(self, fn: Callable[[], bool]) -> bool | None:
        """``fn()`` on a work thread, keeping the consumer alive while it takes long; None if abandoned."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["result"] = fn()
            except BaseException as e:  # handed to the poll thread below
                outcome["error"] = e

        thread = threading.Thread(target=target, name=f"{self.consumer.service}-work", daemon=True)
        thread.start()
        thread.join(HOLD_AFTER_S)
        if thread.is_alive():
            with self.consumer.paused():
                stopping_since: float | None = None
                while thread.is_alive():
                    self.consumer.keep_alive(KEEPALIVE_S)
                    if self.stop.is_set():
                        stopping_since = stopping_since or time.monotonic()
                        if time.monotonic() - stopping_since > SHUTDOWN_GRACE_S:
                            log.warning(
                                "stopping: the batch in hand is abandoned, uncommitted (it is redelivered)",
                                extra={"service": self.consumer.service, "grace_s": SHUTDOWN_GRACE_S},
                            )
                            return None
        self._hand_over_revoked()
        error = outcome.get("error")
        if isinstance(error, Abandoned):
            log.warning(str(error), extra={"service": self.consumer.service})
            return None
        if error is not None:
            raise error
        return bool(outcome["result"])

    def _hand_over_revoked(self) -> None:
        partitions, self._revoked[:] = list(self._revoked), []
        if partitions:
            self.sink.revoked(partitions)

    def _update_lag(self) -> None:
        assert self.lag_gauge is not None
        try:
            self.lag_gauge.set(self.consumer.lag())
        except KafkaException as e:  # a gauge is not worth stopping for; the next try may work
            log.warning("could not read the consumer lag", extra={"error": str(e)})


@dataclass(frozen=True)
class Output:
    """A message to produce for an input message."""

    topic: str
    message: ProtoMessage
    key: str


class ProduceSink:
    """Outputs produced to topics, each checked against the size limit first; durable once flushed.

    All outputs of one input are checked before any is sent, so an input is either produced whole or
    dead-lettered whole (``output_too_large``). A message the broker still refuses for good
    (``output_refused``) dead-letters its input; what is merely unacknowledged is a transient failure.
    """

    def __init__(self, producer: TypedProducer, consumer: TypedConsumer[Any]) -> None:
        self.producer = producer
        self.consumer = consumer

    def put(self, envelope: Envelope[Any], output: Sequence[Output]) -> Rejection | None:
        encoded = [(o, o.message.SerializeToString()) for o in output]
        for o, value in encoded:
            try:
                self.producer.check_size(value, o.key)
            except MessageTooLarge as e:
                return Rejection(
                    OUTPUT_TOO_LARGE, f"its {o.message.DESCRIPTOR.name} {o.key!r} cannot be produced: {e}"
                )
        for o, value in encoded:
            self.producer.send_raw(
                o.topic, value, o.key, o.message.DESCRIPTOR.full_name, envelope.trace_id, opaque=envelope
            )
        return None

    def durable(self, final: bool) -> bool:
        try:
            self.producer.flush()
        except DeliveryError as e:
            refused = {id(r.opaque): r for r in e.rejected}
            for r in refused.values():
                self.consumer.dead_letter(
                    r.opaque, OUTPUT_REFUSED, f"the broker refused its output: {r.error}"
                )
            if e.pending:
                raise
        return True

    def revoked(self, partitions: list[tuple[str, int]]) -> None:
        """Nothing to drop: what was produced for revoked partitions is on the broker (idempotent by key)."""
