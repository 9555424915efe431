"""Typed, idempotent producer of protobuf messages that checks sizes first and survives broker restarts.

Idempotence + ``acks=all`` means a retried send never duplicates and an acknowledged send is on every in-sync
replica. Delivery is asynchronous for throughput; ``flush()`` is the durability point: it returns once every
message sent so far is acknowledged, so callers commit their input offsets only after a successful flush.

Three things a producer must survive without taking its service down:

* **A message too large to produce.** ``send`` refuses it *before* librdkafka sees it (``MessageTooLarge``,
  with the size and the limit), so the caller can dead-letter the input that made it instead of crashing on
  librdkafka's ``MSG_SIZE_TOO_LARGE`` and re-publishing the batch on every restart.
* **A broker or store restart.** Every unacknowledged message is kept until it is acknowledged. A delivery
  that fails with a retriable error is sent again; a producer the broker *fenced* (its producer id or epoch
  was lost, which is what Tansu answers after its store restarted, and what Kafka answers after a
  producer-id expiry) is replaced by a fresh librdkafka handle and everything unacknowledged is sent again on
  it. Consumers keep one message per key, so a resend that turns out to have landed twice costs nothing.
* **A message the broker refuses for good** (too large for the broker's own limit, an invalid record).
  ``flush`` raises ``DeliveryError`` with those messages in ``rejected`` (their ``opaque`` tags say which
  input made them); resending would fail forever.

``healthy`` is False from a failed flush until the next successful one: readiness probes report it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from google.protobuf.message import Message as ProtoMessage

from cutalign.bus.config import client_config
from cutalign.bus.headers import (
    CURRENT_SCHEMA_VERSION,
    PRODUCER,
    SCHEMA,
    SCHEMA_VERSION,
    TRACE_ID,
    new_trace_id,
)
from cutalign.config import KafkaSettings

log = logging.getLogger(__name__)

# What a record needs besides its key, value and headers (record and batch headers, with room to spare).
RECORD_OVERHEAD = 512

# The broker lost this producer's identity: only a new producer (a new id) can send again.
_FENCED = {
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.UNKNOWN_PRODUCER_ID,
    KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    KafkaError.INVALID_PRODUCER_ID_MAPPING,
    KafkaError._FENCED,
}
# The broker will never take this message.
_REFUSED = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE}


class MessageTooLarge(ValueError):
    """A message is larger than ``kafka.max_message_bytes`` allows: it was not sent."""


@dataclass(frozen=True)
class Refused:
    """A message the broker refused for good, and the caller's tag of it."""

    topic: str
    key: str
    error: str
    opaque: Any


class DeliveryError(RuntimeError):
    """Not everything sent is acknowledged: do not commit the input that produced it.

    ``rejected`` lists the messages the broker refused for good (never sent again); ``pending`` counts those
    still unacknowledged, which the next ``flush`` keeps trying.
    """

    def __init__(self, message: str, *, rejected: list[Refused] | None = None, pending: int = 0) -> None:
        super().__init__(message)
        self.rejected = rejected or []
        self.pending = pending


@dataclass
class _Outstanding:
    topic: str
    value: bytes
    key: str
    headers: list[tuple[str, str | bytes | None]]
    opaque: Any
    error: KafkaError | None = None  # the last failed delivery report (sent again unless refused)


