"""``cutalign demo`` (what ``make demo`` runs): see ``cutalign.demo.app``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cutalign.experiment.arms import PRESETS

console = Console()


def demo_command(
    out: Annotated[
        Path, typer.Option(help="Directory for report.json, accuracy.png and the run's files.")
    ] = Path("out/demo"),
    iterations: Annotated[int, typer.Option(min=1, help="Online iterations.")] = 3,
    prompts_per_iteration: Annotated[int, typer.Option(min=1, help="Fresh prompts per iteration.")] = 200,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps per iteration (both arms).")] = 30,
    arm: Annotated[
        str, typer.Option(help=f"Judgment-based objective ({', '.join(PRESETS)}); default: the best found.")
    ] = "",
    baseline: Annotated[bool, typer.Option(help="Also run SFT on positives on the same prompts.")] = True,
    verbose: Annotated[bool, typer.Option(help="Log every service's INFO lines.")] = False,
) -> None:
    """Run online alignment from judgments end to end on this machine: the local platform (reused if `cutalign
    up` runs), the policy server, generator, judge and target builder, the base model (built once, then
    cached in S3), ITERATIONS online iterations through the KFP pipeline on the local runner, and SFT on
    positives on the same prompts; prints a table and writes report.json and accuracy.png under OUT.
    Everything it started is stopped at the end, also on Ctrl-C.
    """
    from cutalign.demo.app import JUDGMENT_ARM, DemoSettings, run_demo
    from cutalign.online import report as online_report
    from cutalign.online.progress import RunProgress, quiet_libraries

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    quiet_libraries()
    chosen = arm or JUDGMENT_ARM
    if chosen not in PRESETS:
        raise typer.BadParameter(f"unknown arm {chosen!r}; choose from {', '.join(PRESETS)}")
    settings = DemoSettings(
        arm=chosen,
        iterations=iterations,
        prompts_per_iteration=prompts_per_iteration,
        steps=steps,
        baseline=baseline,
    )
    console.print(f"[bold]cutalign demo[/]: judgment-based objective [cyan]{chosen}[/] vs SFT on positives")
    try:
        with RunProgress(console, iterations, chosen) as progress:
            report = run_demo(settings, out, callbacks=progress.callbacks(), on_base_step=progress.base_step)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: everything this run started has been stopped")
        raise typer.Exit(130) from None
    console.print(online_report.table(report))
    for line in online_report.summary_lines(report):
        console.print(line)
    json_path, png_path = online_report.write(report, out)
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items())
    console.print(f"wall time: {timing}")
    console.print(f"wrote {json_path} and {png_path}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
