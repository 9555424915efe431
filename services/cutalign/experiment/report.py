"""The results of an online run or experiment as numbers a reader can check: mean ± spread over seeds, per arm
and iteration — the one report of ``cutalign experiment``, ``cutalign run`` and ``cutalign demo``.

Spread is the sample standard deviation over seeds (0 with one seed). Because every arm of a seed shares its
prompts, arms are also compared *paired*: per seed, the arm's accuracy minus the reference arm's (SFT on
positives by default), then mean ± std of those differences. An arm "beats" the reference at an iteration
when its mean exceeds the reference's by more than both spreads added (the 1-σ bands do not overlap).

Writes ``report.json`` (everything, per seed), ``report.md`` (the table) and ``accuracy.png``; prints tables
that fit an 80-column terminal (arms as rows, iterations as columns; per-iteration details of one run).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from cutalign.experiment.compare import RunResult
from cutalign.iteration.arms import describe

TRAIN_METRICS = ("tokens/flagged_fraction", "detection/precision", "detection/recall")


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(
            statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)
        )

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f}" if self.n > 1 else f"{self.mean:.3f}"


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    overrides: dict[str, Any]
    accuracy: list[Stat]  # per iteration, iteration 0 first
    vs_reference: list[Stat] | None  # paired differences to the reference arm, per iteration
    beats_reference: list[bool] | None
    train_metrics: dict[str, Stat]  # averaged over iterations 1..N, then over seeds


def summarize(
    arms: Mapping[str, Mapping[str, Any]], results: Sequence[RunResult], reference: str | None = "sft"
) -> list[ArmSummary]:
    by_arm: dict[str, dict[int, RunResult]] = {}
    for r in results:
        by_arm.setdefault(r.arm, {})[r.seed] = r
    ref = by_arm.get(reference) if reference else None
    summaries = []
    for arm, runs in by_arm.items():
        seeds = sorted(runs)
        iterations = len(runs[seeds[0]].records)
        accuracy = [Stat.of([runs[s].records[i].accuracy for s in seeds]) for i in range(iterations)]
        vs = beats = None
        if ref is not None and arm != reference and set(seeds) <= set(ref):
            vs = [
                Stat.of([runs[s].records[i].accuracy - ref[s].records[i].accuracy for s in seeds])
                for i in range(iterations)
            ]
            ref_acc = [Stat.of([ref[s].records[i].accuracy for s in seeds]) for i in range(iterations)]
            beats = [
                a.mean - r.mean > a.std + r.std if i > 0 else False
                for i, (a, r) in enumerate(zip(accuracy, ref_acc, strict=True))
            ]
        metrics = {}
        for name in TRAIN_METRICS:
            per_seed = [
                statistics.fmean(values)
                for s in seeds
                if (values := [rec.metrics[name] for rec in runs[s].records[1:] if name in rec.metrics])
            ]
            if per_seed:
                metrics[name] = Stat.of(per_seed)
        summaries.append(ArmSummary(arm, dict(arms[arm]), accuracy, vs, beats, metrics))
    return summaries


def markdown_table(summaries: Sequence[ArmSummary], reference: str | None = "sft") -> str:
    """Held-out accuracy per iteration (mean ± std over seeds), the final gap to the reference, detection."""
    iterations = len(summaries[0].accuracy)
    seeds = summaries[0].accuracy[0].n
    head = ["arm", *(f"iter {i}" for i in range(iterations))]
    head += [f"Δ vs {reference} (final, paired)"] if reference else []
    head += ["flagged fraction", "detection precision", "detection recall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        gap = "—"
        if s.vs_reference is not None and s.beats_reference is not None:
            gap = f"{s.vs_reference[-1].mean:+.3f} ± {s.vs_reference[-1].std:.3f}"
            gap += " (beats)" if s.beats_reference[-1] else ""
        cells = [f"`{s.arm}`", *(str(a) for a in s.accuracy), *([gap] if reference else [])]
        cells += [str(s.train_metrics[m]) if m in s.train_metrics else "—" for m in TRAIN_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Mean ± sample std over {seeds} seed(s). Arms:")
    lines.extend(f"- `{s.arm}`: {describe(s.overrides)}" for s in summaries)
    return "\n".join(lines) + "\n"


def probe_lines(probe: Mapping[str, Any]) -> str:
    """The base model's probe (``cutalign.reading.probe``) as markdown lines (empty without one)."""
    if not probe:
        return ""
    figures = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in probe["probe"].items())
    verdict = probe["verdict"]
    expect = "expects CUT to learn" if verdict["ok"] else "expects CUT not to learn"
    return f"\nProbe of the starting model: {figures}. It {expect}: {verdict['finding']}.\n"


