"""What a terminal shows while an online run works: one bar per arm (with the pipeline task in flight), one
for the base model's warm start — wired to the session's callbacks."""

from __future__ import annotations

import os
import warnings
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from cutalign.iteration.record import IterationRecord
from cutalign.online.session import Callbacks


def quiet_libraries() -> None:
    """Keep library chatter off the terminal the progress bars draw on: transformers' per-load progress bars
    (also in child processes, through the environment) and known-harmless warnings (a deprecation inside
    transformers; the KFP local runner's note that the pipeline's image is not used locally)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)


class RunProgress:
    """Callbacks for ``run_session``/``run_demo`` that drive rich progress bars on ``console``."""

    def __init__(self, console: Console, iterations: int, arm: str) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.iterations = iterations
        self.arm = arm  # the arm whose iterations run through the pipeline
        self._arms: dict[str, TaskID] = {}
        self._base: TaskID | None = None

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.__exit__(kind, value, tb)

    def callbacks(self) -> Callbacks:
        return Callbacks(stage=self.stage, task=self.task, record=self.record)

    def stage(self, name: str) -> None:
        self.progress.console.print(f"[bold]▶ {name}")

    def base_step(self, step: int, total: int, loss: float) -> None:
        if self._base is None:
            self._base = self.progress.add_task("warm start of the base model", total=total)
        self.progress.update(self._base, completed=step, description=f"warm start (loss {loss:.3f})")

    def _bar(self, arm: str) -> TaskID:
        if arm not in self._arms:
            self._arms[arm] = self.progress.add_task(arm, total=self.iterations)
        return self._arms[arm]

    def task(self, iteration: int, name: str) -> None:
        self.progress.update(self._bar(self.arm), description=f"{self.arm}: iteration {iteration}, {name}")

    def record(self, arm: str, record: IterationRecord) -> None:
        self.progress.update(self._bar(arm), advance=1, description=arm)
        self.progress.console.print(
            f"  {arm} iteration {record.iteration}: accuracy {record.accuracy:.3f}, "
            f"{record.positives} positive / {record.negatives} negative judgments"
        )
