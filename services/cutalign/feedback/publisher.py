"""Publishing accepted feedback so that a 202 always means "on the broker": one flush serves many requests.

A request may only be answered once its Judgment is acknowledged by the broker (``TypedProducer.flush``).
Flushing once per request would serialise the endpoint on broker round trips, and concurrent flushes on one
producer would mix up whose delivery failed. So requests share flushes (group commit): each request queues its
message and takes a ticket; one of the waiting requests flushes for everyone queued so far while the others
wait; a ticket at or below the flushed mark is durable. Sends and flushes hold one lock, so no delivery report
is ever attributed to the wrong flush. If a flush fails, every ticket it covered is reported failed (the
producer cannot say which message failed): those clients get a 503 and retry, and the builder keeps one
judgment per key, so a message that did land is not counted twice.
"""

from __future__ import annotations

import threading
from collections import deque

from cutalign.bus import DeliveryError, TypedProducer
from cutalign.v1 import messages_pb2

# How long a request waits for the broker's acknowledgement before it is answered 503 (clients retry).
FLUSH_TIMEOUT_S = 10.0


class PublishFailed(RuntimeError):
    """The broker did not acknowledge the batch this message was flushed with; the client should retry."""


class GroupCommitPublisher:
    def __init__(self, producer: TypedProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._producer_lock = threading.Lock()  # every send and flush
        self._flush_lock = threading.Lock()  # one flusher at a time
        self._sent = 0
        self._durable = 0
        self._failed: deque[tuple[int, int, str]] = deque(maxlen=1024)  # (first, last, why) ticket ranges

    def publish(self, message: messages_pb2.Judgment, key: str, trace_id: str | None = None) -> None:
        """Send ``message`` and return once it is acknowledged; raises ``PublishFailed`` otherwise."""
        with self._producer_lock:
            self._producer.send(self._topic, message, key=key, trace_id=trace_id)
            self._sent += 1
            ticket = self._sent
        with self._flush_lock:
            if self._durable < ticket:  # nobody flushed us yet: flush everything queued so far
                with self._producer_lock:
                    first, last = self._durable + 1, self._sent
                    try:
                        self._producer.flush(FLUSH_TIMEOUT_S)
                    except DeliveryError as e:
                        self._failed.append((first, last, str(e)))
                    self._durable = last
            for first, last, why in self._failed:
                if first <= ticket <= last:
                    raise PublishFailed(f"the broker did not acknowledge the feedback: {why}")

    def probe(self, timeout_s: float = 2.0) -> str | None:
        """None if everything sent is acknowledged (now, or by a flush of ``timeout_s``), else why not.

        What ``/readyz`` asks: while the publisher cannot publish, the pod must not get traffic — and the
        flush this runs is what recovers a fenced producer when no request comes to do it.
        """
        if self._producer.healthy:
            return None
        with self._producer_lock:
            try:
                self._producer.flush(timeout_s)
            except DeliveryError as e:
                return str(e)
        return None

    def close(self) -> None:
        with self._producer_lock:
            self._producer.flush()
