"""What a training run leaves behind: the merged model ready to serve, and the per-step metrics.

A LoRA run also leaves its unmerged adapter beside the merged model (``adapter_location``), its
``base_model_name_or_path`` set to the base it was trained over: a vLLM deployment that serves that base
loads the adapter at runtime instead of restarting on the merged model (``cutalign.iteration.promote``).

The merged model is a plain Hugging Face directory (LoRA folded into the base weights, safetensors, tokenizer
included, in the base model's dtype unless ``export_dtype`` says otherwise): a policy server loads it as any
model, and the next online iteration trains from it. Its digest is the project's one checkpoint hash
(``cutalign.policy.version.policy_sha256``: every file of the directory), the one the policy server computes
when it loads the model, and releases, samples and the generator's guard record.

Metrics are one JSON object per optimizer step, with the project's metric names (``loss/total``,
``loss/mle``, ``loss/unlikelihood``, ``tokens/flagged_fraction``, ``throughput/tokens_per_s``, ``lr``,
``detection/*`` when error spans are known).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from cutalign.cut.location import as_prefix, is_s3, join, resolve
from cutalign.cut.modeling import merged_model, saved_dtype
from cutalign.policy.version import dir_sha256
from cutalign.store import ArtifactStore

log = logging.getLogger(__name__)


def export_dtype(setting: str, model_dir: Path) -> torch.dtype:
    """The dtype to export in: the base model's saved dtype (``base``), or the one named."""
    return saved_dtype(model_dir) if setting == "base" else getattr(torch, setting)


def adapter_location(model: str) -> str:
    """Where a LoRA run's unmerged adapter is exported: ``adapter`` beside the merged model's location."""
    parent = model.rstrip("/").rsplit("/", 1)[0] if "/" in model.rstrip("/") else "."
    return join(parent, "adapter")


def export_adapter(
    model: torch.nn.Module, dest: str, base_uri: str, work_dir: Path, store: ArtifactStore | None
) -> bool:
    """Save a LoRA model's adapter, unmerged, to ``dest``; False (nothing written) for full fine-tuning."""
    if not isinstance(model, PeftModel):
        return False
    local = work_dir / "adapter-export" if is_s3(dest) else Path(dest)
    model.save_pretrained(str(local), safe_serialization=True)
    config_path = local / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_uri  # the training copy's local path would be meaningless
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    if is_s3(dest):
        bound, key = resolve(dest, store)
        bound.upload_dir(as_prefix(key), local)
    log.info("LoRA adapter written to %s (over %s)", dest, base_uri)
    return True


def export_merged(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dest: str,
    work_dir: Path,
    store: ArtifactStore | None,
    *,
    dtype: torch.dtype | None = None,
) -> str:
    """Merge, save to ``dest`` (a directory or ``s3://`` prefix) in ``dtype`` (default: as trained) and return
    the weights' sha256.

    Merging (and casting) modifies ``model`` in place: call this once, after training.
    """
    local = work_dir / "export" if is_s3(dest) else Path(dest)
    local.mkdir(parents=True, exist_ok=True)
    merged = merged_model(model)
    if dtype is not None:
        merged = merged.to(dtype)  # type: ignore[arg-type]  # a bf16 base is served in bf16, not fp32
    merged.config.use_cache = True  # trained with the cache off; serving wants it
    merged.save_pretrained(local, safe_serialization=True)
    tokenizer.save_pretrained(local)
    digest = dir_sha256(local)
    if is_s3(dest):
        bound, key = resolve(dest, store)
        bound.upload_dir(as_prefix(key), local)
    log.info("merged model written to %s (checkpoint sha256 %s)", dest, digest)
    return digest


class MetricsLog:
    """Per-step metrics appended to a local JSONL file (uploaded by the trainer when the output is S3)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def upload(self, dest: str, store: ArtifactStore | None) -> None:
        bound, key = resolve(dest, store)
        bound.put_file(key, self.path, content_type="application/x-ndjson")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
