"""Step 2: wait until generation and judging of an iteration are done, or its deadline passes.

What counts is what is *durable*, never what is in flight: the training examples listed in the builder's
shard manifests for the iteration (a manifest is written after its shard, so every example it counts is in
S3), plus — when enabled — the iteration's distinct dead-lettered prompts, samples and judgments, which will
never become examples. With one response per prompt, ``examples + dead letters`` reaches the number of
published prompts exactly when every prompt has been either built into training data or rejected with a
reason. (With ``n`` responses per prompt, set the target to prompts x n; a rejected prompt then counts once.)

At the deadline the iteration goes on with what is durable if that is at least ``min_count`` examples, and
fails otherwise (no service is producing: the message says where to look). An iteration that is already
sealed is done: a retried pipeline step returns at once.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from cutalign.builder.shards import list_shard_manifests
from cutalign.config import KafkaSettings
from cutalign.iteration.deadletters import DeadLetterCounter
from cutalign.store import ArtifactStore
from cutalign.store.layout import iteration_manifest_key
from cutalign.v1 import training_pb2

log = logging.getLogger(__name__)


class IterationStalled(RuntimeError):
    """The deadline passed with fewer durable examples than the iteration needs."""


class IterationAborted(RuntimeError):
    """The abort file appeared: something the iteration depends on failed (its text says what)."""


@dataclass(frozen=True)
class IterationProgress:
    iteration: int
    examples: int  # training examples in the iteration's shard manifests (before downsampling)
    shards: int
    dead_lettered: int  # distinct dead-lettered messages of the iteration (0 when not counted)
    counts_by_kind: dict[str, int] = field(default_factory=dict)
    sealed: bool = False

    @property
    def accounted(self) -> int:
        """Inputs that reached a final state: built into an example, or rejected with a reason."""
        return self.examples + self.dead_lettered


def durable_progress(store: ArtifactStore, iteration: int, dead_lettered: int = 0) -> IterationProgress:
    """Sum the shard manifests of ``iteration`` (the sealed manifest's counts once it is sealed)."""
    if store.exists(iteration_manifest_key(iteration)):
        sealed = store.get_manifest(iteration_manifest_key(iteration), training_pb2.IterationManifest)
        by_kind = dict(sealed.counts_before_downsampling) or dict(sealed.counts_by_kind)
        return IterationProgress(
            iteration, sum(by_kind.values()), len(sealed.shards), dead_lettered, by_kind, sealed=True
        )
    kinds: Counter[str] = Counter()
    examples = shards = 0
    for key in list_shard_manifests(store, iteration):
        shard = store.get_manifest(key, training_pb2.ShardManifest)
        examples += shard.count
        shards += 1
        kinds.update(dict(shard.counts_by_kind))
    return IterationProgress(iteration, examples, shards, dead_lettered, dict(kinds))


def wait_for_iteration(
    store: ArtifactStore,
    iteration: int,
    target: int,
    *,
    kafka: KafkaSettings | None = None,
    deadline_s: float,
    min_count: int = 1,
    poll_interval_s: float = 2.0,
    abort_file: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> IterationProgress:
    """Block until ``target`` inputs are accounted for (see module doc) or ``deadline_s`` passes.

    ``kafka`` given: dead letters are counted (the wait polls the dead-letter topic between reads of S3).
    Raises ``IterationStalled`` at the deadline with fewer than ``min_count`` durable examples, and
    ``IterationAborted`` as soon as ``abort_file`` exists.
    """
    if target < 1:
        raise ValueError(f"target must be at least 1, got {target}")
    deadline = clock() + deadline_s
    with ExitStack() as stack:
        counter = stack.enter_context(DeadLetterCounter(kafka, iteration)) if kafka is not None else None
        while True:
            if abort_file is not None and os.path.exists(abort_file):
                raise IterationAborted(f"iteration {iteration}: {Path(abort_file).read_text().strip()}")
            dead = counter.poll(0.0) if counter is not None else 0
            progress = durable_progress(store, iteration, dead)
            if progress.sealed:
                return progress
            if progress.accounted >= target:
                if progress.examples < min_count:
                    raise IterationStalled(
                        f"iteration {iteration}: all {target} inputs are accounted for, but only "
                        f"{progress.examples} became training examples ({progress.dead_lettered} were "
                        f"dead-lettered; need at least {min_count}): read the dead-letter topic for why"
                    )
                log.info(
                    "iteration %d ready: %d examples in %d shards, %d dead-lettered (target %d)",
                    iteration,
                    progress.examples,
                    progress.shards,
                    dead,
                    target,
                )
                return progress
            remaining = deadline - clock()
            if remaining <= 0:
                break
            log.info(
                "iteration %d: %d/%d accounted for (%d examples, %d dead-lettered)",
                iteration,
                progress.accounted,
                target,
                progress.examples,
                dead,
            )
            wait = min(poll_interval_s, remaining)
            if counter is not None:
                counter.poll(wait)
            else:
                time.sleep(wait)
    if progress.examples < min_count:
        raise IterationStalled(
            f"iteration {iteration}: deadline of {deadline_s:.0f}s passed with {progress.examples} durable "
            f"examples (need at least {min_count}; "
            f"{progress.dead_lettered} dead-lettered of target {target}); "
            "check that the generator, judge and target builder are running for this iteration and read the "
            "dead-letter topic for rejected messages"
        )
    log.warning(
        "iteration %d: deadline passed at %d/%d; going on with %d durable examples",
        iteration,
        progress.accounted,
        target,
        progress.examples,
    )
    return progress
