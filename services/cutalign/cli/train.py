"""``cutalign train``: train CUT (or a baseline) on judged examples, from the command line.

Every ``TrainerSettings`` field is a flag (``--micro-batch-size``, ``--lora/--no-lora``, ...); flags not given
come from ``CUTALIGN_TRAINER_*``, then the defaults.
"""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.table import Table

from cutalign.cli.flags import Flags, settings_flags
from cutalign.config import TrainerSettings


@settings_flags(Flags(TrainerSettings, "trainer"))
def train_command(
    trainer: TrainerSettings,
    data: str = typer.Option(
        ...,
        help="Sealed iteration manifest (s3://bucket/iterations/0001/manifest.json) or a reference-format "
        ".json/.jsonl file.",
    ),
    model: str = typer.Option(..., help="Base model: a Hugging Face model directory or an s3:// prefix."),
    out: str = typer.Option(
        ..., help="Output directory or s3:// prefix: model/, metrics.jsonl, checkpoints/."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train CUT (or a baseline objective) and export the model and per-step metrics."""
    from rich.logging import RichHandler

    from cutalign.config import S3Settings
    from cutalign.cut.trainer import train
    from cutalign.store import ArtifactStore

    logging.getLogger().handlers[:] = [RichHandler(console=Console(stderr=True), show_path=False)]
    store = ArtifactStore(S3Settings()) if any(u.startswith("s3://") for u in (data, model, out)) else None
    result = train(trainer, data, model, out, store=store, progress=progress)
    table = Table(title=f"{result.objective}: {result.steps} steps on {result.examples} examples")
    table.add_column("output")
    table.add_column("value", overflow="fold")
    table.add_row("model", result.model_uri)
    table.add_row("checkpoint sha256", result.model_sha256)
    table.add_row("metrics", result.metrics_uri)
    for key in ("loss/total", "loss/mle", "loss/unlikelihood", "tokens/flagged_fraction"):
        if key in result.final_metrics:
            table.add_row(key, f"{result.final_metrics[key]:.4f}")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
