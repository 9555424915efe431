"""Count the dead-lettered messages that belong to one iteration.

A prompt the generator rejects, a sample the judge cannot judge and a judgment the builder refuses never
become training examples; without counting them, an iteration with a few bad prompts would wait for its whole
deadline. Each ``DeadLetter`` carries the original message and its schema header, so the iteration can be read
from the original (``Prompt.iteration``, ``Sample.iteration``, ``Judgment.sample.iteration``).

The counter reads the dead-letter topic from the beginning in a consumer group of its own and never commits,
so it disturbs no other reader. Records are deduplicated by (schema, key): a message dead-lettered twice (a
redelivery after a crash) counts once. A dead letter whose original cannot be decoded names no iteration and
is not counted.
"""

from __future__ import annotations

import logging
import uuid
from types import TracebackType

from google.protobuf.message import DecodeError

from cutalign.bus import TypedConsumer
from cutalign.bus.headers import SCHEMA
from cutalign.config import KafkaSettings
from cutalign.v1 import messages_pb2, training_pb2

log = logging.getLogger(__name__)


def iteration_of(record: training_pb2.DeadLetter) -> int | None:
    """The iteration of a dead letter's original message, or None if it cannot be told."""
    schema = record.headers.get(SCHEMA, "")
    try:
        if schema == messages_pb2.Prompt.DESCRIPTOR.full_name:
            return messages_pb2.Prompt.FromString(record.original_value).iteration
        if schema == messages_pb2.Sample.DESCRIPTOR.full_name:
            return messages_pb2.Sample.FromString(record.original_value).iteration
        if schema == messages_pb2.Judgment.DESCRIPTOR.full_name:
            return messages_pb2.Judgment.FromString(record.original_value).sample.iteration
    except DecodeError:
        return None
    return None


class DeadLetterCounter:
    """Distinct dead letters of one iteration: ``with DeadLetterCounter(kafka, i) as c: c.poll(1.0)``."""

    def __init__(
        self, kafka: KafkaSettings, iteration: int, *, group_prefix: str = "cutalign-pipeline"
    ) -> None:
        self.iteration = iteration
        self._keys: set[tuple[str, bytes]] = set()
        self._consumer = TypedConsumer(
            kafka,
            group_id=f"{group_prefix}-deadletters-{uuid.uuid4().hex[:12]}",
            topics=[kafka.topic_deadletter],
            message_type=training_pb2.DeadLetter,
            service="pipeline-deadletter-counter",
        )

    @property
    def count(self) -> int:
        return len(self._keys)

    def poll(self, timeout_s: float, max_messages: int = 1000) -> int:
        """Read what arrived (waiting up to ``timeout_s``); returns the running count."""
        for envelope in self._consumer.poll_batch(max_messages, timeout_s):
            record = envelope.message
            if iteration_of(record) == self.iteration:
                where = record.position
                key = record.original_key or f"{where.topic}-{where.partition}-{where.offset}".encode()
                self._keys.add((record.headers.get(SCHEMA, ""), key))
        return self.count

    def __enter__(self) -> DeadLetterCounter:
        self._consumer.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._consumer.close()
