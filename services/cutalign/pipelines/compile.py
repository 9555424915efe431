"""Compile the online iteration pipeline to KFP IR YAML: ``python -m cutalign.pipelines.compile --out DIR``.

Writes ``DIR/online_iteration.yaml``. The output is a pure function of the source: KFP 2.17 embeds no
timestamps or random ids (a test compiles twice in separate processes and compares bytes), so
``make pipelines-check`` can diff a fresh compile against the committed file and the chart's copy.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kfp import compiler

from cutalign.pipelines.online_iteration import online_iteration

log = logging.getLogger(__name__)

FILENAME = "online_iteration.yaml"


def compile_pipeline(out_dir: Path | str) -> Path:
    """Compile ``online_iteration`` into ``out_dir`` (created) and return the YAML's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILENAME
    compiler.Compiler().compile(online_iteration, str(path))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compile the cutalign KFP pipeline to IR YAML.")
    parser.add_argument("--out", required=True, type=Path, help=f"Directory to write {FILENAME} into.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("wrote %s", compile_pipeline(args.out))


if __name__ == "__main__":
    main()
