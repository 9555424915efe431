"""``cutalign feedback``: serve the production feedback ingestion endpoint."""

from __future__ import annotations

import typer

app = typer.Typer(help="Production feedback ingestion (POST /v1/feedback).", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="feedback")


@app.command("serve")
def serve_cmd(
    host: str | None = typer.Option(None, help="Bind address (CUTALIGN_FEEDBACK_HOST, default 0.0.0.0)."),
    port: int | None = typer.Option(None, help="Port of API, health and metrics (CUTALIGN_FEEDBACK_PORT)."),
) -> None:
    """Accept feedback events and publish them as Judgments until SIGTERM.

    Token and user-hash salt: CUTALIGN_FEEDBACK_TOKEN and CUTALIGN_FEEDBACK_USER_HASH_SALT (Secrets).
    Broker: CUTALIGN_KAFKA_*. Known policy: policy/current.json via CUTALIGN_S3_*, or
    CUTALIGN_FEEDBACK_KNOWN_POLICY_VERSIONS.
    """
    from cutalign.feedback.app import main

    main(**{k: v for k, v in {"host": host, "port": port}.items() if v is not None})
