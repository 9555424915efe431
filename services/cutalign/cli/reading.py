"""``cutalign probe`` (will CUT learn on this task?) and ``cutalign warm-start`` (teach reading judgments)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cutalign.cli.flags import Flags, settings_flags
from cutalign.cli.run import DECODING, JUDGE, ModelDir, PromptsFile
from cutalign.config import JudgeSettings, PolicySettings, TrainerSettings
from cutalign.reading.settings import READING_TRAINING, ReadingSettings, WarmStartSettings

THRESHOLD = Flags(TrainerSettings, "trainer", only=("threshold",))
READING = Flags(ReadingSettings, "reading")
TRAINING = Flags(
    WarmStartSettings,
    "training",
    skip=("template", "seed", "group_by_length"),
    preset={k: getattr(READING_TRAINING, k) for k in ("epochs", "learning_rate", "lora")},
)


def probe_task(model: Path, task: Any, prompts: list[Any], threshold: float) -> Any:
    """Greedy responses of ``model`` to ``prompts``, judged, then the probe (``cutalign.reading.probe``)."""
    from cutalign.iteration.respond import respond
    from cutalign.judges.loader import load_judge
    from cutalign.policy.loading import load_policy
    from cutalign.reading.probe import probe

    policy = load_policy(str(model))
    judged = respond(policy, prompts, load_judge(task.judge, task.judge_options), task.decoding)
    return probe(policy, judged, template=task.decoding.template, threshold=threshold)


def print_probe(report: Any, console: Console) -> Any:
    """The probe's figures and its verdict; returns the verdict."""
    from cutalign.reading.probe import verdict

    table = Table(title="what CUT will see", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in report.metrics().items():
        table.add_row(name, f"{value:.3f}")
    console.print(table)
    result = verdict(report)
    expect = "[green]expect CUT to learn: " if result.ok else "[red]expect CUT not to learn: "
    console.print(expect + result.finding)
    if result.advice:
        console.print(f"what to change: {result.advice}")
    return result


@settings_flags(JUDGE, DECODING, THRESHOLD)
def probe_command(
    model: ModelDir,
    prompts: PromptsFile,
    judge: JudgeSettings,
    policy: PolicySettings,
    trainer: TrainerSettings,
    max_prompts: Annotated[int, typer.Option(min=2, help="Prompts of the file probed.")] = 128,
    out: Annotated[Path | None, typer.Option(dir_okay=False, help="Write the figures as JSON.")] = None,
) -> None:
    """Sample MODEL on your PROMPTS, judge the responses, and measure what CUT will see: the positive rate,
    and whether the model reads judgments (the contrast between its own judgment and another response's,
    the flagged fraction at λ, and detection precision/recall when the judge reports spans). Says plainly
    what to expect and what to change."""
    from cutalign.cli.progress import quiet_libraries
    from cutalign.cli.run import task_of

    quiet_libraries()
    task = task_of(prompts, prompts, judge, policy)
    report = probe_task(model, task, task.train_prompts()[:max_prompts], trainer.threshold)
    print_probe(report, Console())
    if out is not None:
        out.write_text(json.dumps(report.metrics(), indent=2, sort_keys=True))


@settings_flags(JUDGE, DECODING, READING, TRAINING)
def warm_start_command(
    model: ModelDir,
    prompts: PromptsFile,
    judge: JudgeSettings,
    policy: PolicySettings,
    reading: ReadingSettings,
    training: WarmStartSettings,
    out: Annotated[Path, typer.Option(file_okay=False, help="Directory for the warm-started model.")],
) -> None:
    """Teach MODEL to read judgments on your task: sample its responses to PROMPTS (keep them apart from the
    online loop's and the held-out ones), judge them, and train it on each response under its judgment (and
    the right and corrected responses under the plain prompt). Full fine-tuning, sized for small models."""
    from cutalign.cli.progress import quiet_libraries
    from cutalign.cli.run import task_of
    from cutalign.reading.warmstart import reading_warm_start

    quiet_libraries()
    task = task_of(prompts, prompts, judge, policy)
    data = reading_warm_start(model, task, task.train_prompts(), out, reading=reading, training=training)
    typer.echo(
        f"wrote {out}: trained on {len(data.examples)} examples from {data.responses} judged responses "
        f"({data.positives} right, {data.corrections} corrections)"
    )


def register(app: typer.Typer) -> None:
    app.command("probe")(probe_command)
    app.command("warm-start")(warm_start_command)
