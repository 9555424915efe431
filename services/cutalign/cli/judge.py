"""``cutalign judge``: run the judge service (Kafka) or serve a judge over KServe."""

from __future__ import annotations

import typer

app = typer.Typer(help="Judge samples: the Kafka judge service and the KServe judge.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="judge")


@app.command("serve")
def serve_cmd(
    judge: str | None = typer.Option(
        None, help="Entry point name or 'package.module:Class' (CUTALIGN_JUDGE_JUDGE)."
    ),
    options_json: str | None = typer.Option(
        None, help="JSON object of judge options (CUTALIGN_JUDGE_OPTIONS_JSON)."
    ),
    group_id: str | None = typer.Option(None, help="Consumer group (CUTALIGN_JUDGE_GROUP_ID)."),
    concurrency: int | None = typer.Option(None, help="Judge calls in flight (CUTALIGN_JUDGE_CONCURRENCY)."),
    http_port: int | None = typer.Option(None, help="Health/metrics port (CUTALIGN_JUDGE_HTTP_PORT)."),
) -> None:
    """Judge Samples from the samples topic and publish Judgments until SIGTERM.

    Unset options come from CUTALIGN_JUDGE_* and the broker from CUTALIGN_KAFKA_*.
    """
    from cutalign.judging.service import main

    given = {
        "judge": judge,
        "options_json": options_json,
        "group_id": group_id,
        "concurrency": concurrency,
        "http_port": http_port,
    }
    main(**{k: v for k, v in given.items() if v is not None})


@app.command("kserve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def kserve_cmd(ctx: typer.Context) -> None:
    """Serve a judge as a KServe model (v1/v2 protocols) for synchronous judging.

    Arguments are those of `python -m cutalign.judging.kserve_model`, e.g. --http_port 8080 --judge llm.
    """
    from cutalign.judging.kserve_model import main

    main(list(ctx.args))
