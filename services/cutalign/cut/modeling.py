"""Loading the policy to train: any Hugging Face causal-LM directory, or one this project wrote to S3.

LoRA (default, method page §5: r=16, alpha=16, dropout 0.05 on gate/up/down projections) trains a small
adapter and keeps the base frozen, so the merged result is the next iteration's base. Full fine-tuning trains
every weight. On a GPU the frozen base of a LoRA run keeps its saved dtype (bf16 for real models; adapters
stay float32); everything else is float32, with bf16 autocast for the matmuls on GPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from cutalign.config import TrainerSettings
from cutalign.cut.location import as_prefix, is_s3, resolve
from cutalign.store import ArtifactStore

log = logging.getLogger(__name__)


def fetch_model_dir(model: str, cache_dir: Path, store: ArtifactStore | None) -> Path:
    """A local directory holding ``model``: the path itself, or an S3 prefix downloaded into ``cache_dir``.

    A LoRA adapter (a release vLLM loads at runtime) is merged over its base first: training continues from
    the policy it serves.
    """
    if _is_adapter(model, store):
        from cutalign.policy.loading import load_policy

        policy = load_policy(model, s3=store.settings if store else None)
        target = cache_dir / "merged-policy"
        policy.model.save_pretrained(target, safe_serialization=True)
        policy.tokenizer.save_pretrained(target)
        return target
    if is_s3(model):
        bound, key = resolve(model, store)
        target = cache_dir / "base-model"
        log.info("downloading %s to %s", model, target)
        return bound.download_dir(as_prefix(key), target)
    path = Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{model}: not a Hugging Face model directory (no config.json) nor an s3:// URI"
        )
    return path


def _is_adapter(model: str, store: ArtifactStore | None) -> bool:
    if not is_s3(model):
        return (Path(model) / "adapter_config.json").is_file()
    bound, key = resolve(model, store)
    return bound.exists(f"{as_prefix(key)}adapter_config.json")


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of attention and loss anyway
    return tokenizer


def load_model(model_dir: Path, settings: TrainerSettings, device: torch.device) -> torch.nn.Module:
    """The base model on ``device``, wrapped with a fresh LoRA adapter when ``settings.lora``."""
    # a frozen LoRA base on GPU stays in its saved dtype (bf16 for real models); trained weights are float32
    base_dtype: str | torch.dtype = "auto" if settings.lora and device.type == "cuda" else torch.float32
    base: PreTrainedModel = AutoModelForCausalLM.from_pretrained(model_dir, dtype=base_dtype)
    base.to(device)  # type: ignore[arg-type]  # transformers' decorated .to() confuses mypy
    if not settings.lora:
        return base
    config = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(base, config)
    except ValueError as e:
        raise ValueError(
            f"LoRA targets {settings.lora_target_modules} do not match this model's modules; set "
            "lora_target_modules to its projection names (CUTALIGN_TRAINER_LORA_TARGET_MODULES)"
        ) from e
    return model


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def merged_model(model: torch.nn.Module) -> PreTrainedModel:
    """The plain model to serve: LoRA folded into the base weights (the model itself for full fine-tuning)."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    assert isinstance(model, PreTrainedModel)
    return model
