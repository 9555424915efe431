"""Calling a judge: several calls at once, each with a deadline, failures retried with jittered backoff.

Why a pool of our own instead of ``concurrent.futures.ThreadPoolExecutor``: a judge call can hang (an LLM
endpoint that never answers) and Python cannot kill a thread. So the caller stops waiting at the deadline
and fails the call (``JudgeTimeout``); the stuck worker is *retired* (it exits when its call finally
returns) and a fresh worker replaces it, so the pool keeps its capacity. Workers are daemon threads: an
executor's workers are joined at interpreter exit, which a hung judge would block forever. The deadline
runs from when a call *starts*, not from when it was queued, so a big batch on a small pool does not time
out calls that never ran.

``judge_all`` runs one batch: every input is tried, the failures are retried together after a backoff, and
each input ends as either a checked ``Judgment`` or the last exception — never a judgment made up from a
failure.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, InvalidStateError, wait
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cutalign.judges.base import Judge, Judgment, run_judge

log = logging.getLogger(__name__)

T = TypeVar("T")


class JudgeTimeout(TimeoutError):
    """A judge call ran past its deadline; its result, if it ever comes, is discarded."""


@dataclass
class _Task(Generic[T]):
    fn: Callable[[], T]
    future: Future[T] = field(default_factory=Future)
    started_at: float | None = None
    seconds: float | None = None  # how long the call ran, once it returned


@dataclass(frozen=True)
class CallResult(Generic[T]):
    """One call's outcome: its value or its error (``JudgeTimeout`` past the deadline) and its duration."""

    value: T | None
    error: BaseException | None
    seconds: float


class CallPool:
    """``workers`` daemon threads running submitted calls; see the module docstring for why."""

    def __init__(self, workers: int, name: str = "judge-call") -> None:
        if workers < 1:
            raise ValueError(f"a call pool needs at least one worker, got {workers}")
        self._queue: queue.SimpleQueue[_Task[Any] | None] = queue.SimpleQueue()
        self._name = name
        self._spawned = 0
        for _ in range(workers):
            self._spawn()

    def _spawn(self) -> None:
        self._spawned += 1
        threading.Thread(target=self._work, name=f"{self._name}-{self._spawned}", daemon=True).start()

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            if not task.future.set_running_or_notify_cancel():
                continue
            task.started_at = time.monotonic()
            try:
                result = task.fn()
            except Exception as e:  # handed to the caller through the future, like an executor does
                task.seconds = time.monotonic() - task.started_at
                if not _settle(task.future.set_exception, e):
                    return  # the caller timed the call out and started a replacement: retire
            else:
                task.seconds = time.monotonic() - task.started_at
                if not _settle(task.future.set_result, result):
                    return

    def run(self, fns: Sequence[Callable[[], T]], timeout_s: float) -> list[CallResult[T]]:
        """Run every call, ``workers`` at a time; each ends with a value, an error or ``JudgeTimeout``."""
        tasks: list[_Task[T]] = [_Task(fn) for fn in fns]
        for task in tasks:
            self._queue.put(task)
        pending = {task.future: task for task in tasks}
        while pending:
            now = time.monotonic()
            for future, task in list(pending.items()):
                if task.started_at is not None and now - task.started_at >= timeout_s and not future.done():
                    try:
                        future.set_exception(JudgeTimeout(f"judge call took longer than {timeout_s:g}s"))
                    except InvalidStateError:  # it finished at this very moment: keep its result
                        continue
                    log.warning("judge call timed out after %.3gs; replacing its worker", timeout_s)
                    self._spawn()
            for future in [f for f in pending if f.done()]:
                del pending[future]
            running = [t.started_at for t in pending.values() if t.started_at is not None]
            wake = min((s + timeout_s - now for s in running), default=timeout_s)
            if pending:
                wait(list(pending), timeout=max(wake, 0.001), return_when=FIRST_COMPLETED)
        return [_result(task, timeout_s) for task in tasks]

    def close(self) -> None:
        """Stop idle workers; one stuck in a call exits when the call returns (daemon: never blocks exit)."""
        for _ in range(self._spawned):
            self._queue.put(None)


def _settle(setter: Callable[[Any], None], value: Any) -> bool:
    """Complete a future; False if it was already completed (timed out by the caller)."""
    try:
        setter(value)
    except InvalidStateError:
        return False
    return True


def _result(task: _Task[T], timeout_s: float) -> CallResult[T]:
    error = task.future.exception()
    if isinstance(error, JudgeTimeout):
        return CallResult(None, error, timeout_s)
    seconds = task.seconds if task.seconds is not None else 0.0
    return CallResult(None if error else task.future.result(), error, seconds)


@dataclass(frozen=True)
class JudgeInput:
    instruction: str
    response: str
    reference: dict[str, Any] | None


@dataclass(frozen=True)
class Attempted:
    """How one input ended: a judgment, or the last failure after every attempt."""

    judgment: Judgment | None
    error: BaseException | None
    attempts: int


def backoff_delay(base_s: float, retry: int) -> float:
    """Delay before retry ``retry`` (1-based): ``base * 2**(retry-1)``, jittered to 50-100% of it.

    Jitter spreads the retries of many workers hit by the same outage; keeping half the delay keeps a minimum
    pause, so a failing endpoint is not hammered.
    """
    full = base_s * 2 ** (retry - 1)
    return full / 2 + random.uniform(0, full / 2)


def judge_all(
    judge: Judge,
    inputs: Sequence[JudgeInput],
    pool: CallPool,
    *,
    timeout_s: float,
    max_retries: int,
    backoff_s: float,
    on_call: Callable[[float, BaseException | None], None] = lambda seconds, error: None,
    sleep: Callable[[float], Any] = time.sleep,
) -> list[Attempted]:
    """Judge every input; failed calls are retried ``max_retries`` times, all failures of a round together.

    ``on_call(seconds, error)`` is told about every call (for metrics); ``sleep`` waits out a backoff.
    """

    def call(item: JudgeInput) -> Callable[[], Judgment]:
        return lambda: run_judge(judge, item.instruction, item.response, item.reference)

    results: list[Attempted | None] = [None] * len(inputs)
    todo = list(range(len(inputs)))
    for attempt in range(1, max_retries + 2):
        if attempt > 1:
            sleep(backoff_delay(backoff_s, attempt - 1))
        calls = pool.run([call(inputs[i]) for i in todo], timeout_s)
        failed = []
        for i, outcome in zip(todo, calls, strict=True):
            on_call(outcome.seconds, outcome.error)
            results[i] = Attempted(outcome.value, outcome.error, attempt)
            if outcome.error is not None:
                failed.append(i)
        if failed:
            log.warning("%d of %d judge calls failed (attempt %d)", len(failed), len(todo), attempt)
        todo = failed
        if not todo:
            break
    return [r for r in results if r is not None]