def plot(summaries: Sequence[ArmSummary], path: Path, title: str) -> None:
    """Accuracy per iteration, one line per arm with a ±std band (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for s in summaries:
        x = list(range(len(s.accuracy)))
        mean = [a.mean for a in s.accuracy]
        ax.plot(x, mean, marker="o", label=s.arm)
        ax.fill_between(
            x, [a.mean - a.std for a in s.accuracy], [a.mean + a.std for a in s.accuracy], alpha=0.15
        )
    ax.set_xlabel("online iteration (0 = base model)")
    ax.set_ylabel("held-out accuracy")
    ax.set_xticks(list(range(len(summaries[0].accuracy))))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def accuracy_table(summaries: Sequence[ArmSummary], title: str) -> Table:
    """Arms as rows, iterations as columns: fits 80 columns for a few iterations (one seed: no ± spread)."""
    out = Table(title=title, title_justify="left")
    out.add_column("arm", overflow="fold")
    for i in range(len(summaries[0].accuracy)):
        out.add_column(f"iter {i}", justify="right")
    for s in summaries:
        out.add_row(s.arm, *(str(a) for a in s.accuracy))
    return out


def iteration_table(result: RunResult) -> Table:
    """One run's iterations: the data it trained on, what detection found, how long each took."""
    out = Table(title=f"{result.arm}, seed {result.seed}: per iteration", title_justify="left")
    for name in ("iter", "accuracy", "pos/neg", "steps", "flagged", "precision", "recall", "time (s)"):
        out.add_column(name, justify="right")
    for r in result.records:
        metrics = [
            f"{r.metrics[m]:.3f}" if m in r.metrics else "—"
            for m in ("tokens/flagged_fraction", "detection/precision", "detection/recall")
        ]
        pos_neg = f"{r.positives}/{r.negatives}" if r.iteration else "—"
        steps = str(r.steps) if r.iteration else "—"
        took = f"{sum(r.seconds.values()):.0f}" if r.seconds else "—"
        out.add_row(str(r.iteration), f"{r.accuracy:.3f}", pos_neg, steps, *metrics, took)
    return out


def write_report(
    out_dir: Path,
    *,
    config: Mapping[str, Any],
    base_accuracy: float,
    arms: Mapping[str, Mapping[str, Any]],
    results: Sequence[RunResult],
    reference: str | None = "sft",
    probe: Mapping[str, Any] | None = None,
) -> list[ArmSummary]:
    """Write report.json, report.md and accuracy.png under ``out_dir``; returns the summaries.

    ``probe`` holds the starting model's probe figures and verdict (``cutalign.reading.probe``), if run.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ref = reference if reference in arms else None
    summaries = summarize(arms, results, ref)
    body = {
        "config": config,
        "base_accuracy": base_accuracy,
        "probe": dict(probe or {}),
        "summary": [asdict(s) for s in summaries],
        "runs": [asdict(r) for r in results],
    }
    (out_dir / "report.json").write_text(json.dumps(body, indent=2, sort_keys=True, default=str))
    (out_dir / "report.md").write_text(markdown_table(summaries, ref) + probe_lines(probe or {}))
    plot(summaries, out_dir / "accuracy.png", f"held-out accuracy, {summaries[0].accuracy[0].n} seed(s)")
    return summaries
