"""Trainer entry point inside a PyTorchJob: ``torchrun --nproc-per-node N services/trainer/main.py ...``.

A thin script over ``cutalign.cut.trainer.train``: hyperparameters come from ``CUTALIGN_TRAINER_*`` and the
store from ``CUTALIGN_S3_*`` environment variables (Helm values / the pipeline set them), locations from the
arguments. Every rank runs this same command. Exit status 0 only when the merged model and metrics are
written; ``--result-json`` (rank 0) records where they are, for the pipeline step that reads them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from cutalign.config import S3Settings, TrainerSettings
from cutalign.cut.trainer import Outputs, train
from cutalign.store import ArtifactStore


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="s3://.../manifest.json or a .json/.jsonl file")
    parser.add_argument("--model", required=True, help="base model directory or s3:// prefix")
    parser.add_argument("--out", required=True, help="output directory or s3:// prefix")
    parser.add_argument("--model-out", help="merged model location (default: OUT/model)")
    parser.add_argument("--metrics-out", help="metrics JSONL location (default: OUT/metrics.jsonl)")
    parser.add_argument("--checkpoints", help="checkpoint root (default: OUT/checkpoints)")
    parser.add_argument("--result-json", type=Path, help="write the TrainResult here (rank 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s"
    )
    settings = TrainerSettings()
    default = Outputs.under(args.out)
    outputs = Outputs(
        model=args.model_out or default.model,
        metrics=args.metrics_out or default.metrics,
        checkpoints=args.checkpoints or default.checkpoints,
    )
    locations = (args.data, args.model, outputs.model, outputs.metrics, outputs.checkpoints)
    store = ArtifactStore(S3Settings()) if any(u.startswith("s3://") for u in locations) else None
    result = train(settings, args.data, args.model, args.out, store=store, progress=False, outputs=outputs)
    if rank == 0 and args.result_json is not None:
        args.result_json.write_text(json.dumps(asdict(result), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
