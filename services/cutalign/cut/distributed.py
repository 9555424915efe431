"""Process-group setup for data-parallel training under ``torchrun`` (one process when not launched by it).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; with more than one process we join a process group (NCCL on
GPUs, Gloo on CPUs) and each rank trains its own micro-batches of every global batch. The data split itself
lives in ``cutalign.cut.sampling`` (``rank_micro_batches``), so that world size and gradient accumulation are
interchangeable: the same global batch gives the same update whatever the mix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a copy; float64 keeps token counts exact)."""
        values = values.to(self.device, torch.float64)
        if self.world > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values.cpu()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str | None = None) -> Dist:
    """Join the torchrun process group if there is one; pick this rank's device (cuda:LOCAL_RANK or cpu)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    chosen = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(chosen)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return Dist(rank=rank, world=world, local_rank=local_rank, device=chosen, owns_group=owns)
