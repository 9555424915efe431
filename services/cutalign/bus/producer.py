"""Typed, idempotent producer of protobuf messages.

Idempotence + ``acks=all`` means a retried send never duplicates and an acknowledged send is on every in-sync
replica. Delivery is asynchronous for throughput; ``flush()`` is the durability point: it waits for every
outstanding message and raises ``DeliveryError`` if any failed, so callers commit their input offsets only
after a successful flush.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, Message, Producer
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


class DeliveryError(RuntimeError):
    """At least one message was not acknowledged by the broker; do not commit the input that produced it."""


class TypedProducer:
    def __init__(self, settings: KafkaSettings, *, service: str) -> None:
        self.settings = settings
        self.service = service
        self._failures: list[str] = []
        self._producer = Producer(
            {
                **client_config(settings, client_suffix=f"{service}-producer"),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.max.bytes": settings.max_message_bytes,
            }
        )

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}[{msg.key()!r}]: {err.str()}")

    def send(
        self,
        topic: str,
        message: ProtoMessage,
        key: str,
        trace_id: str | None = None,
    ) -> None:
        """Queue one message (keyed, with schema/version/trace headers). Durable only after ``flush()``."""
        self.send_raw(topic, message.SerializeToString(), key, message.DESCRIPTOR.full_name, trace_id)

    def send_raw(self, topic: str, value: bytes, key: str, schema: str, trace_id: str | None = None) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            (SCHEMA, schema),
            (SCHEMA_VERSION, CURRENT_SCHEMA_VERSION),
            (TRACE_ID, trace_id or new_trace_id()),
            (PRODUCER, self.service),
        ]
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key.encode(), headers=headers, on_delivery=self._on_delivery
                )
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        remaining = self._producer.flush(timeout_s)
        while remaining and time.monotonic() < deadline:
            remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
        failures, self._failures = self._failures, []
        if remaining:
            raise DeliveryError(f"{remaining} message(s) still unacknowledged after {timeout_s:.0f}s")
        if failures:
            raise DeliveryError(f"{len(failures)} message(s) failed: {'; '.join(failures[:5])}")

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> TypedProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
