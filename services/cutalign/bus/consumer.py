"""Typed consumer with a dead-letter policy and commit-after-durable semantics.

The contract every service relies on:
* ``poll_batch`` returns decoded messages of the expected type. A message that fails to decode, claims another
  schema, or an unknown schema version is published to the dead-letter topic with the reason and skipped — the
  consumer never crashes or stalls on bad input.
* Nothing is committed automatically. ``commit()`` commits the position after everything polled so far
  (dead-lettered messages included); call it only after the outputs of those messages are durable (a flushed
  producer, a written shard). A crash before the commit redelivers the batch: handlers are idempotent by key.
* ``dead_letter()`` publishes a ``DeadLetter`` record for a message the service rejects after decoding
  (validation, a judge that keeps failing); the dead-letter producer is flushed before each commit, so a
  committed offset always has its dead-letter record on the broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from cutalign.bus.config import client_config
from cutalign.bus.headers import CURRENT_SCHEMA_VERSION, SCHEMA, SCHEMA_VERSION, TRACE_ID, decode_headers
from cutalign.bus.producer import TypedProducer
from cutalign.config import KafkaSettings
from cutalign.v1 import common_pb2, training_pb2

log = logging.getLogger(__name__)

M = TypeVar("M", bound=ProtoMessage)

# Room for the dead-letter record's own fields and headers next to the original bytes.
DEAD_LETTER_OVERHEAD = 64 * 1024

# Commit failures that mean "the group moved on": the batch will be redelivered to the new owner.
_REBALANCE_CODES = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._NO_OFFSET,
}


@dataclass(frozen=True)
class Envelope(Generic[M]):
    """A decoded message and where it came from."""

    message: M
    key: str
    topic: str
    partition: int
    offset: int
    headers: dict[str, str] = field(default_factory=dict)
    value: bytes = b""

    @property
    def trace_id(self) -> str | None:
        return self.headers.get(TRACE_ID)

    @property
    def position(self) -> common_pb2.KafkaPosition:
        return common_pb2.KafkaPosition(topic=self.topic, partition=self.partition, offset=self.offset)


class TypedConsumer(Generic[M]):
    def __init__(
        self,
        settings: KafkaSettings,
        *,
        group_id: str,
        topics: list[str],
        message_type: type[M],
        service: str,
        on_revoke: Callable[[list[tuple[str, int]]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.message_type = message_type
        self.service = service
        self._on_revoke_hook = on_revoke
        self._pending: dict[tuple[str, int], int] = {}
        self._deadletters = TypedProducer(settings, service=f"{service}-deadletter")
        self._dead_lettered = 0
        self._consumer = Consumer(
            {
                **client_config(settings, client_suffix=f"{service}-consumer"),
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": settings.heartbeat_interval_ms,
                "fetch.message.max.bytes": settings.max_message_bytes,
                "enable.partition.eof": False,
            }
        )

    # -- lifecycle -----------------------------------------------------------------------------------------

    def __enter__(self) -> TypedConsumer[M]:
        self._consumer.subscribe(self.topics, on_revoke=self._revoked, on_lost=self._revoked)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._deadletters.flush()
        del self._deadletters  # drop the librdkafka handle now, not at GC time (it keeps reconnecting)
        self._consumer.close()

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = [(tp.topic, tp.partition) for tp in partitions]
        if self._on_revoke_hook is not None:
            self._on_revoke_hook(lost)
        for tp in lost:  # their uncommitted messages go to the new owner; we must not commit for them
            self._pending.pop(tp, None)

    # -- consuming -----------------------------------------------------------------------------------------

    def poll_batch(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[Envelope[M]]:
        batch: list[Envelope[M]] = []
        for raw in self._consumer.consume(max_messages, timeout_s):
            err = raw.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error", extra={"error": err.str(), "service": self.service})
                continue
            envelope = self._decode(raw)
            topic, partition, offset = _where(raw)
            self._pending[(topic, partition)] = offset + 1
            if envelope is not None:
                batch.append(envelope)
        return batch

    def _decode(self, raw: KafkaMessage) -> Envelope[M] | None:
        headers = decode_headers(raw.headers())
        value = raw.value() or b""
        expected = self.message_type.DESCRIPTOR.full_name
        schema = headers.get(SCHEMA, expected)
        version = headers.get(SCHEMA_VERSION, CURRENT_SCHEMA_VERSION)
        if schema != expected:
            self._publish_dead_letter(
                raw, headers, "wrong_schema", f"expected {expected}, message says {schema}"
            )
            return None
        if version != CURRENT_SCHEMA_VERSION:
            self._publish_dead_letter(
                raw,
                headers,
                "unknown_schema_version",
                f"schema-version {version!r}; this consumer reads {CURRENT_SCHEMA_VERSION}",
            )
            return None
        message = self.message_type()
        try:
            message.ParseFromString(value)
        except DecodeError as e:
            self._publish_dead_letter(raw, headers, "decode_error", f"not a valid {expected}: {e}")
            return None
        key = (raw.key() or b"").decode("utf-8", errors="replace")
        return Envelope(message, key, *_where(raw), headers, value)

    # -- dead letters --------------------------------------------------------------------------------------

    @property
    def dead_lettered(self) -> int:
        return self._dead_lettered

    def dead_letter(self, envelope: Envelope[M], reason: str, detail: str) -> None:
        """Reject a decoded message: publish it with the reason; its offset is committed with the batch."""
        self._send_dead_letter(
            envelope.value, envelope.key.encode(), envelope.position, envelope.headers, reason, detail
        )

    def _publish_dead_letter(
        self, raw: KafkaMessage, headers: dict[str, str], reason: str, detail: str
    ) -> None:
        topic, partition, offset = _where(raw)
        position = common_pb2.KafkaPosition(topic=topic, partition=partition, offset=offset)
        self._send_dead_letter(raw.value() or b"", raw.key() or b"", position, headers, reason, detail)

    def _send_dead_letter(
        self,
        value: bytes,
        key: bytes,
        position: common_pb2.KafkaPosition,
        headers: dict[str, str],
        reason: str,
        detail: str,
    ) -> None:
        limit = self.settings.max_message_bytes - DEAD_LETTER_OVERHEAD
        if (
            len(value) > limit
        ):  # the record must fit on the dead-letter topic, or the commit could never happen
            detail = f"[original value truncated from {len(value)} to {limit} bytes] {detail}"
            value = value[:limit]
        record = training_pb2.DeadLetter(
            original_value=value,
            original_key=key,
            position=position,
            reason=reason,
            detail=detail[:2000],
            service=self.service,
            created_at_ms=int(time.time() * 1000),
            headers=headers,
        )
        log.warning(
            "dead-lettered",
            extra={
                "reason": reason,
                "topic": position.topic,
                "partition": position.partition,
                "offset": position.offset,
                "service": self.service,
            },
        )
        key_text = (
            key.decode("utf-8", errors="replace")
            or f"{position.topic}-{position.partition}-{position.offset}"
        )
        self._deadletters.send(self.settings.topic_deadletter, record, key_text, headers.get(TRACE_ID))
        self._dead_lettered += 1

    # -- committing ----------------------------------------------------------------------------------------

    def commit(self) -> bool:
        """Commit everything polled so far. False if a rebalance took the partitions (batch redelivered)."""
        self._deadletters.flush()
        if not self._pending:
            return True
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._pending.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            if e.args and e.args[0].code() in _REBALANCE_CODES:
                log.warning(
                    "commit skipped during rebalance; batch will be redelivered",
                    extra={"service": self.service, "error": str(e)},
                )
                self._pending.clear()
                return False
            raise
        self._pending.clear()
        return True

    def lag(self) -> int:
        """Messages between this group's position and the end of its assigned partitions."""
        total = 0
        for tp in self._consumer.assignment():
            _, high = self._consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
            position = self._consumer.position([tp])[0].offset
            total += max(0, high - position) if position >= 0 else high
        return total


def _where(raw: KafkaMessage) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed message (librdkafka always sets them on those)."""
    topic, partition, offset = raw.topic(), raw.partition(), raw.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset
