"""The report of an online run (``cutalign demo``, ``cutalign run``): a table, ``report.json`` and a plot.

Per iteration: held-out accuracy of the judgment-based policy trained through the services and, when run,
of the SFT-on-positives baseline trained in-process on the same prompts; the judged responses the iteration
trained on (positives / negatives, before Align-P downsampling); the share of Misalign tokens flagged for
unlikelihood; the ratio detection's precision and recall against the judge's error spans; and the wall time
of each pipeline stage. Iteration 0 is the base model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from cutalign.experiment.arms import describe
from cutalign.experiment.loop import IterationRecord
from cutalign.online.runner import OnlineIteration

# pipeline task -> report column (the local runner names tasks after the pipeline's components)
STAGES = {
    "publish-prompts": "publish",
    "wait-for-judging": "generate+judge",
    "seal-iteration": "seal",
    "train-policy": "train",
    "evaluate-policy": "evaluate",
    "promote-policy": "promote",
}


@dataclass
class OnlineReport:
    arm: str  # the judgment-based objective's name
    arm_overrides: dict[str, Any]
    base_accuracy: float
    iterations: list[OnlineIteration]
    baseline: list[IterationRecord] | None = None  # SFT on positives, same prompts, in-process
    config: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase of the run

    def accuracy(self) -> list[float]:
        return [self.base_accuracy, *(r.accuracy for r in self.iterations)]

    def baseline_accuracy(self) -> list[float] | None:
        return None if self.baseline is None else [r.accuracy for r in self.baseline]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)


def _fmt(metrics: Mapping[str, float], name: str, pattern: str = "{:.3f}") -> str:
    return pattern.format(metrics[name]) if name in metrics else "—"


def table(report: OnlineReport) -> Table:
    """One row per iteration; the judgment arm, the SFT baseline, data, detection, stage times."""
    out = Table(title=f"online iterations: {report.arm} ({describe(report.arm_overrides)})", show_lines=False)
    out.add_column("iter", justify="right")
    out.add_column(f"accuracy\n{report.arm}", justify="right")
    baseline = report.baseline_accuracy()
    if baseline is not None:
        out.add_column("accuracy\nsft (positives)", justify="right")
    for name in ("pos / neg", "flagged\nfraction", "detection\nprecision", "detection\nrecall"):
        out.add_column(name, justify="right")
    for label in STAGES.values():
        out.add_column(f"{label}\n(s)", justify="right")
    base_row = ["0", f"{report.base_accuracy:.3f}"]
    base_row += [f"{baseline[0]:.3f}"] if baseline is not None else []
    out.add_row(*base_row, *(["—"] * (4 + len(STAGES))))
    for k, r in enumerate(report.iterations, start=1):
        row = [str(r.iteration), f"{r.accuracy:.3f}"]
        if baseline is not None:
            row.append(f"{baseline[k]:.3f}" if k < len(baseline) else "—")
        row += [
            f"{r.positives} / {r.negatives}",
            _fmt(r.metrics, "tokens/flagged_fraction"),
            _fmt(r.metrics, "detection/precision"),
            _fmt(r.metrics, "detection/recall"),
        ]
        row += [f"{r.seconds[task]:.0f}" if task in r.seconds else "—" for task in STAGES]
        out.add_row(*row)
    return out


def plot(report: OnlineReport, path: Path) -> None:
    """Held-out accuracy per iteration: the judgment arm and, if run, the SFT baseline (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    accuracy = report.accuracy()
    ax.plot(range(len(accuracy)), accuracy, marker="o", label=f"{report.arm} (judgments, via the services)")
    baseline = report.baseline_accuracy()
    if baseline is not None:
        ax.plot(
            range(len(baseline)), baseline, marker="s", linestyle="--", label="sft on positives (in-process)"
        )
    ax.set_xlabel("online iteration (0 = base model)")
    ax.set_ylabel("held-out accuracy")
    ax.set_xticks(list(range(len(accuracy))))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(report: OnlineReport, out_dir: Path) -> tuple[Path, Path]:
    """``report.json`` and ``accuracy.png`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "report.json", out_dir / "accuracy.png"
    json_path.write_text(report.to_json())
    plot(report, png_path)
    return json_path, png_path


def summary_lines(report: OnlineReport) -> Sequence[str]:
    """The plain-words verdict printed under the table."""
    accuracy = report.accuracy()
    lines = [
        f"judgment-based objective: {report.arm} ({describe(report.arm_overrides)})",
        f"held-out accuracy {accuracy[0]:.3f} -> {accuracy[-1]:.3f} over {len(accuracy) - 1} iteration(s)",
    ]
    baseline = report.baseline_accuracy()
    if baseline is not None:
        gap = accuracy[-1] - baseline[-1]
        verdict = "above" if gap > 0 else "below" if gap < 0 else "level with"
        lines.append(
            f"SFT on positives: {baseline[0]:.3f} -> {baseline[-1]:.3f}; the judgment arm ends {verdict} "
            f"it ({gap:+.3f}, one seed: see docs/results.md for the seed spread)"
        )
    return lines
