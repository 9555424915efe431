"""The console script's help: every command and sub-command answers ``--help`` at 80 columns with each of
its flags written out whole, and ``cutalign --help`` loads none of the heavy libraries (torch, transformers,
the Kafka, S3, Kubernetes and KFP clients), so help is fast in any image."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import typer
from typer.testing import CliRunner

from cutalign.cli.main import app

HEAVY = ("torch", "transformers", "peft", "kfp", "kubernetes", "confluent_kafka", "minio", "kserve")


def commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``group`` (typer's click objects), with the names that reach it."""
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from commands(sub, (*path, name))


def test_every_command_shows_every_flag_whole_at_80_columns() -> None:
    root = typer.main.get_command(app)
    runner = CliRunner()
    checked = 0
    for path, command in commands(root):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        for param in command.params:
            for flag in (o for o in param.opts if o.startswith("--")):
                assert flag in result.output, f"cutalign {' '.join(path)} --help: {flag} is cut or missing"
        passthrough = command.context_settings.get("help_option_names") == []  # the server's own argparse
        if not passthrough:
            assert max(len(line) for line in result.output.splitlines()) <= 80, path
        checked += 1
    assert checked > 30  # every sub-command of every group was walked


def test_help_loads_no_heavy_library() -> None:
    code = (
        "import sys, json\n"
        "from cutalign.cli.main import main\n"
        "sys.argv = ['cutalign', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []
