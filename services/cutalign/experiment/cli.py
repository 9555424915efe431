"""``cutalign experiment``: compare objectives on identical online data (issue 8/9 baselines)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cutalign.experiment.arms import DEFAULT_ARMS, PRESETS, parse_arm, parse_arms

log = logging.getLogger(__name__)
console = Console()


def shared_trainer_settings(
    learning_rate: float, lora: bool, lora_r: int, micro_batch_size: int, extra: list[str]
) -> dict[str, Any]:
    """TrainerSettings every arm shares: the flags, then ``--trainer key=value`` overrides (checked)."""
    shared: dict[str, Any] = {
        "learning_rate": learning_rate,
        "lora": lora,
        "lora_r": lora_r,
        "lora_alpha": lora_r,
        "micro_batch_size": micro_batch_size,
        "cutoff": 512,
    }
    if extra:
        _, checked = parse_arm("shared:" + ",".join(extra))
        shared.update(checked)
    return shared


def experiment_command(
    out: Annotated[Path, typer.Option(help="Directory for results.json, results.md, accuracy.png.")] = Path(
        "out/experiment"
    ),
    base_model: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Base model directory (default: build the demo's, cached in .cutalign/models).",
        ),
    ] = None,
    arm: Annotated[
        list[str] | None,
        typer.Option(
            "--arm",
            help=f"Arm to run, repeatable: a preset ({', '.join(PRESETS)}) or name:key=value,... "
            f"with TrainerSettings fields. Default: {', '.join(DEFAULT_ARMS)}.",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..N-1 (prompts and trainer seed).")] = 3,
    iterations: Annotated[int, typer.Option(min=1, help="Online iterations per run.")] = 3,
    prompts_per_iteration: Annotated[int, typer.Option(min=1, help="Fresh prompts per iteration.")] = 200,
    eval_size: Annotated[int, typer.Option(min=0, help="Held-out prompts evaluated (0: all 150).")] = 0,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps per iteration, every arm.")] = 30,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate, every arm.")] = 1e-3,
    lora: Annotated[bool, typer.Option(help="LoRA (else full fine-tuning), every arm.")] = True,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank (alpha = rank).")] = 16,
    micro_batch_size: Annotated[int, typer.Option(min=1, help="Examples per optimizer step.")] = 8,
    trainer: Annotated[
        list[str] | None, typer.Option("--trainer", help="Other shared TrainerSettings as key=value.")
    ] = None,
    reference: Annotated[str, typer.Option(help="Arm the others are compared with (paired).")] = "sft",
    workers: Annotated[int, typer.Option(min=1, help="(arm, seed) runs in parallel (1 thread each).")] = 1,
    threads: Annotated[int, typer.Option(min=1, help="torch threads with --workers 1.")] = 2,
    probe_detection: Annotated[
        bool, typer.Option(help="First measure the base model's ratio detection (own vs synthetic errors).")
    ] = True,
    base_option: Annotated[
        list[str] | None,
        typer.Option(
            "--base-option",
            help="Build the demo base with a warm-start knob changed, key=value (e.g. habit_share=0.5, "
            "n_judged=0, epochs=8); cached per setting. Ignored with --base-model.",
        ),
    ] = None,
) -> None:
    """Online iterations in-process for each objective ("arm") and seed, on identical prompts, base model,
    judge and step counts; writes mean ± spread over seeds per iteration as JSON, markdown and a PNG plot.

    Example (the README's comparison):
    cutalign experiment --arm sft --arm cut --arm span-noalignn --seeds 3 --out out/experiment
    """
    from cutalign.demo.task import CountingTask
    from cutalign.experiment.compare import ExperimentPlan, RunResult, run_experiment
    from cutalign.experiment.loop import LoopSettings
    from cutalign.experiment.report import write_report
    from cutalign.online.progress import quiet_libraries

    logging.basicConfig(level=logging.WARNING)
    quiet_libraries()
    try:
        arms = parse_arms(arm or list(DEFAULT_ARMS))
        shared = shared_trainer_settings(learning_rate, lora, lora_r, micro_batch_size, trainer or [])
        spec = base_spec(base_option or [])
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    task = CountingTask()
    base = str(base_model) if base_model else str(_demo_base_model(spec))
    eval_prompts = task.eval_prompts()[: eval_size or None]
    loop = LoopSettings(iterations=iterations, steps=steps, trainer=shared, threads=threads)
    plan = ExperimentPlan(
        base_model=base,
        arms=arms,
        seeds=list(range(seeds)),
        train_pool=task.train_prompts(len(task.split()[0])),
        eval_prompts=eval_prompts,
        prompts_per_iteration=prompts_per_iteration,
        loop=loop,
        workers=workers,
    )
    started = time.perf_counter()
    probe = _probe(base, eval_prompts, loop, float(shared.get("threshold", 1.1))) if probe_detection else {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("runs (arm x seed)", total=len(arms) * seeds)

        def done(result: RunResult) -> None:
            accs = " ".join(f"{r.accuracy:.3f}" for r in result.records)
            progress.console.print(f"{result.arm} seed {result.seed}: {accs}")
            progress.advance(bar)

        accuracy0, results = run_experiment(plan, on_result=done)
    config = {
        "command": "cutalign experiment",
        "base_model": base,
        "arms": arms,
        "seeds": seeds,
        "iterations": iterations,
        "prompts_per_iteration": prompts_per_iteration,
        "eval_prompts": len(eval_prompts),
        "steps_per_iteration": steps,
        "shared_trainer": shared,
        "template": loop.template,
        "base_options": base_option or [],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    summaries = write_report(
        out,
        config=config,
        base_accuracy=accuracy0,
        arms=arms,
        results=results,
        reference=reference,
        detection_probe=probe,
    )
    table = Table(title=f"held-out accuracy (mean ± std over {seeds} seeds)")
    table.add_column("arm")
    for i in range(iterations + 1):
        table.add_column(f"iter {i}", justify="right")
    for s in summaries:
        table.add_row(s.arm, *(str(a) for a in s.accuracy))
    console.print(table)
    console.print(f"wrote {out}/results.json, results.md, accuracy.png in {config['wall_s']} s")
    log.debug("config %s", json.dumps(config, default=str))


def _probe(base: str, eval_prompts: list[Any], loop: Any, threshold: float) -> dict[str, dict[str, float]]:
    """The base model's ratio detection on its own wrong eval responses and on synthetic single errors."""
    from cutalign.experiment.loop import respond
    from cutalign.experiment.probe import detection_of, own_negatives, synthetic_negatives
    from cutalign.judges.loader import load_judge
    from cutalign.policy.loading import load_policy

    judge = load_judge("counting")
    own = own_negatives(respond(load_policy(base), eval_prompts, judge, loop.decoding))
    sets = {"own wrong responses": own, "synthetic single errors": synthetic_negatives(eval_prompts, judge)}
    return {
        name: detection_of(base, examples, template=loop.template, threshold=threshold)
        for name, examples in sets.items()
        if examples
    }


def base_spec(options: list[str]) -> Any:
    """The demo's ``BaseModelSpec`` with ``key=value`` warm-start knobs (data or optimisation) changed."""
    import dataclasses

    from cutalign.demo.basemodel import BaseModelSpec

    spec = BaseModelSpec()
    for option in options:
        key, eq, value = option.partition("=")
        for part in ("data", "training"):
            section = getattr(spec, part)
            if eq and key in {f.name for f in dataclasses.fields(section)}:
                kind = type(getattr(section, key))
                typed = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
                spec = dataclasses.replace(spec, **{part: dataclasses.replace(section, **{key: typed})})
                break
        else:
            raise ValueError(
                f"--base-option {option!r}: expected key=value with a warm-start data or training field"
            )
    return spec


def _demo_base_model(spec: Any) -> Path:
    """The demo's base model (``spec``), built once into ``.cutalign/models/<name>-<hash>`` (local cache)."""
    from cutalign.demo.basemodel import SPEC_FILE, build_base_model

    path = Path(".cutalign/models") / f"{spec.name}-{spec.fingerprint}"
    if not (path / SPEC_FILE).is_file():
        console.print(f"building the demo base model into {path} (cached for later runs)")
        build_base_model(spec, path)
    return path


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment_command)
