"""The target builder: judgments in from Kafka, versioned CUT training shards out to S3, exactly-once effect.

It runs on the service runner (``cutalign.bus.runner``) like the generator and the judge: its ``process`` is
``validate.process`` (pure), and ``TargetBuilder`` is its sink, whose durability point is a shard write
rather than a produce. Kafka delivers at least once; the effect is exactly once because of three rules:
1. **Commit after durable.** The consumer commits everything polled so far, so the sink says "durable" only
   when no example is buffered: every buffer has been published as a shard *and* its manifest. A crash before
   the commit redelivers those judgments.
2. **Deduplicate against the store.** A judgment whose sample id already has an example in a published shard
   of its iteration, or in one of the ``dedupe_iterations`` sealed before it (see ``ledger``), is a duplicate
   and skipped — whether it was redelivered after a crash or re-sent by its producer. The ledger is rebuilt
   from the store at start-up and refreshed after a partition handover, so this holds across restarts and
   builders.
3. **Deterministic, immutable shards.** A shard's key and bytes derive from its topic-partition and offsets
   (``shards``), and the iteration manifest resolves any overlap left by a crash: first occurrence wins.

Partition revocation: the buffered examples of revoked partitions are **dropped**, not flushed. They were
never committed, so the new owner re-reads them from the committed offset and builds them; flushing them here
instead would race the new owner on the same offsets (two shards for the same judgments, or a shard key
rewritten by two builders) and could not be followed by a commit anyway, because the consumer forgets the
revoked partitions' positions. Dropping costs only rework; the ledger is refreshed before the next batch so
the shards the previous owner published count as seen.

Routing (see ``validate.route``): a judgment with iteration 0 (production feedback) goes to the open
iteration, the lowest unsealed one. Sealing (see ``seal``): on ``POST /seal?iteration=N`` (with the admin
token; buffers flushed first), when ``seal_count`` examples or ``seal_deadline_s`` is reached, or by another
process (``cutalign builder seal``). After a seal the builder moves on to the next iteration; a judgment for a
sealed iteration is *late*: unless its sample is already in that iteration (a duplicate), it moves to the open
iteration — production feedback always, the judge service's per ``late_policy``, which may dead-letter it
with ``late_for_sealed_iteration``. Nothing is silently dropped.

Store outages: every S3 call the builder makes is retried by the runner with backoff (the builder stays up,
``/readyz`` says 503 meanwhile, nothing is committed until the shards are written); a seal requested during
an outage is answered 503. SIGTERM: the batch in hand is processed, every buffer published, the offsets
committed, then it exits (within the runner's grace period).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import urllib3
from google.protobuf.message import Message
from minio.error import S3Error

from cutalign.admin_token import admin_token
from cutalign.builder import metrics
from cutalign.builder.ledger import Ledger
from cutalign.builder.requests import SealRequests, manifest_summary
from cutalign.builder.seal import EmptyIteration, complete_seal, open_iteration, seal_iteration
from cutalign.builder.shards import write_shard
from cutalign.builder.validate import (
    UNKNOWN_ITERATION,
    Accepted,
    Rules,
    apply_late_policy,
    process,
    route,
)
from cutalign.builder.wire import LenientJudgment
from cutalign.bus import Envelope, TypedConsumer
from cutalign.bus.runner import Rejection, ServiceRunner
from cutalign.config import BuilderSettings, KafkaSettings, S3Settings
from cutalign.observability import HealthServer, configure_logging, stop_on_signals
from cutalign.store import ArtifactStore, ChecksumMismatch
from cutalign.v1 import training_pb2

log = logging.getLogger(__name__)

SERVICE = "target-builder"
POLL_MAX_MESSAGES = 1000
SHARD_WRITERS = 8  # shards of one flush go up concurrently (S3 latency, not CPU, bounds a flush)
# The store restarting: retried with backoff by the runner, never a reason to exit.
STORE_ERRORS = (S3Error, urllib3.exceptions.HTTPError)


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
    """One builder process: ``serve`` runs the service runner, with this builder as its sink, until stopped.

    ``admin_token`` is the bearer token ``POST /seal`` requires (``builder.admin_token``, or generated).
    """

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
        self.ledger = Ledger(self.store)
        self.open = settings.iteration  # until the store says which is open (``_ensure_open``)
        self.stats = RunStats()
        self.ready = threading.Event()  # subscribed (``/readyz`` also says whether a failure is retried)
        self.http_port: int | None = None
        self.admin_token = admin_token(settings.admin_token, service=SERVICE)
        self._opened = False
        self._buffers: dict[tuple[str, int], list[_Item]] = {}
        self._buffered_ids: set[str] = set()
        self._oldest: float | None = None
        self._needs_refresh = False
        self._future_checked = False
        self._requests = SealRequests(self.admin_token)
        self._host = socket.gethostname()
        self._writers = ThreadPoolExecutor(SHARD_WRITERS, thread_name_prefix="shard-writer")
        self._consumer: TypedConsumer[Message] | None = None

    # -- running -------------------------------------------------------------------------------------------

    def serve(self, stop_event: threading.Event) -> RunStats:
        consumer: TypedConsumer[Message] = TypedConsumer(
            self.kafka,
            group_id=self.settings.group_id,
            topics=[self.kafka.topic_judgments],
            message_type=LenientJudgment,
            service=SERVICE,
            on_dead_letter=self._dead_lettered,
        )
        self._consumer = consumer
        runner = ServiceRunner(
            consumer,
            self._process,
            self,
            stop_event=stop_event,
            batch_size=POLL_MAX_MESSAGES,
            poll_timeout_s=self._poll_timeout,
            transient=STORE_ERRORS,
            lag_gauge=metrics.LAG,
            subscribed=self.ready,
        )
        health = HealthServer(
            self.settings.http_port,
            ready=lambda: runner.ready,
            host=self.settings.http_host,
            post_routes={"/seal": self._requests.route},
        ).start()
        self.http_port = health.port
        log.info(
            "target builder starting",
            extra={
                "first_iteration": self.settings.iteration,
                "http_port": health.port,
                "topic": self.kafka.topic_judgments,
                "group": self.settings.group_id,
            },
        )
        try:
            runner.run()
        finally:
            health.stop()
            self._writers.shutdown()
            self._requests.refuse_all(503, "the builder stopped; retry on the new one")
        log.info("target builder stopped", extra=asdict(self.stats))
        return self.stats

    def _process(self, batch: list[Envelope[Message]]) -> list[Accepted | Rejection]:
        self._future_checked = False
        metrics.CONSUMED.inc(len(batch))
        self.stats.consumed += len(batch)
        return [process(envelope, self.kafka.max_text_bytes) for envelope in batch]

    def _poll_timeout(self) -> float:
        if self._oldest is None:
            return 1.0
        remaining = self.settings.shard_max_seconds - (time.monotonic() - self._oldest)
        return min(1.0, max(0.01, remaining))

    def _ensure_open(self) -> None:
        """Read which iteration is open (once, at the first batch: retried while the store is down)."""
        if self._opened:
            return
        self.store.ensure_bucket()
        self.open = open_iteration(self.store, self.settings.iteration)
        metrics.OPEN_ITERATION.set(self.open)
        self._opened = True
        log.info("building iteration %d", self.open)

    def _rules(self) -> Rules:
        return Rules(self.open, self.settings.iteration)

    # -- the sink: one judgment ------------------------------------------------------------------------------

    def put(self, envelope: Envelope[Any], output: Accepted) -> Rejection | None:
        """Route, deduplicate and buffer one valid judgment (or say why not)."""
        self._ensure_open()
        if self._needs_refresh:
            self.ledger.refresh(self.open)
            self._needs_refresh = False
        example = output.example
        routed = route(example.iteration, self._rules())
        if isinstance(routed, Rejection) and routed.reason == UNKNOWN_ITERATION and not self._future_checked:
            # A judgment for a later iteration: maybe the open one was sealed by another process meanwhile.
            self._future_checked = True
            if self._advance_if_sealed():
                routed = route(example.iteration, self._rules())
        if isinstance(routed, Rejection):
            return routed
        if routed.late_from is not None:
            if example.sample_id in self.ledger.sealed_ids(routed.late_from):
                self._duplicate(example)
                return None
            moved = apply_late_policy(routed, example.source, self.settings.late_policy)
            if isinstance(moved, Rejection):
                return moved
            self._late_moved()
        self._buffer(_Item(envelope, _in_iteration(example, routed.iteration)))
        return None

    def _buffer(self, item: _Item) -> None:
        sample_id = item.example.sample_id
        recent = self.ledger.recently_sealed_ids(self.open, self.settings.dedupe_iterations)
        if sample_id in self._buffered_ids or sample_id in self.ledger.ids(self.open) or sample_id in recent:
            self._duplicate(item.example)
            return
        position = (item.envelope.topic, item.envelope.partition)
        self._buffers.setdefault(position, []).append(item)
        self._buffered_ids.add(sample_id)
        if self._oldest is None:
            self._oldest = time.monotonic()
        metrics.BUFFERED.set(len(self._buffered_ids))

    def _late_moved(self) -> None:
        metrics.LATE_MOVED.inc()
        self.stats.late_moved += 1

    def _duplicate(self, example: training_pb2.TrainingExample) -> None:
        metrics.DUPLICATES.inc()
        self.stats.duplicates += 1
        log.debug("duplicate judgment skipped", extra={"sample_id": example.sample_id})

    def _dead_lettered(self, reason: str) -> None:
        self.stats.dead_lettered += 1
        metrics.DEAD_LETTERED.labels(reason).inc()

    def revoked(self, partitions: list[tuple[str, int]]) -> None:
        """Drop what revoked partitions buffered (see the module docstring for why not flush)."""
        dropped = sum(len(self._buffers.pop(tp, [])) for tp in partitions)
        self._buffered_ids = {i.example.sample_id for items in self._buffers.values() for i in items}
        if not self._buffers:
            self._oldest = None
        self._needs_refresh = True
        metrics.BUFFERED.set(len(self._buffered_ids))
        log.info("partitions revoked", extra={"partitions": partitions, "dropped_examples": dropped})

    # -- the sink: durability --------------------------------------------------------------------------------

    def durable(self, final: bool) -> bool:
        """Publish due (or, at the end, all) buffers, serve seal requests and automatic seals; True when
        nothing is buffered, i.e. everything put so far is durable."""
        self._ensure_open()
        if final or self._flush_due():
            self._flush()
        self._serve_seal_requests()
        self._maybe_auto_seal()
        return not self._buffers

    def _flush_due(self) -> bool:
        if not self._buffers or self._oldest is None:
            return False
        full = any(len(items) >= self.settings.shard_max_examples for items in self._buffers.values())
        return full or time.monotonic() - self._oldest >= self.settings.shard_max_seconds

    def _flush(self) -> None:
        """Publish every buffer of a partition still assigned as shards of the open iteration, then run the
        seal handshake on them."""
        if not self._buffers:
            return
        started = time.monotonic()
        iteration, size = self.open, self.settings.shard_max_examples
        assert self._consumer is not None
        lost = [tp for tp in self._buffers if not self._consumer.owns(*tp)]
        if lost:  # revoked while this batch was worked on: the new owner builds them (see the module doc)
            self.revoked(lost)
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
            self._relocate_late(late, iteration)

    def _count_examples(self, chunk: list[_Item]) -> None:
        for kind, n in Counter(item.example.kind for item in chunk).items():
            metrics.EXAMPLES.labels(training_pb2.ExampleKind.Name(kind)).inc(n)
        self.stats.examples += len(chunk)

    def _relocate_late(self, late: list[_Item], sealed_iteration: int) -> None:
        for item in late:
            routed = route(sealed_iteration, self._rules())
            moved = (
                routed
                if isinstance(routed, Rejection)
                else apply_late_policy(routed, item.example.source, self.settings.late_policy)
            )
            if isinstance(moved, Rejection):
                assert self._consumer is not None
                self._consumer.dead_letter(item.envelope, moved.reason, moved.detail)
            else:
                self._late_moved()
                self._buffer(_Item(item.envelope, _in_iteration(item.example, self.open)))
        self._flush()

    # -- sealing ---------------------------------------------------------------------------------------------

    def _advance(self, sealed: training_pb2.IterationManifest) -> None:
        self.ledger.sealed(sealed.iteration, sealed)
        self.open = open_iteration(self.store, sealed.iteration + 1)
        metrics.OPEN_ITERATION.set(self.open)
        log.info("iteration sealed; building the next", extra={"sealed": sealed.iteration, "open": self.open})

    def _advance_if_sealed(self) -> bool:
        before = self.open
        if self._buffers:
            self._flush()  # its handshake advances past a sealed iteration
        else:
            sealed = complete_seal(self.store, self.open)
            if sealed is not None:
                self._advance(sealed)
        return self.open != before

    def _seal_open(self, trigger: str) -> training_pb2.IterationManifest:
        """Flush, then seal the open iteration (or get its manifest if another process sealed it)."""
        iteration = self.open
        self._flush()
        manifest = seal_iteration(self.store, self.settings, iteration, sealed_by=f"{trigger}@{self._host}")
        metrics.SEALS.labels(trigger).inc()
        self.stats.seals += 1
        if self.open == iteration:
            self._advance(manifest)
        return manifest

    def _maybe_auto_seal(self) -> None:
        count, deadline = self.settings.seal_count, self.settings.seal_deadline_s
        if count is not None and len(self.ledger.ids(self.open)) + len(self._buffered_ids) >= count:
            self._seal_open("auto:count")
            return
        first_ms = self.ledger.first_shard_ms(self.open)
        if deadline is not None and first_ms is not None and time.time() * 1000 - first_ms >= deadline * 1000:
            self._seal_open("auto:deadline")

    def _serve_seal_requests(self) -> None:
        for request in self._requests.pending():
            try:
                if request.iteration > self.open:
                    error = f"iteration {request.iteration} is not open yet: this builder builds {self.open}"
                    request.answer(409, {"error": error})
                    continue
                if request.iteration == self.open:
                    manifest = self._seal_open("http")
                else:  # already sealed: the same answer again (idempotent)
                    manifest = seal_iteration(self.store, self.settings, request.iteration, sealed_by="http")
                request.answer(200, manifest_summary(self.store, manifest))
            except (EmptyIteration, ChecksumMismatch) as e:
                request.answer(409, {"error": str(e)})
            except STORE_ERRORS as e:
                request.answer(503, {"error": f"the store is unavailable ({type(e).__name__}); retry"})
            except Exception as e:  # a bug or a shard conflict: say so, then stop the builder
                request.answer(500, {"error": f"{type(e).__name__}: {e}"})
                raise


def _in_iteration(example: training_pb2.TrainingExample, iteration: int) -> training_pb2.TrainingExample:
    if example.iteration == iteration:
        return example
    moved = training_pb2.TrainingExample()
    moved.CopyFrom(example)
    moved.iteration = iteration
    return moved


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
    run(KafkaSettings(), S3Settings(), BuilderSettings(), stop_event=stop_on_signals())  # type: ignore[call-arg]


if __name__ == "__main__":
    main()
