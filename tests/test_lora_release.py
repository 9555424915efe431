"""A LoRA run's unmerged adapter, exported beside the merged model: the release vLLM loads at runtime.

It must be the same policy as the merged model (same next-token distribution, within float rounding), name
its base so a loader finds it, and be a valid starting point for the next iteration's training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cutalign.config import TrainerSettings
from cutalign.cut.export import adapter_location
from cutalign.cut.trainer import train
from cutalign.policy.loading import load_policy
from trainer_support import arithmetic_records, tiny_model, write_jsonl

torch.set_num_threads(2)
SETTINGS = dict(template="short", micro_batch_size=4, max_steps=2, checkpoint_every=10, learning_rate=1e-2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("lora-release")
    base = tiny_model(root / "base")
    data = write_jsonl(root / "train.jsonl", arithmetic_records(8))
    train(TrainerSettings(**SETTINGS), str(data), str(base), str(root / "out"), progress=False)
    return base, root / "out", data


def test_the_adapter_is_exported_beside_the_merged_model_and_is_the_same_policy(
    trained: tuple[Path, Path, Path],
) -> None:
    base, out, _ = trained
    adapter = Path(adapter_location(str(out / "model")))
    assert adapter == out / "adapter" and (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    merged, unmerged = load_policy(str(out / "model")), load_policy(str(adapter))
    ids = merged.tokenizer("1+2=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = merged.model(ids).logits, unmerged.model(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a, load_policy(str(base)).model(ids).logits), "the adapter trained"


def test_full_fine_tuning_exports_no_adapter(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, _, data = trained
    train(
        TrainerSettings(**SETTINGS, lora=False), str(data), str(base), str(tmp_path / "out"), progress=False
    )
    assert not (tmp_path / "out" / "adapter").exists()


def test_the_next_iteration_trains_from_an_adapter_release(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The driver starts iteration i+1 from the promoted release's URI: an adapter, merged over its base."""
    _, out, data = trained
    start = str(out / "adapter")
    result = train(TrainerSettings(**SETTINGS), str(data), start, str(tmp_path / "next"), progress=False)
    assert result.steps == 2 and (tmp_path / "next" / "model" / "config.json").is_file()
    config = json.loads((tmp_path / "next" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(out / "adapter"), (
        "trained over the policy it started from"
    )
