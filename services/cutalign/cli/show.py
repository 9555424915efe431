"""Printing and writing the results of an online run (``cutalign run``, ``cutalign demo``)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from cutalign.experiment.report import accuracy_table, iteration_table, write_report
from cutalign.iteration.arms import describe
from cutalign.online.session import SessionResult


def print_session(result: SessionResult, out: Path, console: Console | None = None) -> None:
    """Tables that fit 80 columns, a verdict in words; report.json, report.md, accuracy.png under ``out``."""
    console = console or Console()
    arm = next(iter(result.arms))
    summaries = write_report(
        out,
        config={**result.config, "seconds": result.seconds},
        base_accuracy=result.base_accuracy,
        arms=result.arms,
        results=result.results,
        reference="sft" if "sft" in result.arms and arm != "sft" else None,
    )
    console.print(accuracy_table(summaries, "held-out accuracy"))
    for run in result.results:
        console.print(iteration_table(run))
    first = result.results[0].records
    console.print(f"judgment-based objective: {arm} ({describe(result.arms[arm])})")
    console.print(f"held-out accuracy {first[0].accuracy:.3f} -> {first[-1].accuracy:.3f}")
    if len(result.results) > 1:
        baseline = result.results[1].records
        gap = first[-1].accuracy - baseline[-1].accuracy
        verdict = "above" if gap > 0 else "below" if gap < 0 else "level with"
        console.print(
            f"SFT on positives: {baseline[0].accuracy:.3f} -> {baseline[-1].accuracy:.3f}; the judgment arm "
            f"ends {verdict} it ({gap:+.3f}; one seed — `cutalign experiment` measures the spread over seeds)"
        )
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    console.print(f"wall time: {timing}")
    console.print(f"wrote {out / 'report.json'}, report.md and accuracy.png")
