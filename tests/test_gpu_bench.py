"""The GPU benchmark script stays runnable: its ``--smoke`` mode runs every measurement on a tiny model with
two CPU processes (gloo) through the same code a GPU run takes, and prints and writes every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_smoke_run_measures_every_configuration(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    command = [sys.executable, "-m", "benchmarks.gpu_bench", "--smoke", "--steps", "1", "--warmup", "1"]
    done = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {f["run"]: f for f in json.loads(out.read_text())}
    assert set(runs) == {
        f"{mode}-{strategy} {kind}"
        for mode in ("lora", "full")
        for strategy in ("ddp", "fsdp")
        for kind in ("cut", "sft")
    } | {"lora-ddp reference layout"}
    assert all(f["examples_per_s"] > 0 for f in runs.values())
    assert (
        "lora-ddp: batched / reference layout" in done.stdout
        and "CUT/SFT cost per processed token" in done.stdout
    )
