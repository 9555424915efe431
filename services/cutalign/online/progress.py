"""Rich progress for an online run: one bar for iterations (with the pipeline task in flight), one for the
base model's warm start, one for the in-process baseline — wired to the runners' callbacks."""

from __future__ import annotations

import os
import warnings
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from cutalign.experiment.loop import IterationRecord
from cutalign.online.runner import OnlineIteration
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
    """Callbacks for ``run_demo``/``run_user_task`` that drive rich progress bars on ``console``."""

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
        self.arm = arm
        self._online: TaskID | None = None
        self._base: TaskID | None = None
        self._baseline: TaskID | None = None

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.__exit__(kind, value, tb)

    def callbacks(self) -> Callbacks:
        return Callbacks(stage=self.stage, task=self.task, iteration=self.iteration, baseline=self.baseline)

    def stage(self, name: str) -> None:
        self.progress.console.print(f"[bold]▶ {name}")
        if name.startswith("baseline") and self._baseline is None:
            self._baseline = self.progress.add_task("sft on positives", total=self.iterations)

    def base_step(self, step: int, total: int, loss: float) -> None:
        if self._base is None:
            self._base = self.progress.add_task("warm start of the base model", total=total)
        self.progress.update(self._base, completed=step, description=f"warm start (loss {loss:.3f})")

    def task(self, iteration: int, name: str) -> None:
        if self._online is None:
            self._online = self.progress.add_task("online iterations", total=self.iterations)
        self.progress.update(self._online, description=f"iteration {iteration}: {name}")

    def iteration(self, record: OnlineIteration) -> None:
        if self._online is None:
            self._online = self.progress.add_task("online iterations", total=self.iterations)
        self.progress.update(
            self._online, advance=1, description=f"{self.arm}: iteration {record.iteration} done"
        )
        self.progress.console.print(
            f"  iteration {record.iteration}: accuracy {record.accuracy:.3f}, "
            f"{record.positives} positive / {record.negatives} negative judgments, {record.wall_s:.0f} s"
        )

    def baseline(self, record: IterationRecord) -> None:
        if self._baseline is None:
            self._baseline = self.progress.add_task("sft on positives", total=self.iterations)
        self.progress.update(self._baseline, advance=1)
        self.progress.console.print(f"  sft iteration {record.iteration}: accuracy {record.accuracy:.3f}")
