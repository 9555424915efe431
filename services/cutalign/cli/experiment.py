"""``cutalign experiment``: compare objectives ("arms") on identical online data, over several seeds."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cutalign.cli.flags import Flags, settings_flags
from cutalign.cli.reading import print_probe
from cutalign.cli.run import DECODING, JUDGE, TRAINER, task_of
from cutalign.config import JudgeSettings, OnlineSettings, PolicySettings, TrainerSettings

ONLINE = Flags(
    OnlineSettings,
    "online",
    only=("iterations", "prompts_per_iteration", "steps", "threads", "warm_start", "probe"),
)


@settings_flags(ONLINE, TRAINER, JUDGE, DECODING)
def experiment_command(
    online: OnlineSettings,
    trainer: TrainerSettings,
    judge: JudgeSettings,
    policy: PolicySettings,
    arm: Annotated[
        list[str] | None,
        typer.Option(
            "--arm",
            help="Arm to run, repeatable: a preset (cutalign.iteration.arms) or name:key=value,... with "
            "TrainerSettings fields. Default: every preset.",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..N-1 (prompt order and trainer seed).")] = 3,
    base_model: Annotated[
        Path | None,
        typer.Option(
            file_okay=False, help="Base model directory (default: the counting demo's, built once)."
        ),
    ] = None,
    task_name: Annotated[
        str,
        typer.Option("--task", help="counting (the demo's) or a task family: arithmetic, shift, extract."),
    ] = "counting",
    spans: Annotated[bool, typer.Option(help="Task families: the judge reports error spans.")] = True,
    prompts: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Your task's prompt pool (instead of --task)."),
    ] = None,
    eval_file: Annotated[
        Path | None, typer.Option("--eval", exists=True, dir_okay=False, help="Your task's held-out JSONL.")
    ] = None,
    eval_size: Annotated[int, typer.Option(min=0, help="Held-out prompts used (0: all).")] = 0,
    reserve: Annotated[
        int, typer.Option(min=0, help="Pool prompts kept from every iteration, for the probe and warm start.")
    ] = 128,
    reference: Annotated[str, typer.Option(help="Arm the others are compared with (paired).")] = "sft",
    workers: Annotated[int, typer.Option(min=1, help="(arm, seed) runs in parallel (1 thread each).")] = 1,
    base_option: Annotated[
        list[str] | None,
        typer.Option(
            help="Build the demo base with a warm-start knob changed, key=value (e.g. habit_share=0.5); "
            "cached per setting. Ignored with --base-model.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for report.json, report.md, accuracy.png.")] = Path(
        "out/experiment"
    ),
) -> None:
    """Online iterations in-process for each objective ("arm") and seed, on identical prompts, base model,
    judge and step counts; writes mean ± spread over seeds per iteration (report.json, report.md, a plot).

    The task is the counting demo's unless --prompts/--eval (and --judge) give your own. Example (the
    README's comparison): cutalign experiment --arm sft --arm cut --arm span --seeds 3 --learning-rate 1e-3
    """
    from cutalign.cli.progress import quiet_libraries
    from cutalign.experiment.compare import ExperimentPlan, RunResult, run_experiment
    from cutalign.experiment.report import accuracy_table, write_report
    from cutalign.iteration.arms import PRESETS, parse_arms
    from cutalign.online.stack import new_run_id, platform_session
    from cutalign.reading.prepare import prepare

    quiet_libraries()
    arms = parse_arms(arm or list(PRESETS))
    task, base = _task(task_name, spans, prompts, eval_file, judge, policy, base_model, base_option or [])
    if eval_size:
        task = Trimmed(task, eval_size)
    console = Console()
    started = time.perf_counter()
    with platform_session(None, None) as (_, s3, _started):
        run_id = new_run_id()
        seed_list = list(range(seeds))
        plan = ExperimentPlan(task, base, arms, seed_list, online, trainer, s3, run_id, workers, reserve)
        forced = online.model_copy(update={"force": True})  # an experiment measures; it never refuses
        work = out / "runs" / run_id
        prepared = prepare(task, Path(base), forced, plan.spare(), work, threshold=trainer.threshold)
        if prepared.report is not None:
            print_probe(prepared.report, console)
        plan = dataclasses.replace(plan, base_model=str(prepared.base))

        def done(result: RunResult) -> None:
            accs = " ".join(f"{r.accuracy:.3f}" for r in result.records)
            console.print(f"{result.arm} seed {result.seed}: {accs}")

        base_eval, results = run_experiment(plan, on_result=done)
    probe_result: dict[str, Any] = {}
    if prepared.report is not None and prepared.verdict is not None:
        probe_result = {"probe": prepared.report.metrics(), "verdict": dataclasses.asdict(prepared.verdict)}
    config = {
        "command": "cutalign experiment",
        "task": task.name,
        "base_model": base,
        "arms": arms,
        "seeds": seeds,
        "online": online.model_dump(),
        "trainer": trainer.model_dump(mode="json"),
        "template": task.decoding.template,
        "eval_prompts": len(task.eval_prompts()),
        "base_options": base_option or [],
        "warm_started": prepared.reading is not None,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    summaries = write_report(
        out,
        config=config,
        base_accuracy=base_eval.accuracy,
        arms=arms,
        results=results,
        reference=reference,
        probe=probe_result,
    )
    console.print(accuracy_table(summaries, f"held-out accuracy (mean ± std over {seeds} seeds)"))
    console.print(f"wrote {out}/report.json, report.md, accuracy.png in {config['wall_s']} s")


@dataclasses.dataclass(frozen=True)
class Trimmed:
    """A task with its held-out set cut to the first ``eval_size`` prompts (picklable, for --workers)."""

    task: Any
    eval_size: int

    @property
    def name(self) -> str:
        return str(self.task.name)

    @property
    def judge(self) -> str:
        return str(self.task.judge)

    @property
    def judge_options(self) -> Any:
        return self.task.judge_options

    @property
    def decoding(self) -> Any:
        return self.task.decoding

    def train_prompts(self) -> Any:
        return self.task.train_prompts()

    def eval_prompts(self) -> list[Any]:
        return list(self.task.eval_prompts())[: self.eval_size]


def _task(
    name: str,
    spans: bool,
    prompts: Path | None,
    eval_file: Path | None,
    judge: JudgeSettings,
    policy: PolicySettings,
    base_model: Path | None,
    base_options: list[str],
) -> tuple[Any, str]:
    """(the task, its base model): the user's files, a task family (its base built once), or counting."""
    if (prompts is None) != (eval_file is None):
        raise typer.BadParameter("give both --prompts and --eval for your own task, or neither")
    if prompts is not None and eval_file is not None:
        if base_model is None:
            raise typer.BadParameter("--base-model is required with your own task")
        return task_of(prompts, eval_file, judge, policy), str(base_model)
    if name == "counting":
        from cutalign.demo.task import CountingTask

        return CountingTask(), str(base_model or _demo_base_model(base_options))
    from cutalign.tasks import get_task
    from cutalign.tasks.base import TaskBaseSpec, task_base

    task = get_task(name, spans=spans)
    return task, str(base_model or task_base(task, TaskBaseSpec.of(task), Path(".cutalign/models")))


def _demo_base_model(options: list[str]) -> Path:
    """The demo's base model (``options`` changed), built once into ``.cutalign/models/<name>-<hash>``."""
    from cutalign.demo.basemodel import SPEC_FILE, build_base_model, spec_with

    spec = spec_with(options)
    path = Path(".cutalign/models") / f"{spec.name}-{spec.fingerprint}"
    if not (path / SPEC_FILE).is_file():
        Console().print(f"building the demo base model into {path} (cached for later runs)")
        build_base_model(spec, path)
    return path


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment_command)
