"""``cutalign run`` (the online loop on a user's own task) and ``cutalign eval`` (one model, one eval set)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cutalign.experiment.arms import PRESETS
from cutalign.store import ArtifactStore

console = Console()

PromptsFile = Annotated[
    Path, typer.Option(exists=True, dir_okay=False, help="JSONL of {id, instruction, ...}.")
]
EvalFile = Annotated[
    Path,
    typer.Option("--eval", exists=True, dir_okay=False, help="Held-out JSONL, same format as --prompts."),
]
JudgeSpec = Annotated[
    str, typer.Option(help="Judge plug-in: package.module:Class or an entry-point name (e.g. counting).")
]
JudgeOptions = Annotated[str, typer.Option(help="JSON object of keyword arguments for the judge.")]
Template = Annotated[str, typer.Option(help="Prompt template: plain (the paper's) or short.")]


def _rows(path: Path) -> list[dict[str, Any]]:
    from cutalign.iteration.prompts import PromptSetError, parse_prompt_set

    try:
        return parse_prompt_set(path.read_bytes(), str(path))
    except PromptSetError as e:
        raise typer.BadParameter(str(e)) from e


def split_prompts(
    rows: list[dict[str, Any]], iterations: int, per_iteration: int
) -> list[list[dict[str, Any]]]:
    """Consecutive, disjoint slices: each iteration gets fresh prompts, never reused (method page §6)."""
    per_iteration = per_iteration or len(rows) // iterations
    if per_iteration < 1 or per_iteration * iterations > len(rows):
        raise typer.BadParameter(
            f"{len(rows)} prompts cannot give {iterations} iterations x {per_iteration or '?'} fresh "
            "prompts; add prompts or lower --iterations / --prompts-per-iteration"
        )
    return [rows[i * per_iteration : (i + 1) * per_iteration] for i in range(iterations)]


def run_command(
    prompts: PromptsFile,
    eval_file: EvalFile,
    judge: JudgeSpec,
    base_model: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="Hugging Face model directory to start from.")
    ],
    iterations: Annotated[int, typer.Option(min=1, help="Online iterations.")] = 3,
    out: Annotated[Path, typer.Option(help="Directory for report.json, accuracy.png and run files.")] = Path(
        "out/run"
    ),
    judge_options: JudgeOptions = "{}",
    prompts_per_iteration: Annotated[
        int, typer.Option(min=0, help="Fresh prompts per iteration (0: all prompts / iterations).")
    ] = 0,
    arm: Annotated[
        str,
        typer.Option(
            help=f"Objective: one of {', '.join(PRESETS)}. Default cut (the method as published, any judge); "
            "the span arms (the demo's best) need a judge that reports error spans."
        ),
    ] = "cut",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps per iteration.")] = 30,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    lora: Annotated[bool, typer.Option(help="Train a LoRA adapter (merged after each iteration).")] = True,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank (alpha = rank).")] = 16,
    micro_batch_size: Annotated[int, typer.Option(min=1, help="Examples per optimizer step.")] = 8,
    template: Template = "plain",
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Generation length limit.")] = 64,
    baseline: Annotated[bool, typer.Option(help="Also run SFT on positives on the same prompts.")] = False,
    verbose: Annotated[bool, typer.Option(help="Log every service's INFO lines.")] = False,
) -> None:
    """Online alignment on your own task: each iteration publishes fresh prompts from PROMPTS (consecutive
    slices), the policy (served from BASE_MODEL, then each promoted iteration) answers, JUDGE judges, the
    target builder seals the judgments, the trainer learns from them, and the result is evaluated on EVAL
    and promoted — through the local platform, services and KFP pipeline, as `cutalign demo` does.

    Extra JSONL fields (anything but id/instruction/input) reach the judge as `reference`. Writes the same
    report.json and accuracy.png as the demo under OUT.
    """
    from cutalign.online import report as online_report
    from cutalign.online.progress import RunProgress, quiet_libraries
    from cutalign.online.session import SessionSettings, builder_ratio, run_session
    from cutalign.online.stack import StackSettings, new_run_id

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    quiet_libraries()
    chosen = arm
    if chosen not in PRESETS:
        raise typer.BadParameter(f"unknown arm {chosen!r}; choose from {', '.join(PRESETS)}")
    _check_judge(judge, judge_options)
    per_iteration = split_prompts(_rows(prompts), iterations, prompts_per_iteration)
    eval_rows = _rows(eval_file)
    run_id = new_run_id()
    arm_overrides = dict(PRESETS[chosen])
    trainer = {"learning_rate": learning_rate, "lora": lora, "lora_r": lora_r, "lora_alpha": lora_r,
               "micro_batch_size": micro_batch_size}  # fmt: skip
    base = str(base_model.resolve())
    try:
        with RunProgress(console, iterations, chosen) as progress:
            report = run_session(
                SessionSettings(
                    arm=chosen, arm_overrides=arm_overrides, trainer=trainer, steps=steps, baseline=baseline
                ),
                StackSettings(
                    run_id=run_id,
                    work_dir=out / "runs" / run_id,
                    template=template,
                    max_new_tokens=max_new_tokens,
                    judge=judge,
                    judge_options_json=judge_options,
                    align_p_ratio=builder_ratio(arm_overrides),
                ),
                lambda store: upload_base_model(store, Path(base)),
                lambda uri, s3: Path(base),
                per_iteration,
                eval_rows,
                callbacks=progress.callbacks(),
            )
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: everything this run started has been stopped")
        raise typer.Exit(130) from None
    console.print(online_report.table(report))
    for line in online_report.summary_lines(report):
        console.print(line)
    json_path, png_path = online_report.write(report, out)
    console.print(f"wrote {json_path} and {png_path}")


def eval_command(
    model: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Hugging Face model directory.")],
    eval_file: EvalFile,
    judge: JudgeSpec,
    judge_options: JudgeOptions = "{}",
    template: Template = "plain",
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Generation length limit.")] = 64,
    out: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Write the full report (every response) as JSON.")
    ] = None,
) -> None:
    """Evaluate one model on a held-out JSONL with a judge: greedy responses under the plain template, judged,
    accuracy = share judged positive — the pipeline's evaluation step, without the pipeline."""
    from cutalign.iteration.evaluate import evaluate_policy
    from cutalign.judges.loader import load_judge, parse_options
    from cutalign.online.progress import quiet_libraries

    quiet_libraries()
    _check_judge(judge, judge_options)
    report = evaluate_policy(
        str(model),
        _rows(eval_file),
        load_judge(judge, parse_options(judge_options)),
        s3=None,
        template=template,
        max_new_tokens=max_new_tokens,
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(report.to_json())
    console.print(json.dumps(report.metrics(), sort_keys=True))
    console.print(f"accuracy {report.accuracy:.3f} ({report.positives}/{report.total}) for {model}")


def upload_base_model(store: ArtifactStore, directory: Path) -> str:
    """Copy a local base model to ``models/<dir name>-<sha256 prefix>/`` (once per content); return its URI.

    The whole run then reads it from the store like any promoted policy: the policy server, which loads later
    releases from S3, gets its S3 settings from serving an S3 URI, and the run's records name it by content.
    """
    from cutalign.policy.version import dir_sha256
    from cutalign.store.layout import base_model_prefix

    prefix = base_model_prefix(f"{directory.name}-{dir_sha256(directory)[:12]}")
    store.ensure_bucket()
    if not store.list(prefix):
        store.upload_dir(prefix, directory)
    return store.uri(prefix).rstrip("/")


def _check_judge(judge: str, options: str) -> None:
    """Load the judge once up front, so a typo fails before anything starts."""
    from cutalign.judges.loader import JudgeLoadError, load_judge, parse_options

    try:
        load_judge(judge, parse_options(options))
    except (JudgeLoadError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("eval")(eval_command)
