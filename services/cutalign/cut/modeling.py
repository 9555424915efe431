"""Loading the policy to train: any Hugging Face causal-LM directory, or one this project wrote to S3.

LoRA (default, docs/method.md §5: r=16, alpha=16, dropout 0.05 on the MLP projections) trains a small adapter
and keeps the base frozen, so the merged result is the next iteration's base. Which modules are "the MLP
projections" depends on the architecture — ``gate_proj``/``up_proj``/``down_proj`` in Llama, Qwen2, Mistral
and Gemma2, a fused ``gate_up_proj`` in Phi3, ``c_fc``/``c_proj`` (Conv1D) in GPT-2 — so targets are chosen by
a preset (``lora_targets``: ``mlp``, ``attention``, ``all-linear``) resolved against the model's own modules;
``lora_target_modules`` names them explicitly instead. Full fine-tuning trains every weight.

Precision (``dtype``): trained weights — the adapter, or every weight in full fine-tuning — are float32 master
weights; the computation runs in ``dtype`` (``auto``: bfloat16 on a GPU that has it, float32 otherwise)
through autocast, or under FSDP through its mixed-precision policy (bf16 parameters in compute, float32
gradient reduction, float32 sharded master weights). The frozen base of a LoRA run is stored in the compute
dtype: it needs no master copy. Gradient checkpointing (non-reentrant) trades a second forward for activation
memory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

from cutalign.config import TrainerSettings
from cutalign.cut.location import as_prefix, is_s3, resolve
from cutalign.store import ArtifactStore

log = logging.getLogger(__name__)

# module names that contain a block's MLP or attention (the names each architecture's code uses)
TARGET_PARENTS = {"mlp": ("mlp",), "attention": ("self_attn", "attn", "attention")}


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


def saved_dtype(model_dir: Path) -> torch.dtype:
    """The dtype the model directory's weights were saved in (``dtype`` / ``torch_dtype`` of config.json)."""
    config = json.loads((model_dir / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def context_length(config: PretrainedConfig) -> int | None:
    """The longest sequence a model's position embeddings cover (GPT-2: its ``n_positions``)."""
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if limit else None


def compute_dtype(settings: TrainerSettings, device: torch.device) -> torch.dtype:
    """The dtype the forward and backward run in."""
    if settings.dtype == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if use_bf16 else torch.float32
    return torch.bfloat16 if settings.dtype == "bfloat16" else torch.float32


def lora_targets(model: torch.nn.Module, settings: TrainerSettings) -> list[str] | str:
    """LoRA's ``target_modules`` for this model: the explicit list, ``all-linear``, or a preset resolved to
    the linear modules under each block's MLP (or attention), named ``<parent>.<leaf>`` so GPT-2's
    ``mlp.c_proj`` is not confused with ``attn.c_proj``."""
    if settings.lora_target_modules:
        return list(settings.lora_target_modules)
    if settings.lora_targets == "all-linear":
        return "all-linear"
    parents = TARGET_PARENTS[settings.lora_targets]
    found: set[str] = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if isinstance(module, torch.nn.Linear | Conv1D) and len(parts) >= 2 and parts[-2] in parents:
            found.add(f"{parts[-2]}.{parts[-1]}")
    if not found:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(
            f"no linear modules under {'/'.join(parents)} in this {model_type} model for "
            f"lora_targets={settings.lora_targets!r}; use lora_targets='all-linear' or name the modules in "
            "lora_target_modules (CUTALIGN_TRAINER_LORA_TARGET_MODULES)"
        )
    return sorted(found)


def load_model(model_dir: Path, settings: TrainerSettings, device: torch.device) -> torch.nn.Module:
    """The base model on ``device``, wrapped with a fresh LoRA adapter when ``settings.lora``."""
    frozen = compute_dtype(settings, device) if settings.lora else torch.float32
    base: PreTrainedModel = AutoModelForCausalLM.from_pretrained(model_dir, dtype=frozen)
    base.to(device)  # type: ignore[arg-type]  # transformers' decorated .to() confuses mypy
    if settings.gradient_checkpointing:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if not settings.lora:
        return base
    targets = lora_targets(base, settings)
    config = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in base.modules()),  # GPT-2's Conv1D stores W^T
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(base, config)
    except ValueError as e:
        raise ValueError(
            f"LoRA targets {targets} do not match this model's modules; set lora_targets or "
            "lora_target_modules to its projection names (CUTALIGN_TRAINER_LORA_TARGET_MODULES)"
        ) from e
    for p in model.parameters():  # the adapter's float32 master weights
        if p.requires_grad:
            p.data = p.data.float()
    log.info("LoRA r=%d on %s", settings.lora_r, targets)
    return model


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def merged_model(model: torch.nn.Module) -> PreTrainedModel:
    """The plain model to serve: LoRA folded into the base weights (the model itself for full fine-tuning)."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    assert isinstance(model, PreTrainedModel)
    return model
