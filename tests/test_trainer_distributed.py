"""The PyTorchJob entry point as real processes: 2 torchrun ranks (Gloo, CPU) equal 1 process with the same
global batch, under DDP and under FSDP2 (whose checkpoints resume under FSDP), and a run SIGKILLed
mid-training then restarted equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cutalign.cut.export import read_metrics
from trainer_support import arithmetic_records, tiny_model, write_jsonl

ENTRY = Path(__file__).resolve().parents[1] / "services" / "trainer" / "main.py"
pytestmark = pytest.mark.slow


def _env(**settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUTALIGN_TRAINER_")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    base = {"template": "short", "learning_rate": 0.01, **settings}
    env.update({f"CUTALIGN_TRAINER_{k.upper()}": str(v) for k, v in base.items()})
    return env


def _args(data: Path, base: Path, out: Path) -> list[str]:
    return [
        str(ENTRY),
        "--data",
        str(data),
        "--model",
        str(base),
        "--out",
        str(out),
        "--result-json",
        str(out.parent / f"{out.name}.result.json"),
    ]


def _run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_same_run(a: Path, b: Path) -> float:
    """Exported weights and per-step metrics agree; returns the largest weight difference."""
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6, msg=name)
    ma, mb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [m["step"] for m in ma] == [m["step"] for m in mb]
    for x, y in zip(ma, mb, strict=True):
        for key in ("loss/total", "loss/mle", "loss/unlikelihood", "tokens/flagged_fraction", "lr"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["step"], key)
    return max(float((wa[n].float() - wb[n].float()).abs().max()) for n in wa)


def test_two_gloo_ranks_equal_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    base = tiny_model(tmp_path / "base")
    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_records(12))
    common = dict(micro_batch_size=2, max_steps=3, lora_dropout=0.0)  # dropout streams differ per rank
    _run([sys.executable, *_args(data, base, tmp_path / "single")], _env(**common, grad_accum=2))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    _run([*torchrun, *_args(data, base, tmp_path / "ddp")], _env(**common, grad_accum=1))
    _assert_same_run(tmp_path / "single", tmp_path / "ddp")
    assert json.loads((tmp_path / "ddp.result.json").read_text())["steps"] == 3
    state = json.loads(
        (tmp_path / "ddp" / "checkpoints" / "step-00000003" / "trainer_state.json").read_text()
    )
    assert state["world_size"] == 2 and state["config"]["global_batch_size"] == 4
    assert (tmp_path / "ddp" / "checkpoints" / "step-00000003" / "rng-rank001.pt").exists()


@pytest.mark.parametrize("lora", [False, True])
def test_two_fsdp_ranks_equal_one_process_and_resume_under_fsdp(tmp_path: Path, lora: bool) -> None:
    base = tiny_model(tmp_path / "base")
    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_records(16))
    # full fine-tuning shards every weight, its gradient and its AdamW state over the two ranks; LoRA shards
    # the frozen base and the adapter
    common = dict(micro_batch_size=2, max_steps=4, lora=lora, lora_dropout=0.0, checkpoint_every=2)
    common["strategy"] = "fsdp"
    _run([sys.executable, *_args(data, base, tmp_path / "single")], _env(**common, grad_accum=2))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    fsdp = tmp_path / "fsdp"
    _run([*torchrun, *_args(data, base, fsdp)], _env(**common, grad_accum=1))
    difference = _assert_same_run(tmp_path / "single", fsdp)
    print(f"FSDP 2 ranks vs 1 process (lora={lora}): largest exported weight difference {difference:.2e}")
    if lora:
        return
    shutil.rmtree(fsdp / "checkpoints" / "step-00000004")  # as if killed after the checkpoint of step 2
    shutil.rmtree(fsdp / "model")
    _run([*torchrun, *_args(data, base, fsdp)], _env(**common, grad_accum=1))
    assert json.loads((tmp_path / "fsdp.result.json").read_text())["resumed_from"] == 2
    resumed = _assert_same_run(tmp_path / "single", fsdp)
    print(f"FSDP resumed at step 2 vs 1 process: largest exported weight difference {resumed:.2e}")


def test_sigkill_and_restart_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    base = tiny_model(tmp_path / "base")
    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_records(48))
    env = _env(micro_batch_size=2, checkpoint_every=4, keep_checkpoints=2)  # LoRA dropout on: RNG must resume
    _run([sys.executable, *_args(data, base, tmp_path / "straight")], env)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(
        [sys.executable, *_args(data, base, resumed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = resumed / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:  # kill between checkpoints 4 and 8
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 6:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (resumed / "checkpoints" / "step-00000004" / "trainer_state.json").exists()
    assert not (resumed / "model").exists(), "killed too late: the run had already finished"
    assert 6 <= len(read_metrics(metrics)) < 24

    _run([sys.executable, *_args(data, base, resumed)], env)
    result = json.loads((tmp_path / "resumed.result.json").read_text())
    assert result["resumed_from"] is not None and 4 <= result["resumed_from"] < 24
    assert len(read_metrics(metrics)) == 24  # the steps after the checkpoint were redone, not duplicated
    assert result["steps"] == 24
    _assert_same_run(tmp_path / "straight", resumed)
