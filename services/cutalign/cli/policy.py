"""``cutalign policy ...`` (serve, version, rollback) and ``cutalign generate``: the policy commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

policy_app = typer.Typer(help="Serve, identify and roll back the policy model.", no_args_is_help=True)


@policy_app.command(
    "serve",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def serve(ctx: typer.Context) -> None:
    """Run the embedded KServe policy server; every argument goes to it (``cutalign policy serve --help``).

    Example: ``cutalign policy serve --policy_uri s3://cutalign/models/demo --watch_current true``
    """
    from cutalign.policy.server import main

    main(list(ctx.args) or ["--help"], prog="cutalign policy serve")


@policy_app.command("version")
def version(
    checkpoint: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Checkpoint directory.")],
    base: Annotated[
        Path | None,
        typer.Option(exists=True, file_okay=False, help="Base model of a LoRA adapter CHECKPOINT."),
    ] = None,
) -> None:
    """Print the policy sha256 of a checkpoint, as the policy server and every Sample record it."""
    from cutalign.policy.version import policy_sha256

    typer.echo(policy_sha256(checkpoint, base))


@policy_app.command("rollback")
def rollback_command(
    iteration: Annotated[int, typer.Argument(min=0, help="Iteration whose release should be served again.")],
) -> None:
    """Serve the release of ITERATION again: point policy/current.json at it and roll it out.

    The rollout is the one a promotion does in CUTALIGN_POLICY_MODE (vLLM/TGI Deployment, KServe storage URI;
    the embedded server and vLLM's LoRA sidecars follow policy/current.json), on
    CUTALIGN_ITERATION_POLICY_RESOURCE in CUTALIGN_ITERATION_POLICY_NAMESPACE, through the pod's service
    account or your kubeconfig.
    """
    from cutalign.config import IterationSettings, PolicySettings, S3Settings
    from cutalign.policy.promotion import rollback
    from cutalign.policy.rollout import roll_out
    from cutalign.policy.version import describe
    from cutalign.store import ArtifactStore

    store = ArtifactStore(S3Settings())
    release = rollback(store, iteration)
    typer.echo(f"policy/current.json -> {describe(release.version)}")
    roll_out(release, settings=IterationSettings(), policy=PolicySettings(), store=store)
    typer.echo("rolled out")


def generate_command() -> None:
    """Run the generator service: prompts topic -> policy server -> samples topic (CUTALIGN_* settings).

    Configure with CUTALIGN_KAFKA_*, CUTALIGN_POLICY_* (url, backend, decoding) and CUTALIGN_GENERATOR_*
    (group_id, iteration, expected_policy_sha256, http_port). SIGTERM finishes the batch, commits and exits.
    """
    from cutalign.generator.service import main

    main()


def register(app: typer.Typer) -> None:
    """Add ``policy`` and ``generate`` to the ``cutalign`` CLI."""
    app.add_typer(policy_app, name="policy")
    app.command("generate")(generate_command)
