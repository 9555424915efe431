"""``cutalign demo`` (what ``make demo`` runs): see ``cutalign.demo.app``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cutalign.cli.flags import Flags, settings_flags
from cutalign.config import OnlineSettings
from cutalign.demo import preset

DEMO = Flags(
    OnlineSettings,
    "online",
    only=("iterations", "prompts_per_iteration", "steps", "arm", "baseline", "seed"),
    preset=preset.ONLINE,
)


@settings_flags(DEMO)
def demo_command(
    online: OnlineSettings,
    out: Annotated[Path, typer.Option(help="Directory for report.json, report.md, accuracy.png.")] = Path(
        "out/demo"
    ),
) -> None:
    """Run online alignment from judgments end to end on this machine: the local platform (reused if
    `cutalign up` runs), the policy server, generator, judge and target builder, the counting task's base
    model (built once, then cached in S3), ITERATIONS online iterations through the KFP pipeline on the
    local runner, and SFT on positives on the same prompts; prints tables and writes the report under OUT.
    Everything it started is stopped at the end, also on Ctrl-C.
    """
    from cutalign.cli.progress import RunProgress, quiet_libraries
    from cutalign.cli.show import print_session
    from cutalign.demo.app import DemoSettings, run_demo
    from cutalign.iteration.arms import parse_arm

    quiet_libraries()
    parse_arm(online.arm)
    console = Console()
    console.print(
        f"[bold]cutalign demo[/]: judgment-based objective [cyan]{online.arm}[/] vs SFT on positives"
    )
    with RunProgress(console, online.iterations, online.arm) as progress:
        result = run_demo(
            DemoSettings(online=online), out, callbacks=progress.callbacks(), on_base_step=progress.base_step
        )
    print_session(result, out, console)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
