"""A terminal progress bar for training (rank 0 only), showing the step, loss and throughput."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """``with TrainingProgress(total, done, enabled) as bar: bar.update(step, metrics)``; inert if off."""

    def __init__(self, total: int, completed: int, enabled: bool, description: str = "training") -> None:
        self._progress = (
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            if enabled
            else None
        )
        self._task = None
        if self._progress is not None:
            self._task = self._progress.add_task(description, total=total, completed=completed, status="")

    def __enter__(self) -> TrainingProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if self._progress is None or self._task is None:
            return
        status = (
            f"loss {metrics['loss/total']:.4f} · flagged {metrics['tokens/flagged_fraction']:.2f} · "
            f"{metrics['throughput/tokens_per_s']:.0f} tok/s"
        )
        self._progress.update(self._task, completed=step, status=status)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
