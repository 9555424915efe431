"""Calling a judge: in worker processes, several calls at once, each with a deadline, failures retried.

Why processes: a judge is a plug-in (a user's class, an LLM endpoint behind it), and a call can hang. Python
cannot stop a thread, so a thread pool that gives up on a hung call leaves its thread behind: a hung endpoint
leaked one thread per timeout (22 -> 113 threads after 100) and a call stuck in C never returns at all. A
process can be killed. So ``JudgePool`` runs ``workers`` child processes, each holding its own judge (built
by ``make_judge`` in the child, so nothing is shared between calls but what the judge shares itself), one call
at a time each. A call past its deadline gets its worker killed and replaced: the pool never holds more than
``workers`` processes and no thread of ours is ever stuck. The deadline runs from when a call *starts* in a
ready worker, so a big batch on a small pool does not time out calls that never ran, and a replacement's
start-up does not count against anyone's call.

Children are started with ``spawn`` (a fresh interpreter: forking a process that runs librdkafka threads is
unsafe), receive the parent's ``sys.path`` (so a judge importable in the parent is importable there), and exit
when the parent is gone, even mid-call.

``judge_all`` runs one batch: every input is tried, the failures are retried together after a backoff, and
each input ends as either a checked ``Judgment`` or the last error — never a judgment made up from a failure.
A judge that returns something unusable (``InvalidJudgment``: a float span, a negative without text) is not
retried: it would answer the same again.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from cutalign.judges.base import InvalidJudgment, Judge, Judgment, run_judge

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # a worker that has not built its judge by then is a failed start
_CONTEXT = multiprocessing.get_context("spawn")


class JudgeTimeout(TimeoutError):
    """A judge call ran past its deadline; its worker was killed."""


class JudgeCrashed(RuntimeError):
    """A worker process died during a call (a segfault, ``os._exit``, out of memory)."""


class JudgeCallError(Exception):
    """A judge raised in its worker; ``type_name`` is the exception's class name (the type itself may not
    exist in this process)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


def error_name(error: BaseException) -> str:
    """The name of what failed: the judge's own exception class, or ours."""
    return error.type_name if isinstance(error, JudgeCallError) else type(error).__name__


def is_invalid_judgment(error: BaseException | None) -> bool:
    return error is not None and error_name(error) == InvalidJudgment.__name__


@dataclass(frozen=True)
class JudgeInput:
    instruction: str
    response: str
    reference: dict[str, Any] | None


@dataclass(frozen=True)
class CallResult:
    """One call's outcome: the judgment or the error (``JudgeTimeout`` past the deadline) and its duration."""

    judgment: Judgment | None
    error: BaseException | None
    seconds: float


# -- the worker process --------------------------------------------------------------------------------------


