"""The target builder: judgments in from Kafka, versioned CUT training shards out to S3, exactly-once effect.

Kafka delivers at least once; the effect is exactly once because of three rules:
1. **Commit after durable.** The consumer commits everything polled so far, so the builder commits only when
   no example is buffered: after a whole poll batch has been processed and every buffer has been published as
   a shard *and* its manifest. A crash before the commit redelivers those judgments.
2. **Deduplicate against the store.** A judgment whose sample id already has an example in a published shard
   of its iteration (see ``ledger``) is a duplicate and skipped — whether it was redelivered after a crash or
   re-sent by its producer. The ledger is rebuilt from the store at start-up and refreshed after a partition
   handover, so this holds across restarts and builders.
3. **Deterministic, immutable shards.** A shard's key and bytes derive from its topic-partition and offsets
   (``shards``), and the iteration manifest resolves any overlap left by a crash: first occurrence wins.

Partition revocation: the buffered examples of revoked partitions are **dropped**, not flushed. They were
never committed, so the new owner re-reads them from the committed offset and builds them; flushing them here
instead would race the new owner on the same offsets (two shards for the same judgments, or a shard key
rewritten by two builders) and could not be followed by a commit anyway, because the consumer forgets the
revoked partitions' positions. Dropping costs only rework; the ledger is refreshed before the next batch so
the shards the previous owner published count as seen.

Sealing (see ``seal``): on ``POST /seal?iteration=N`` (buffers flushed first), when ``seal_count`` examples or
``seal_deadline_s`` is reached, or by another process (``cutalign builder seal``). After a seal the builder
moves on to the next iteration; a judgment for a sealed iteration is *late*: unless its sample is already in
that iteration (a duplicate), ``late_policy`` moves it to the open iteration or dead-letters it with
``late_for_sealed_iteration``. Nothing is silently dropped.

SIGTERM: the batch in hand is processed, every buffer published, the offsets committed, then it exits.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from confluent_kafka import KafkaException
from google.protobuf.message import Message

from cutalign.builder import metrics
from cutalign.builder.ledger import Ledger
from cutalign.builder.requests import SealRequests, manifest_summary
from cutalign.builder.seal import EmptyIteration, complete_seal, open_iteration, seal_iteration
from cutalign.builder.shards import write_shard
from cutalign.builder.validate import (
    UNKNOWN_ITERATION,
    Accepted,
    Rejection,
    Rules,
    apply_late_policy,
    process,
)
from cutalign.builder.wire import LenientJudgment
from cutalign.bus import Envelope, TypedConsumer
from cutalign.config import BuilderSettings, KafkaSettings, S3Settings
from cutalign.observability import HealthServer, configure_logging
from cutalign.store import ArtifactStore, ChecksumMismatch
from cutalign.v1 import training_pb2

log = logging.getLogger(__name__)

SERVICE = "target-builder"
POLL_MAX_MESSAGES = 1000
LAG_EVERY_S = 15.0  # the bus reads fresh watermarks from the broker: a round trip per partition
SHARD_WRITERS = 8  # shards of one flush go up concurrently (S3 latency, not CPU, bounds a flush)


@dataclass
class _Item:
    envelope: Envelope[Message]
    example: training_pb2.TrainingExample


@dataclass
class RunStats:
    consumed: int = 0
    examples: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    late_moved: int = 0
    shards: int = 0
    seals: int = 0


class TargetBuilder:
    """One builder process: ``serve`` runs the loop (and the HTTP endpoints) until stopped."""

    def __init__(
        self,
        kafka: KafkaSettings,
        s3: S3Settings,
        settings: BuilderSettings,
        *,
        store: ArtifactStore | None = None,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.store = store or ArtifactStore(s3)
        self.store.ensure_bucket()
        self.ledger = Ledger(self.store)
        self.open = open_iteration(self.store, settings.iteration)
        self.stats = RunStats()
        self.ready = threading.Event()
        self.http_port: int | None = None
        self._buffers: dict[tuple[str, int], list[_Item]] = {}
        self._buffered_ids: set[str] = set()
        self._oldest: float | None = None
        self._needs_refresh = False
        self._requests = SealRequests()
        self._own_dead_letters = 0
        self._bus_dead_letters = 0
        self._host = socket.gethostname()
        self._writers = ThreadPoolExecutor(SHARD_WRITERS, thread_name_prefix="shard-writer")
        self.rules = Rules(self.open, settings.iteration, settings.max_text_bytes)
        metrics.OPEN_ITERATION.set(self.open)

    # -- the loop --------------------------------------------------------------------------------------------

    def serve(self, stop_event: threading.Event) -> RunStats:
        health = HealthServer(
            self.settings.http_port,
            ready=lambda: self.ready.is_set() and not stop_event.is_set(),
            post_routes={"/seal": self._requests.route},
        ).start()
        self.http_port = health.port
        log.info("target builder starting", extra={"open_iteration": self.open, "http_port": health.port,
                                                   "topic": self.kafka.topic_judgments,
                                                   "group": self.settings.group_id})  # fmt: skip
        try:
            with TypedConsumer(
                self.kafka,
                group_id=self.settings.group_id,
                topics=[self.kafka.topic_judgments],
                message_type=LenientJudgment,
                service=SERVICE,
                on_revoke=self._on_revoke,
            ) as consumer:
                self._loop(consumer, stop_event)
        finally:
            self.ready.clear()
            health.stop()
            self._writers.shutdown()
            self._requests.refuse_all(503, "the builder stopped; retry on the new one")
        log.info("target builder stopped", extra=asdict(self.stats))
        return self.stats

    def _loop(self, consumer: TypedConsumer[Message], stop_event: threading.Event) -> None:
        self.ready.set()
        next_lag = 0.0
        while not stop_event.is_set():
            batch = consumer.poll_batch(POLL_MAX_MESSAGES, self._poll_timeout())
            self._count_bus_dead_letters(consumer)
            if self._needs_refresh:
                self.ledger.refresh(self.open)
                self._needs_refresh = False
            future_checked = False
            for envelope in batch:
                future_checked = self._take(consumer, envelope, future_checked)
            metrics.BUFFERED.set(len(self._buffered_ids))
            if self._flush_due():
                self._flush(consumer)
            self._serve_seal_requests(consumer)
            self._maybe_auto_seal(consumer)
            if not self._buffers:
                consumer.commit()  # everything polled is durable: published, skipped or dead-lettered
            if time.monotonic() >= next_lag:
                self._update_lag(consumer)
                next_lag = time.monotonic() + LAG_EVERY_S
        self._flush(consumer)
        consumer.commit()

    def _update_lag(self, consumer: TypedConsumer[Message]) -> None:
        try:
            metrics.LAG.set(consumer.lag())
        except KafkaException as e:  # a gauge is not worth stopping the builder for; the next try may work
            log.warning("could not read the consumer lag", extra={"error": str(e)})

    def _poll_timeout(self) -> float:
        if self._oldest is None:
            return 1.0
        remaining = self.settings.shard_max_seconds - (time.monotonic() - self._oldest)
        return min(1.0, max(0.01, remaining))

    def _count_bus_dead_letters(self, consumer: TypedConsumer[Message]) -> None:
        bus = consumer.dead_lettered - self._own_dead_letters
        if bus > self._bus_dead_letters:
            metrics.DEAD_LETTERED.labels("malformed").inc(bus - self._bus_dead_letters)
            self.stats.dead_lettered += bus - self._bus_dead_letters
            self._bus_dead_letters = bus

    # -- one judgment ----------------------------------------------------------------------------------------

    def _take(
        self, consumer: TypedConsumer[Message], envelope: Envelope[Message], future_checked: bool
    ) -> bool:
        """Process one judgment; returns whether this batch already re-checked the open iteration's seal."""
        metrics.CONSUMED.inc()
        self.stats.consumed += 1
        outcome = process(envelope, self.rules)
        if isinstance(outcome, Rejection) and outcome.reason == UNKNOWN_ITERATION and not future_checked:
            # A judgment for a later iteration: maybe the open one was sealed by another process meanwhile.
            future_checked = True
            if self._advance_if_sealed(consumer):
                outcome = process(envelope, self.rules)
        if isinstance(outcome, Accepted) and outcome.late_from is not None:
            if outcome.example.sample_id in self.ledger.sealed_ids(outcome.late_from):
                self._duplicate(outcome.example)
                return future_checked
            outcome = apply_late_policy(outcome, self.settings.late_policy)
            if isinstance(outcome, Accepted):
                self._late_moved()
        if isinstance(outcome, Rejection):
            self._dead_letter(consumer, envelope, outcome)
        else:
            self._buffer(_Item(envelope, outcome.example))
        return future_checked

    def _buffer(self, item: _Item) -> None:
        sample_id = item.example.sample_id
        if sample_id in self._buffered_ids or sample_id in self.ledger.ids(self.open):
            self._duplicate(item.example)
            return
        position = (item.envelope.topic, item.envelope.partition)
        self._buffers.setdefault(position, []).append(item)
        self._buffered_ids.add(sample_id)
        if self._oldest is None:
            self._oldest = time.monotonic()

    def _late_moved(self) -> None:
        metrics.LATE_MOVED.inc()
        self.stats.late_moved += 1

    def _duplicate(self, example: training_pb2.TrainingExample) -> None:
        metrics.DUPLICATES.inc()
        self.stats.duplicates += 1
        log.debug("duplicate judgment skipped", extra={"sample_id": example.sample_id})

    def _dead_letter(
        self, consumer: TypedConsumer[Message], envelope: Envelope[Message], why: Rejection
    ) -> None:
        consumer.dead_letter(envelope, why.reason, why.detail)
        self._own_dead_letters += 1
        self.stats.dead_lettered += 1
        metrics.DEAD_LETTERED.labels(why.reason).inc()

    def _on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Drop what revoked partitions buffered (see the module docstring for why not flush)."""
        dropped = sum(len(self._buffers.pop(tp, [])) for tp in partitions)
        self._buffered_ids = {i.example.sample_id for items in self._buffers.values() for i in items}
        if not self._buffers:
            self._oldest = None
        self._needs_refresh = True
        metrics.BUFFERED.set(len(self._buffered_ids))
        log.info("partitions revoked", extra={"partitions": partitions, "dropped_examples": dropped})

    # -- publishing ------------------------------------------------------------------------------------------

    def _flush_due(self) -> bool:
        if not self._buffers or self._oldest is None:
            return False
        full = any(len(items) >= self.settings.shard_max_examples for items in self._buffers.values())
        return full or time.monotonic() - self._oldest >= self.settings.shard_max_seconds

    def _flush(self, consumer: TypedConsumer[Message]) -> None:
        """Publish every buffer as shards of the open iteration, then run the seal handshake on them."""
        if not self._buffers:
            return
        started = time.monotonic()
        iteration, size = self.open, self.settings.shard_max_examples
        chunks = [
            items[i : i + size]
            for _, items in sorted(self._buffers.items())
            for i in range(0, len(items), size)
        ]
        manifests = self._writers.map(
            lambda chunk: write_shard(self.store, iteration, [i.example for i in chunk]), chunks
        )
        published = list(zip(manifests, chunks, strict=True))  # re-raises the first failed write: no commit
        for manifest, chunk in published:
            self.ledger.record(iteration, manifest, [i.example.sample_id for i in chunk])
        metrics.SHARDS.inc(len(published))
        self.stats.shards += len(published)
        self._buffers.clear()
        self._buffered_ids.clear()
        self._oldest = None
        metrics.BUFFERED.set(0)
        metrics.FLUSH_SECONDS.observe(time.monotonic() - started)
        # The handshake: our shard manifests are published; is a seal of this iteration under way?
        sealed = complete_seal(self.store, iteration)
        listed = {s.key for s in sealed.shards} if sealed is not None else None
        late: list[_Item] = []
        orphans: list[str] = []
        for manifest, chunk in published:
            if listed is None or manifest.key in listed:
                self._count_examples(chunk)
            else:
                orphans.append(manifest.key)
                late.extend(chunk)
        if orphans:
            log.warning(
                "shards published after their iteration was sealed: their judgments are late",
                extra={"iteration": iteration, "shards": orphans, "judgments": len(late)},
            )
        if sealed is not None:
            self._advance(sealed)
            self._relocate_late(consumer, late, iteration)

    def _count_examples(self, chunk: list[_Item]) -> None:
        for kind, n in Counter(item.example.kind for item in chunk).items():
            metrics.EXAMPLES.labels(training_pb2.ExampleKind.Name(kind)).inc(n)
        self.stats.examples += len(chunk)

    def _relocate_late(
        self, consumer: TypedConsumer[Message], late: list[_Item], sealed_iteration: int
    ) -> None:
        for item in late:
            moved = apply_late_policy(
                Accepted(item.example, late_from=sealed_iteration), self.settings.late_policy
            )
            if isinstance(moved, Rejection):
                self._dead_letter(consumer, item.envelope, moved)
            else:
                self._late_moved()
                example = training_pb2.TrainingExample()
                example.CopyFrom(item.example)
                example.iteration = self.open
                self._buffer(_Item(item.envelope, example))
        self._flush(consumer)

    # -- sealing ---------------------------------------------------------------------------------------------

    def _advance(self, sealed: training_pb2.IterationManifest) -> None:
        self.ledger.sealed(sealed.iteration, sealed)
        self.open = open_iteration(self.store, sealed.iteration + 1)
        self.rules = Rules(self.open, self.settings.iteration, self.settings.max_text_bytes)
        metrics.OPEN_ITERATION.set(self.open)
        log.info("iteration sealed; building the next", extra={"sealed": sealed.iteration, "open": self.open})

    def _advance_if_sealed(self, consumer: TypedConsumer[Message]) -> bool:
        before = self.open
        if self._buffers:
            self._flush(consumer)  # its handshake advances past a sealed iteration
        else:
            sealed = complete_seal(self.store, self.open)
            if sealed is not None:
                self._advance(sealed)
        return self.open != before

    def _seal_open(self, consumer: TypedConsumer[Message], trigger: str) -> training_pb2.IterationManifest:
        """Flush, then seal the open iteration (or get its manifest if another process sealed it)."""
        iteration = self.open
        self._flush(consumer)
        manifest = seal_iteration(self.store, self.settings, iteration, sealed_by=f"{trigger}@{self._host}")
        metrics.SEALS.labels(trigger).inc()
        self.stats.seals += 1
        if self.open == iteration:
            self._advance(manifest)
        return manifest

    def _maybe_auto_seal(self, consumer: TypedConsumer[Message]) -> None:
        count, deadline = self.settings.seal_count, self.settings.seal_deadline_s
        if count is not None and len(self.ledger.ids(self.open)) + len(self._buffered_ids) >= count:
            self._seal_open(consumer, "auto:count")
            return
        first_ms = self.ledger.first_shard_ms(self.open)
        if deadline is not None and first_ms is not None and time.time() * 1000 - first_ms >= deadline * 1000:
            self._seal_open(consumer, "auto:deadline")

    def _serve_seal_requests(self, consumer: TypedConsumer[Message]) -> None:
        for request in self._requests.pending():
            try:
                if request.iteration > self.open:
                    request.answer(409, {"error": f"iteration {request.iteration} is not open yet: "
                                                  f"this builder builds iteration {self.open}"})  # fmt: skip
                    continue
                if request.iteration == self.open:
                    manifest = self._seal_open(consumer, "http")
                else:  # already sealed: the same answer again (idempotent)
                    manifest = seal_iteration(self.store, self.settings, request.iteration, sealed_by="http")
                request.answer(200, manifest_summary(self.store, manifest))
            except (EmptyIteration, ChecksumMismatch) as e:
                request.answer(409, {"error": str(e)})
            except Exception as e:
                request.answer(500, {"error": f"{type(e).__name__}: {e}"})
                raise


def run(
    kafka: KafkaSettings,
    s3: S3Settings,
    settings: BuilderSettings,
    *,
    stop_event: threading.Event,
    store: ArtifactStore | None = None,
) -> RunStats:
    """Build shards from judgments until ``stop_event`` is set; buffers are published and committed first."""
    return TargetBuilder(kafka, s3, settings, store=store).serve(stop_event)


def main() -> None:
    """Run the service from ``CUTALIGN_*`` settings until SIGTERM/SIGINT."""
    configure_logging(SERVICE)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run(KafkaSettings(), S3Settings(), BuilderSettings(), stop_event=stop)  # type: ignore[call-arg]


if __name__ == "__main__":
    main()
