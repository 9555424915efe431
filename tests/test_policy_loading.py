"""Policy identity and loading: a deterministic checkpoint digest, merged/LoRA/S3 checkpoints, and refusal of
a checkpoint that does not hash to the sha256 it was released with."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from cutalign.config import S3Settings
from cutalign.policy.loading import PolicyChecksumMismatch, PolicyLoadError, load_policy
from cutalign.policy.version import dir_sha256, policy_sha256, policy_version
from cutalign.store import ArtifactStore, ObjectMissing
from policy_support import tiny_policy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture(scope="module")
def adapter(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random (non-zero) B matrices, so it really changes the model."""
    torch.manual_seed(5)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"], init_lora_weights=False
        ),
    )
    out = tmp_path_factory.mktemp("adapter") / "lora"
    model.save_pretrained(out)
    return out


def test_digest_depends_on_contents_and_names_only(base: Path, tmp_path: Path) -> None:
    digest = dir_sha256(base)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in sorted(base.iterdir(), reverse=True):  # other creation order, other mtimes
        shutil.copy(path, copy / path.name)
        os.utime(copy / path.name, (1, 1))
    (copy / ".cache").mkdir()
    (copy / ".cache" / "download.lock").write_text("left by huggingface_hub")
    assert dir_sha256(copy) == digest, "order, mtimes and dot-directories are not part of a checkpoint"

    (copy / "config.json").rename(copy / "config2.json")
    assert dir_sha256(copy) != digest, "a renamed file is another checkpoint"
    (copy / "config2.json").rename(copy / "config.json")
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert dir_sha256(copy) != digest, "one flipped bit is another checkpoint"


def test_empty_or_missing_checkpoint_directories_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dir_sha256(tmp_path / "nope")
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no files"):
        dir_sha256(tmp_path / "empty")


def test_full_checkpoint_loads_with_its_version(base: Path) -> None:
    policy = load_policy(str(base), model_id="tiny", iteration=3)
    assert policy.version == policy_version(base, model_id="tiny", iteration=3, uri=str(base))
    assert policy.version.checkpoint_sha256 == dir_sha256(base)
    assert policy.tokenizer.padding_side == "left"
    assert not policy.model.training


def test_lora_adapter_is_merged_over_its_base_and_hashed_with_it(
    base: Path, adapter: Path, tmp_path: Path
) -> None:
    policy = load_policy(str(adapter), iteration=1)  # base from adapter_config.json
    assert policy.version.checkpoint_sha256 == policy_sha256(adapter, base)
    assert policy.version.checkpoint_sha256 not in (dir_sha256(adapter), dir_sha256(base))
    ids = policy.tokenizer("Q: 1+1?\nA: ", return_tensors="pt")["input_ids"]
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.inference_mode():
        merged_logits = policy.model(ids).logits
        assert torch.allclose(merged_logits, reference(ids).logits, atol=1e-5)
        assert not torch.allclose(merged_logits, plain(ids).logits, atol=1e-3), (
            "the adapter changes the model"
        )

    other_base = tiny_policy(tmp_path / "other", seed=9)
    over_other = load_policy(str(adapter), base_uri=str(other_base))
    assert over_other.version.checkpoint_sha256 == policy_sha256(adapter, other_base)
    assert over_other.version.checkpoint_sha256 != policy.version.checkpoint_sha256


def test_checkpoint_in_s3_loads_with_the_same_digest_and_wrong_digest_is_refused(
    base: Path, store: ArtifactStore, s3_settings: S3Settings
) -> None:
    store.upload_dir("models/tiny/", base)
    uri = store.uri("models/tiny")
    policy = load_policy(uri, s3=s3_settings, model_id="tiny")
    assert policy.version.checkpoint_sha256 == dir_sha256(base)
    assert policy.version.uri == uri

    with pytest.raises(PolicyChecksumMismatch, match="re-export and re-promote"):
        load_policy(uri, s3=s3_settings, expected_sha256="0" * 64)
    with pytest.raises(ObjectMissing):
        load_policy(store.uri("models/absent"), s3=s3_settings)
    with pytest.raises(PolicyLoadError, match="no S3 settings"):
        load_policy(uri)


def test_a_directory_without_a_model_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(PolicyLoadError, match="cannot load a causal LM"):
        load_policy(str(tmp_path))
    with pytest.raises(PolicyLoadError, match="is not a directory"):
        load_policy(str(tmp_path / "missing"))
