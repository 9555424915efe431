"""`cutalign builder run | seal`: the target builder service, and sealing an iteration by hand."""

from __future__ import annotations

import json

import typer

from cutalign.config import BuilderSettings, S3Settings

app = typer.Typer(help="Target builder: judgments in, CUT training shards and sealed iterations out.")


@app.command("run")
def run_service() -> None:
    """Run the builder service (settings from CUTALIGN_KAFKA_*, _S3_*, _BUILDER_*) until SIGTERM."""
    from cutalign.builder.service import main

    main()


@app.command("seal")
def seal(
    iteration: int = typer.Option(..., "--iteration", "-i", min=0, help="Iteration to seal."),
    align_p_ratio: float | None = typer.Option(
        None, min=0, help="Keep ratio x negatives positives (default: CUTALIGN_BUILDER_ALIGN_P_RATIO)."
    ),
    seed: int | None = typer.Option(None, help="Downsampling seed (default: CUTALIGN_BUILDER_SEED)."),
) -> None:
    """Seal an iteration: verify its shards, downsample Align-P, write the immutable iteration manifest.

    Idempotent: an iteration already sealed prints its existing manifest. Seals what is durable now; a
    running builder's buffered judgments for this iteration then arrive late (POST /seal flushes them first).
    """
    from cutalign.builder.requests import manifest_summary
    from cutalign.builder.seal import EmptyIteration, seal_iteration
    from cutalign.store import ArtifactStore

    overrides = {k: v for k, v in {"align_p_ratio": align_p_ratio, "seed": seed}.items() if v is not None}
    settings = BuilderSettings().model_copy(update=overrides)  # type: ignore[call-arg]  # from the environment
    store = ArtifactStore(S3Settings())  # type: ignore[call-arg]
    try:
        manifest = seal_iteration(store, settings, iteration, sealed_by="cli")
    except EmptyIteration as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from e
    typer.echo(json.dumps(manifest_summary(store, manifest), indent=2))


def register(cli: typer.Typer) -> None:
    cli.add_typer(app, name="builder")
