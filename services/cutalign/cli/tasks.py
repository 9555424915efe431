"""``cutalign tasks``: the task families as files, to try with `cutalign run`, `probe` or `warm-start`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Task families nobody tuned the loop for (arithmetic, shift, extract).")


@app.command("export")
def export_command(
    name: Annotated[str, typer.Argument(help="arithmetic, shift or extract.")],
    out: Annotated[Path, typer.Option(file_okay=False, help="Directory for prompts.jsonl and eval.jsonl.")],
    spans: Annotated[bool, typer.Option(help="The judge reports error spans.")] = True,
) -> None:
    """Write a family's training pool (prompts.jsonl) and held-out set (eval.jsonl), and print the flags that
    name its judge and decoding."""
    from cutalign.tasks import get_task

    task = get_task(name, spans=spans)
    out.mkdir(parents=True, exist_ok=True)
    for filename, rows in (("prompts.jsonl", task.train_prompts()), ("eval.jsonl", task.eval_prompts())):
        (out / filename).write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = json.dumps(task.judge_options)
    typer.echo(
        f"wrote {out}/prompts.jsonl and eval.jsonl; use --judge {task.judge} "
        f"--judge-options-json '{options}' --template {task.decoding.template} "
        f"--max-new-tokens {task.decoding.max_new_tokens}"
    )


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="tasks")
