"""Entry point of the `cutalign` console script; each area registers its own subcommands here."""

import typer

from cutalign import config_reference, modelinit
from cutalign.builder import cli as builder_cli
from cutalign.cli import platform
from cutalign.cut import cli as train_cli
from cutalign.demo import cli as demo_cli
from cutalign.experiment import cli as experiment_cli
from cutalign.feedback import cli as feedback_cli
from cutalign.judging import cli as judge_cli
from cutalign.k8s import cli as k8s_cli
from cutalign.online import cli as online_cli
from cutalign.policy import cli as policy_cli

app = typer.Typer(help="cutalign: online alignment from natural-language judgments.", no_args_is_help=True)
platform.register(app)
modelinit.register(app)
train_cli.register(app)
builder_cli.register(app)
k8s_cli.register(app)
judge_cli.register(app)
feedback_cli.register(app)
policy_cli.register(app)


@app.command("config")
def show_config() -> None:
    """Print every configuration key (env var, default, description) as a markdown reference."""
    typer.echo(config_reference.markdown(), nl=False)


demo_cli.register(app)
experiment_cli.register(app)
online_cli.register(app)