class TypedProducer:
    def __init__(self, settings: KafkaSettings, *, service: str) -> None:
        self.settings = settings
        self.service = service
        self._ids = itertools.count()
        self._outstanding: dict[int, _Outstanding] = {}
        self._lock = threading.Lock()  # delivery reports arrive on the thread that polls/flushes
        self._fenced = False
        self._healthy = True
        self._generation = 0  # delivery reports of a replaced handle are ignored
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        return Producer(
            {
                **client_config(self.settings, client_suffix=f"{self.service}-producer"),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.max.bytes": self.settings.max_message_bytes,
                "error_cb": self._on_error,
            }
        )

    @property
    def healthy(self) -> bool:
        """False from a failed flush until the next successful one."""
        return self._healthy

    # -- sending ---------------------------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        message: ProtoMessage,
        key: str,
        trace_id: str | None = None,
        *,
        opaque: Any = None,
    ) -> None:
        """Queue one message (keyed, with schema/version/trace headers). Durable only after ``flush()``."""
        self.send_raw(
            topic, message.SerializeToString(), key, message.DESCRIPTOR.full_name, trace_id, opaque=opaque
        )

    def check_size(self, value: bytes, key: str) -> None:
        """Raise ``MessageTooLarge`` unless a message of this value and key fits ``max_message_bytes``."""
        size = len(value) + len(key.encode()) + RECORD_OVERHEAD
        if size > self.settings.max_message_bytes:
            raise MessageTooLarge(
                f"the message is {size} bytes (value {len(value)}), over kafka.max_message_bytes="
                f"{self.settings.max_message_bytes}"
            )

    def send_raw(
        self,
        topic: str,
        value: bytes,
        key: str,
        schema: str,
        trace_id: str | None = None,
        *,
        opaque: Any = None,
    ) -> None:
        self.check_size(value, key)
        headers: list[tuple[str, str | bytes | None]] = [
            (SCHEMA, schema),
            (SCHEMA_VERSION, CURRENT_SCHEMA_VERSION),
            (TRACE_ID, trace_id or new_trace_id()),
            (PRODUCER, self.service),
        ]
        with self._lock:
            tag = next(self._ids)
            self._outstanding[tag] = _Outstanding(topic, value, key, headers, opaque)
        self._produce(tag)
        self._producer.poll(0)

    def _produce(self, tag: int) -> None:
        with self._lock:
            item = self._outstanding.get(tag)
        if item is None:
            return
        generation = self._generation
        while True:
            try:
                self._producer.produce(
                    item.topic,
                    value=item.value,
                    key=item.key.encode(),
                    headers=item.headers,
                    on_delivery=lambda err, msg: self._on_delivery(tag, generation, err, msg),
                )
                return
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.1)
            except KafkaException as e:  # librdkafka's own size check (headers it counts differently)
                if e.args and e.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    with self._lock:
                        del self._outstanding[tag]
                    raise MessageTooLarge(f"librdkafka refused the message: {e}") from e
                raise

    def _on_delivery(self, tag: int, generation: int, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            item = self._outstanding.get(tag)
            if item is None or generation != self._generation:
                return
            if err is None:
                del self._outstanding[tag]
                return
            item.error = err
            if err.code() in _FENCED or err.fatal():
                self._fenced = True

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fenced = True
            log.error("producer fatal error; it will be replaced", extra={"error": err.str()})

    # -- durability ------------------------------------------------------------------------------------------

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until everything sent is acknowledged, resending failed and fenced messages meanwhile.

        Raises ``DeliveryError`` when ``timeout_s`` passes first (``pending``) or when the broker refused
        messages for good (``rejected``: they are forgotten; dead-letter their inputs).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self._producer.flush(max(0.0, min(1.0, deadline - time.monotonic())))
            rejected = self._take_refused()
            if self._fenced:
                self._replace()
            for tag in self._failed_tags():
                self._produce(tag)
            with self._lock:
                pending = len(self._outstanding)
            if not pending or time.monotonic() >= deadline:
                break
        self._healthy = not pending and not rejected
        if rejected:
            raise DeliveryError(
                f"the broker refused {len(rejected)} message(s): "
                + "; ".join(f"{r.topic}[{r.key!r}]: {r.error}" for r in rejected[:5]),
                rejected=rejected,
                pending=pending,
            )
        if pending:
            raise DeliveryError(
                f"{pending} message(s) still unacknowledged after {timeout_s:.0f}s (kept; the next flush "
                "sends them again)",
                pending=pending,
            )

    def _take_refused(self) -> list[Refused]:
        with self._lock:
            refused = {t: i for t, i in self._outstanding.items() if i.error and i.error.code() in _REFUSED}
            for tag in refused:
                del self._outstanding[tag]
        return [Refused(i.topic, i.key, i.error.str() if i.error else "", i.opaque) for i in refused.values()]

    def _failed_tags(self) -> list[int]:
        with self._lock:
            failed = sorted(t for t, i in self._outstanding.items() if i.error is not None)
            for tag in failed:
                self._outstanding[tag].error = None
        return failed

    def _replace(self) -> None:
        """A fenced producer cannot send again: a new handle gets a new producer id; resend everything."""
        log.warning(
            "producer fenced by the broker: replacing it and resending what is unacknowledged",
            extra={"service": self.service, "unacknowledged": len(self._outstanding)},
        )
        old = self._producer
        self._generation += 1
        self._producer = self._new_producer()
        self._fenced = False
        old.purge()  # its queued messages would only fail again; they are resent on the new handle
        old.flush(0)  # serves the purge reports (ignored: an old generation)
        with self._lock:
            for item in self._outstanding.values():
                item.error = None
            tags = sorted(self._outstanding)
        for tag in tags:
            self._produce(tag)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> TypedProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
