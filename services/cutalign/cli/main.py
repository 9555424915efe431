"""The ``cutalign`` console script: every command, short errors for a user's mistakes, help for 80 columns.

Command modules import only typer and the settings at module level (heavy libraries load inside the
commands), so ``cutalign --help`` and ``cutalign <command> --help`` stay fast. Help is click's plain layout:
it wraps descriptions and never truncates a flag name, whatever the terminal's width.

A :class:`cutalign.errors.UserError` (a bad flag, a missing credential, a malformed file) prints one line and
its hint; ``--verbose`` adds the traceback and INFO logs. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from cutalign import config_reference, modelinit
from cutalign.cli import builder as builder_cli
from cutalign.cli import demo, experiment, platform, reading, run, tasks, train
from cutalign.cli import feedback as feedback_cli
from cutalign.cli import judge as judge_cli
from cutalign.cli import k8s as k8s_cli
from cutalign.cli import policy as policy_cli
from cutalign.errors import UserError

_state = {"verbose": False}


class _Commands(TyperGroup):
    """The root group: a user's mistake becomes a short message and exit status 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (UserError, ValidationError, OSError) as e:
            if _state["verbose"]:
                raise
            typer.echo(f"error: {e}", err=True)
            if hint := getattr(e, "hint", ""):
                typer.echo(f"hint: {hint}", err=True)
            typer.echo("(run with --verbose for the traceback)", err=True)
            raise typer.Exit(2) from e
        except KeyboardInterrupt:
            typer.echo("interrupted: everything this command started has been stopped", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Commands,
    help="cutalign: online alignment from natural-language judgments.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Tracebacks on errors, INFO logs."),
) -> None:
    """Commands for the embedded platform, the services, training, online runs and experiments."""
    _state["verbose"] = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command("config")
def show_config() -> None:
    """Print every configuration key (env var, default, description) as a markdown reference."""
    typer.echo(config_reference.markdown(), nl=False)


for module in (platform, modelinit, train, builder_cli, k8s_cli, judge_cli, feedback_cli, policy_cli):
    module.register(app)
for module in (demo, experiment, run, reading, tasks):
    module.register(app)


def main() -> None:
    """The console script."""
    app()
