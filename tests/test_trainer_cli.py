"""`cutalign train` driven end to end on a tiny model, and its error paths."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from cutalign.cli.main import app
from cutalign.config import TrainerSettings
from cutalign.cut.export import read_metrics
from trainer_support import arithmetic_records, tiny_model, write_jsonl

torch.set_num_threads(2)
runner = CliRunner()


def test_help_lists_every_trainer_setting_as_a_flag_with_its_default() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    for flag in (
        "--data",
        "--model",
        "--out",
        "--objective",
        "--threshold",
        "--span-mode",
        "--lora / --no-lora",
    ):
        assert flag in result.output
    for name in TrainerSettings.model_fields:
        assert "--" + name.replace("_", "-") in result.output, name
    assert "[default: 0.0004]" in result.output  # the learning rate's one default


def test_train_command_end_to_end(tmp_path: Path) -> None:
    base = tiny_model(tmp_path / "base")
    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_records(8))
    out = tmp_path / "out"
    args = [
        "train",
        "--data",
        str(data),
        "--model",
        str(base),
        "--out",
        str(out),
        "--template",
        "short",
        "--max-steps",
        "2",
        "--micro-batch-size",
        "4",
        "--span-mode",
        "union",
        "--lora-r",
        "4",
        "--lora-target-modules",
        "up_proj",
        "--no-progress",
    ]
    result = runner.invoke(app, args, env={"CUTALIGN_TRAINER_THRESHOLD": "1.3", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "loss/total" in result.output and str(out / "model") in result.output
    assert len(read_metrics(out / "metrics.jsonl")) == 2
    config = json.loads((out / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())["config"]
    assert (config["lora_r"], config["lora_target_modules"], config["span_mode"]) == (4, ["up_proj"], "union")
    assert config["threshold"] == 1.3  # from the environment, not overridden by a flag


def test_errors_exit_nonzero_with_the_reason(tmp_path: Path) -> None:
    base = tiny_model(tmp_path / "base")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a"}\n')
    result = runner.invoke(
        app,
        ["train", "--data", str(bad), "--model", str(base), "--out", str(tmp_path / "o")],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 2 and "missing required field 'output'" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        app, ["train", "--data", str(bad), "--model", str(base), "--out", "o", "--nope", "1"]
    )
    assert result.exit_code == 2 and "nope" in result.output
    result = runner.invoke(
        app, ["train", "--data", str(bad), "--model", str(base), "--out", "o", "--threshold", "0.5"]
    )
    assert result.exit_code == 2 and "threshold" in result.output