def _exit_with_parent(parent: int) -> None:
    """Orphaned (the service was killed): exit even if a call is hung in this process."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _serve(make_judge: Callable[[], Judge], conn: Connection, parent: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    try:
        judge = make_judge()
    except BaseException as e:  # reported to the parent, which fails its start-up with it
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        try:
            conn.send(("ok", run_judge(judge, *item)))
        except Exception as e:  # the judge's failure is the call's result
            conn.send(("error", (type(e).__name__, str(e))))


# -- the pool ------------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    call: int | None = None  # index of the input it is judging
    started_at: float = 0.0


class JudgePool:
    """``workers`` judge processes; ``run`` judges a batch (one batch at a time: callers are serialised)."""

    def __init__(self, make_judge: Callable[[], Judge], workers: int, *, name: str = "judge") -> None:
        if workers < 1:
            raise ValueError(f"a judge pool needs at least one worker, got {workers}")
        self._make_judge = make_judge
        self._name = name
        self._lock = threading.Lock()
        self._workers = [self._start() for _ in range(workers)]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready for w in self._workers):
            self._receive(max(0.0, deadline - time.monotonic()), results={}, timeout_s=0.0)
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"judge workers did not start within {START_TIMEOUT_S:.0f}s")

    def _start(self) -> _Worker:
        ours, theirs = _CONTEXT.Pipe()
        process = _CONTEXT.Process(
            target=_serve, args=(self._make_judge, theirs, os.getpid()), name=self._name, daemon=True
        )
        process.start()
        theirs.close()
        return _Worker(process, ours)

    @property
    def processes(self) -> int:
        """Worker processes alive now (never more than ``workers``)."""
        return sum(w.process.is_alive() for w in self._workers)

    def run(self, inputs: Sequence[JudgeInput], timeout_s: float) -> list[CallResult]:
        """Judge every input, ``workers`` at a time: each ends with a judgment, an error or a timeout."""
        with self._lock:
            todo = list(range(len(inputs)))[::-1]
            results: dict[int, CallResult] = {}
            while len(results) < len(inputs):
                for worker in list(self._workers):
                    if worker.ready and worker.call is None and todo:
                        worker.call, worker.started_at = todo.pop(), time.monotonic()
                        item = inputs[worker.call]
                        try:
                            worker.conn.send((item.instruction, item.response, item.reference))
                        except OSError:
                            self._replace(worker, results, JudgeCrashed("the judge process is gone"))
                busy = [
                    w.started_at + timeout_s - time.monotonic() for w in self._workers if w.call is not None
                ]
                self._receive(max(0.0, min(busy, default=0.05)), results, timeout_s)
                self._expire(results, timeout_s)
            return [results[i] for i in range(len(inputs))]

    def _receive(self, wait_s: float, results: dict[int, CallResult], timeout_s: float) -> None:
        by_conn = {w.conn: w for w in self._workers}
        for conn in wait(list(by_conn), timeout=wait_s):
            worker = by_conn[conn]  # type: ignore[index]
            try:
                kind, payload = worker.conn.recv()
            except (EOFError, OSError):
                self._replace(
                    worker, results, JudgeCrashed(f"the judge process exited ({worker.process.exitcode})")
                )
                continue
            if kind == "ready":
                worker.ready = True
            elif kind == "failed":
                self.close()
                raise RuntimeError(f"the judge could not be built in its worker process: {payload}")
            elif worker.call is not None:
                seconds = time.monotonic() - worker.started_at
                error = JudgeCallError(*payload) if kind == "error" else None
                results[worker.call] = CallResult(payload if kind == "ok" else None, error, seconds)
                worker.call = None

    def _expire(self, results: dict[int, CallResult], timeout_s: float) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.call is not None and now - worker.started_at >= timeout_s:
                log.warning("judge call timed out after %.3gs; replacing its worker process", timeout_s)
                self._replace(worker, results, JudgeTimeout(f"judge call took longer than {timeout_s:g}s"))

    def _replace(self, worker: _Worker, results: dict[int, CallResult], error: BaseException) -> None:
        if worker.call is not None:
            results[worker.call] = CallResult(None, error, time.monotonic() - worker.started_at)
        worker.process.kill()
        worker.process.join(5)
        worker.conn.close()
        self._workers[self._workers.index(worker)] = self._start()

    def close(self) -> None:
        """Stop every worker: idle ones exit, busy ones (a hung call) are killed."""
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):  # already gone
                worker.conn.send(None)
        for worker in self._workers:
            worker.process.join(1.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
            worker.conn.close()


def backoff_delay(base_s: float, retry: int) -> float:
    """Delay before retry ``retry`` (1-based): ``base * 2**(retry-1)``, jittered to 50-100% of it.

    Jitter spreads the retries of many workers hit by the same outage; keeping half the delay keeps a minimum
    pause, so a failing endpoint is not hammered.
    """
    full = base_s * 2 ** (retry - 1)
    return full / 2 + random.uniform(0, full / 2)


@dataclass(frozen=True)
class Attempted:
    """How one input ended: a judgment, or the last failure after every attempt."""

    judgment: Judgment | None
    error: BaseException | None
    attempts: int


def judge_all(
    pool: JudgePool,
    inputs: Sequence[JudgeInput],
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
    results: list[Attempted | None] = [None] * len(inputs)
    todo = list(range(len(inputs)))
    for attempt in range(1, max_retries + 2):
        if attempt > 1:
            sleep(backoff_delay(backoff_s, attempt - 1))
        calls = pool.run([inputs[i] for i in todo], timeout_s)
        failed = []
        for i, outcome in zip(todo, calls, strict=True):
            on_call(outcome.seconds, outcome.error)
            results[i] = Attempted(outcome.judgment, outcome.error, attempt)
            if outcome.error is not None and not is_invalid_judgment(outcome.error):
                failed.append(i)
        if failed:
            log.warning("%d of %d judge calls failed (attempt %d)", len(failed), len(todo), attempt)
        todo = failed
        if not todo:
            break
    return [r for r in results if r is not None]
