"""`cutalign up | down | status`: the embedded local platform (Tansu + SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from cutalign.config import KafkaSettings

if TYPE_CHECKING:
    from cutalign.platform import LocalPlatform

console = Console()


def _platform() -> LocalPlatform:
    from cutalign.platform import LocalPlatform

    return LocalPlatform.from_env()


def up() -> None:
    """Start the broker and the S3 store (data persists in CUTALIGN_PLATFORM_DATA_DIR); create topics."""
    from cutalign.bus import provision_topics

    platform = _platform()
    platform.up()
    provision_topics(KafkaSettings(bootstrap_servers=f"127.0.0.1:{platform.settings.kafka_port}"))
    status(as_json=False)
    console.print(f"clients: source {platform.credentials_file}  (S3 credentials and endpoints)")


def down() -> None:
    """Stop exactly the processes `up` started; data stays for the next `up`."""
    stopped = _platform().down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


def status(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Show whether the broker and the store are running and listening."""
    state = _platform().status()
    if as_json:
        console.print_json(json.dumps(state))
        return
    table = Table("component", "running", "pid", "port", "listening")
    for name, info in state.items():
        table.add_row(name, str(info["running"]), str(info["pid"]), str(info["port"]), str(info["listening"]))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
