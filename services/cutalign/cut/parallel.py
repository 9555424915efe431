"""Data-parallel strategies under ``torchrun``: DDP (a full model per process) or FSDP2 (``fully_shard``).

DDP keeps a full copy of the model, its gradients and its optimizer state on every process and all-reduces
gradients after each step's last micro-batch. FSDP2 shards parameters, gradients and optimizer state across
the processes: each decoder layer (the classes the model names in ``_no_split_modules``) is one
``fully_shard`` unit, gathered for its forward and backward and freed again, then the root; with bf16
compute its ``MixedPrecisionPolicy`` computes in bf16, reduces gradients in float32 and keeps float32 master
shards. Both average gradients over processes, so 2 ranks x 1 micro-batch equal 1 rank x 2 accumulated
micro-batches.

FSDP gathers parameters collectively on every forward, so every rank must run the same number of forwards
per micro-batch: under FSDP the trainer always runs a micro-batch's row groups as one fused forward.

Checkpoints are full (unsharded) state dicts of the trained parameters and their optimizer state, keyed by
parameter name (``torch.distributed.checkpoint.state_dict``): written by rank 0, read by rank 0 and broadcast
to the others. So a checkpoint is the same whatever wrote it — a run can resume under another strategy or
world size — and loading never needs the whole state on every rank.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from cutalign.cut.distributed import Dist
from cutalign.cut.modeling import trainable_parameters


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: the module classes its ``_no_split_modules`` names."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class (_no_split_modules) to shard")
    return layers


def parallelize(model: torch.nn.Module, strategy: str, dist: Dist, dtype: torch.dtype) -> torch.nn.Module:
    """The module to run forwards through: ``model`` (one process), DDP-wrapped, or sharded in place."""
    if dist.world == 1:
        return model
    if strategy == "fsdp":
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for layer in decoder_layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    # buffers (rotary tables) are constant; syncing them on every forward would also deadlock ranks whose
    # micro-batches need a different number of forwards (with and without Misalign rows)
    device_ids = [dist.device] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


def is_sharded(module: torch.nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def gradient_sync(module: torch.nn.Module, enabled: bool) -> AbstractContextManager[Any]:
    """Skip gradient communication on all but a step's last micro-batch (gradients accumulate locally)."""
    if isinstance(module, DistributedDataParallel) and not enabled:
        return module.no_sync()
    if isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(enabled)
    return nullcontext()


def full_trainable_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The trained parameters and the optimizer state, unsharded, on rank 0's CPU (empty on other ranks).

    Collective under FSDP: every rank must call it.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    names = set(trainable_parameters(model))
    full: dict[str, Any] = dict(get_model_state_dict(model, options=options))
    weights = {k: v for k, v in full.items() if k in names}
    state: dict[str, Any] = {}
    if optimizer is not None:
        state = dict(get_optimizer_state_dict(model, optimizer, options=options))
    return weights, state


def load_full_trainable_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    dist: Dist,
) -> None:
    """Load what ``full_trainable_state`` returned; with several ranks only rank 0's copy is read."""
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=dist.world > 1, strict=False)
    main = dist.is_main or dist.world == 1
    given: dict[str, Any] = dict(weights) if main else {}
    set_model_state_dict(model, given, options=options)
    set_optimizer_state_dict(model, optimizer, state if main else {}, options=options)
