"""``cutalign train``: train CUT (or a baseline) on judged examples, from the command line.

Settings come from ``CUTALIGN_TRAINER_*`` environment variables, overridden by the flags below; any other
``TrainerSettings`` field can be given as ``--set key=value`` (e.g. ``--set lora_r=8``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from cutalign.config import S3Settings, TrainerSettings

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)


def train_command(
    data: str = typer.Option(
        ...,
        help="Sealed iteration manifest (s3://bucket/iterations/0001/manifest.json) "
        "or a reference-format .json/.jsonl file.",
    ),
    model: str = typer.Option(
        ..., help="Base model: a Hugging Face model directory or an s3:// prefix holding one."
    ),
    out: str = typer.Option(
        ..., help="Output directory or s3:// prefix: model/, metrics.jsonl, checkpoints/."
    ),
    objective: str | None = typer.Option(None, help="cut | sft | hindsight | unlikelihood."),
    threshold: float | None = typer.Option(
        None, help="λ: detection ratio threshold (1.1 online, 1.2 offline)."
    ),
    unlikelihood_weight: float | None = typer.Option(
        None, help="α: unlikelihood weight (1.0 online, 0.5 offline)."
    ),
    gamma: float | None = typer.Option(
        None, help="γ: dynamic weighting w = α·p_judged^γ (0 = reference code)."
    ),
    combine: str | None = typer.Option(None, help="mean: (L1+L2)/2 (reference code) | sum: L1+L2 (paper)."),
    span_mode: str | None = typer.Option(
        None, help="Unlikelihood tokens: ratio | span | union | intersection."
    ),
    mask_after_error: bool | None = typer.Option(
        None,
        "--mask-after-error/--no-mask-after-error",
        help="No Misalign MLE after the first flagged token.",
    ),
    align_n_weight: float | None = typer.Option(None, help="Weight of the Align-N MLE (1.0 = method)."),
    align_p_ratio: float | None = typer.Option(None, help="File data: keep ratio x negatives positives."),
    learning_rate: float | None = typer.Option(None, help="AdamW learning rate."),
    warmup_ratio: float | None = typer.Option(None, help="Fraction of steps spent warming up."),
    epochs: int | None = typer.Option(None, help="Passes over the data."),
    max_steps: int | None = typer.Option(None, help="Stop after this many optimizer steps."),
    micro_batch_size: int | None = typer.Option(None, help="Examples per forward pass (per process)."),
    grad_accum: int | None = typer.Option(None, help="Micro-batches per optimizer step."),
    cutoff: int | None = typer.Option(None, help="Max sequence length (left truncation keeps the response)."),
    lora: bool | None = typer.Option(None, "--lora/--full", help="Train a LoRA adapter, or every weight."),
    template: str | None = typer.Option(None, help="Prompt templates: auto | plain (paper) | short | chat."),
    seed: int | None = typer.Option(None, help="Seed of data order, LoRA init and dropout."),
    checkpoint_every: int | None = typer.Option(None, help="Optimizer steps between checkpoints."),
    resume: bool | None = typer.Option(
        None, "--resume/--no-resume", help="Continue from the latest checkpoint."
    ),
    set_: list[str] = typer.Option([], "--set", help="Any other TrainerSettings field, as key=value."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Train CUT (or a baseline objective) and export the merged model and per-step metrics."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    # deferred: torch/transformers would slow down every `cutalign --help`
    from cutalign.cut.examples import DataError
    from cutalign.cut.trainer import train
    from cutalign.store import ArtifactStore, ChecksumMismatch, ObjectMissing

    # every flag named like a TrainerSettings field and given on the command line overrides the environment
    flags = {k: v for k, v in locals().items() if k in TrainerSettings.model_fields and v is not None}
    settings = _settings({**flags, **_parse_sets(set_)})
    store = ArtifactStore(S3Settings()) if any(u.startswith("s3://") for u in (data, model, out)) else None
    try:
        result = train(settings, data, model, out, store=store, progress=progress)
    except (DataError, ValueError, FileNotFoundError, ChecksumMismatch, ObjectMissing) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(code=1) from e
    table = Table(title=f"{result.objective}: {result.steps} steps on {result.examples} examples")
    table.add_column("output")
    table.add_column("value")
    table.add_row("model", result.model_uri)
    table.add_row("weights sha256", result.model_sha256)
    table.add_row("metrics", result.metrics_uri)
    for key in ("loss/total", "loss/mle", "loss/unlikelihood", "tokens/flagged_fraction"):
        if key in result.final_metrics:
            table.add_row(key, f"{result.final_metrics[key]:.4f}")
    Console().print(table)


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in TrainerSettings.model_fields:
            raise typer.BadParameter(
                f"--set {pair!r}: expected key=value with key one of "
                f"{', '.join(TrainerSettings.model_fields)}"
            )
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def _settings(overrides: dict[str, Any]) -> TrainerSettings:
    try:
        return TrainerSettings(**overrides)
    except ValidationError as e:
        raise typer.BadParameter(str(e)) from e
