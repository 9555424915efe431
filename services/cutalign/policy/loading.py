"""Load a policy for serving: a model directory or ``s3://`` prefix — full/merged checkpoint or LoRA adapter.

What the project writes and this loads:
* a full (or merged) checkpoint: ``config.json`` + weights + tokenizer (``save_pretrained`` output, e.g. the
  trainer's merged export ``iterations/{i}/model/`` or a base model under ``models/{name}/``);
* a LoRA adapter: ``adapter_config.json`` + adapter weights (PEFT ``save_pretrained``), applied over its base
  (``base_uri``, else the adapter config's ``base_model_name_or_path``) and merged for inference, so serving
  costs nothing extra per token.

S3 prefixes are downloaded into a temporary directory (every object checksum-verified by the store), hashed,
loaded, and the files deleted: the loaded weights live in memory. The version's sha256 is computed from the
files actually loaded, and compared with ``expected_sha256`` when the caller knows it (a ``PolicyRelease``),
so a corrupted or swapped checkpoint is refused instead of served under the wrong name.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from cutalign.config import S3Settings
from cutalign.policy.version import describe, policy_version
from cutalign.store import ArtifactStore, parse_s3_uri
from cutalign.v1 import common_pb2

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


class PolicyLoadError(RuntimeError):
    """The checkpoint could not be loaded as a policy (missing files, no base for an adapter, not a model)."""


class PolicyChecksumMismatch(PolicyLoadError):
    """The checkpoint does not hash to the sha256 it was released with: it must not be served."""


@dataclass
class LoadedPolicy:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    version: common_pb2.PolicyVersion


@contextmanager
def local_checkpoint(uri: str, s3: S3Settings | None) -> Iterator[Path]:
    """A local directory holding the checkpoint at ``uri`` (a path, ``file://`` URI, or ``s3://`` prefix)."""
    if uri.startswith("s3://"):
        if s3 is None:
            raise PolicyLoadError(f"{uri} is in S3 but no S3 settings were given (set CUTALIGN_S3_*)")
        bucket, prefix = parse_s3_uri(uri)
        prefix = prefix.rstrip("/") + "/"
        with tempfile.TemporaryDirectory(prefix="cutalign-policy-") as tmp:
            ArtifactStore(s3, bucket=bucket).download_dir(prefix, tmp)
            yield Path(tmp)
        return
    path = Path(uri.removeprefix("file://"))
    if not path.is_dir():
        raise PolicyLoadError(f"checkpoint {uri} is not a directory")
    yield path


def _base_of(adapter_dir: Path, base_uri: str | None) -> str:
    if base_uri:
        return base_uri
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise PolicyLoadError(
            f"{adapter_dir} is a LoRA adapter without base_model_name_or_path; pass the base model's URI"
        )
    return str(base)


def load_policy(
    uri: str,
    *,
    base_uri: str | None = None,
    model_id: str | None = None,
    iteration: int = 0,
    expected_sha256: str | None = None,
    s3: S3Settings | None = None,
    device: str = "cpu",
    dtype: str = "auto",
) -> LoadedPolicy:
    """Load the policy at ``uri`` and compute its ``PolicyVersion`` (see module docstring)."""
    with ExitStack() as stack:
        model_dir = stack.enter_context(local_checkpoint(uri, s3))
        is_adapter = (model_dir / ADAPTER_CONFIG).is_file()
        base_dir = (
            stack.enter_context(local_checkpoint(_base_of(model_dir, base_uri), s3)) if is_adapter else None
        )
        version = policy_version(
            model_dir,
            model_id=model_id or uri.rstrip("/").rsplit("/", 1)[-1],
            iteration=iteration,
            uri=uri,
            base_dir=base_dir,
        )
        if expected_sha256 and version.checkpoint_sha256 != expected_sha256:
            raise PolicyChecksumMismatch(
                f"{uri} hashes to {version.checkpoint_sha256}, but its release says {expected_sha256}: the "
                "checkpoint was modified after promotion — re-export and re-promote it"
            )
        model = _load_model(model_dir, base_dir, device=device, dtype=dtype)
        has_tokenizer = (model_dir / "tokenizer_config.json").is_file()
        tokenizer_dir = model_dir if has_tokenizer or base_dir is None else base_dir
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "left"
    log.info("policy loaded", extra={"policy": describe(version), "adapter": is_adapter})
    return LoadedPolicy(model=model, tokenizer=tokenizer, version=version)


def _load_model(model_dir: Path, base_dir: Path | None, *, device: str, dtype: str) -> PreTrainedModel:
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    placement = {"": device}  # the whole model on one device
    try:
        if base_dir is None:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, device_map=placement)
        else:
            from peft import PeftModel  # only LoRA policies need peft

            base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype, device_map=placement)
            model = PeftModel.from_pretrained(base, model_dir).merge_and_unload()
    except (OSError, ValueError) as e:
        raise PolicyLoadError(f"cannot load a causal LM from {model_dir}: {e}") from e
    return model.eval()
