"""Compile the online iteration pipeline to KFP IR YAML: ``python -m cutalign.pipelines.compile --out DIR``.

Writes ``DIR/online_iteration.yaml``, deployed as ``--wiring FILE`` (a ``PipelineWiring`` JSON; default: the
chart's defaults for a release named ``cutalign``). The output is a pure function of the source and the
wiring: KFP 2.17 embeds no timestamps or random ids (a test compiles twice in separate processes and compares
bytes), so ``make pipelines-check`` can diff a fresh compile against the committed file, and the chart's
upload names a version after the file's sha256.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kfp import compiler

from cutalign.pipelines.online_iteration import build_pipeline
from cutalign.pipelines.wiring import PipelineWiring

log = logging.getLogger(__name__)

FILENAME = "online_iteration.yaml"


def compile_pipeline(out_dir: Path | str, wiring: PipelineWiring | None = None) -> Path:
    """Compile ``online_iteration`` for ``wiring`` into ``out_dir`` (created) and return the YAML's path."""
    wiring = wiring or PipelineWiring()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILENAME
    compiler.Compiler().compile(
        build_pipeline(wiring), str(path), pipeline_parameters=wiring.defaults or None
    )
    return path


def read_wiring(path: Path | str) -> PipelineWiring:
    return PipelineWiring.model_validate_json(Path(path).read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compile the cutalign KFP pipeline to IR YAML.")
    parser.add_argument("--out", required=True, type=Path, help=f"Directory to write {FILENAME} into.")
    parser.add_argument(
        "--wiring", type=Path, help="PipelineWiring JSON (the chart renders one per release)."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("wrote %s", compile_pipeline(args.out, read_wiring(args.wiring) if args.wiring else None))


if __name__ == "__main__":
    main()
