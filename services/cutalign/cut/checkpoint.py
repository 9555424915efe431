"""Resumable checkpoints: the whole training state, so a resumed run equals an uninterrupted one.

A checkpoint ``step-00000012/`` under the run's checkpoint root (a local directory or an S3 prefix) holds:

    trainable.safetensors   every trainable parameter (the LoRA adapter, or all weights for full fine-tuning)
    optimizer.pt            AdamW state, keyed by parameter name    scheduler.pt   LR schedule position
    rng-rank000.pt ...      each rank's torch RNG (dropout) state
    metrics.jsonl           the metrics written so far
    trainer_state.json      step, data fingerprint, world size and the resolved config — written LAST

Weights and optimizer state are full (unsharded) state dicts, gathered and restored through
``cutalign.cut.parallel`` (``torch.distributed.checkpoint.state_dict``), so DDP, FSDP and single-process runs
write the same checkpoint and any of them can resume it. The data position is the step itself: the data order
is a pure function of (seed, epoch), see the trainer.
``trainer_state.json`` is the completion marker: locally the checkpoint is assembled in ``step-N.tmp`` and
renamed once complete; on S3 the marker is uploaded after everything else. A checkpoint without its marker
(the process was killed while writing it) is ignored.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cutalign.cut.distributed import Dist
from cutalign.cut.location import as_prefix, is_s3, join, resolve
from cutalign.cut.modeling import trainable_parameters
from cutalign.cut.parallel import full_trainable_state, load_full_trainable_state
from cutalign.store import ArtifactStore

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
METRICS_FILE = "metrics.jsonl"
# settings that may change between a run and its resumption without changing the result
RESUMABLE_CHANGES = {"checkpoint_every", "keep_checkpoints", "resume", "strategy", "gradient_checkpointing"}
_STEP_DIR = re.compile(r"step-(\d{8})$")


@dataclass(frozen=True)
class TrainerState:
    step: int
    total_steps: int
    world_size: int
    data_fingerprint: str
    config: dict[str, Any]

    def check_compatible(self, current: TrainerState, where: str) -> None:
        """Refuse to continue a run with other data or other math: the result would be neither run."""
        problems = []
        if self.data_fingerprint != current.data_fingerprint:
            problems.append("the training data differ")
        changed = sorted(
            k
            for k in self.config.keys() | current.config.keys()
            if k not in RESUMABLE_CHANGES and self.config.get(k) != current.config.get(k)
        )
        if changed:
            problems.append(f"settings differ: {', '.join(changed)}")
        if problems:
            raise ValueError(
                f"cannot resume from {where}: {'; '.join(problems)}. Write to a new output, or start over "
                "with "
                "resume disabled (--no-resume / CUTALIGN_TRAINER_RESUME=false)"
            )


def rng_file(rank: int) -> str:
    return f"rng-rank{rank:03d}.pt"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


class Checkpoints:
    """The checkpoints of one run under ``root`` (local directory or ``s3://`` prefix)."""

    def __init__(self, root: str, dist: Dist, work_dir: Path, keep: int, store: ArtifactStore | None) -> None:
        self.root = root
        self.dist = dist
        self.work_dir = work_dir
        self.keep = keep
        self.store: ArtifactStore | None = None
        self.prefix = ""
        if is_s3(root):
            self.store, key = resolve(root, store)
            self.prefix = as_prefix(key)

    def uri(self, step: int) -> str:
        return join(self.root, step_name(step))

    def complete_steps(self) -> list[int]:
        if self.store is not None:
            keys = self.store.list(self.prefix)
            names = [k[len(self.prefix) :].split("/")[0] for k in keys if k.endswith("/" + STATE_FILE)]
        else:
            root = Path(self.root)
            names = [p.parent.name for p in root.glob(f"*/{STATE_FILE}")] if root.is_dir() else []
        return sorted(int(m.group(1)) for n in names if (m := _STEP_DIR.match(n)))

    # -- saving ---------------------------------------------------------------------------------------------

    def save(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        state: TrainerState,
        metrics_path: Path,
    ) -> str:
        staging = (
            Path(self.root) / f"{step_name(state.step)}.tmp"
            if self.store is None
            else self.work_dir / f"staging-{state.step}-rank{self.dist.rank}"
        )
        if self.dist.is_main and staging.exists():
            shutil.rmtree(staging)  # left by a run killed while writing
        self.dist.barrier()
        staging.mkdir(parents=True, exist_ok=True)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, staging / rng_file(self.dist.rank))
        weights, optimizer_state = full_trainable_state(model, optimizer)  # collective under FSDP
        if self.dist.is_main:
            tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
            save_file(tensors, staging / WEIGHTS_FILE)
            torch.save(optimizer_state, staging / OPTIMIZER_FILE)
            torch.save(scheduler.state_dict(), staging / SCHEDULER_FILE)
            if metrics_path.exists():
                shutil.copyfile(metrics_path, staging / METRICS_FILE)
        if self.store is not None:
            self.store.upload_dir(self.prefix + step_name(state.step) + "/", staging)
            shutil.rmtree(staging)
        self.dist.barrier()  # every rank's files are in place before the marker says "complete"
        if self.dist.is_main:
            self._publish(state)
            self._prune()
        self.dist.barrier()
        log.info("checkpoint %s written", self.uri(state.step))
        return self.uri(state.step)

    def _publish(self, state: TrainerState) -> None:
        body = json.dumps(asdict(state), indent=2, sort_keys=True).encode()
        if self.store is not None:
            self.store.put_bytes(self.prefix + step_name(state.step) + "/" + STATE_FILE, body)
            return
        staging = Path(self.root) / f"{step_name(state.step)}.tmp"
        (staging / STATE_FILE).write_bytes(body)
        final = Path(self.root) / step_name(state.step)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)

    def _prune(self) -> None:
        for step in self.complete_steps()[: -self.keep]:
            if self.store is not None:
                for key in self.store.list(self.prefix + step_name(step) + "/"):
                    if not key.endswith(STATE_FILE):
                        self.store.delete(key)
                self.store.delete(
                    self.prefix + step_name(step) + "/" + STATE_FILE
                )  # marker first out of sight
            else:
                shutil.rmtree(Path(self.root) / step_name(step))

    # -- loading --------------------------------------------------------------------------------------------

    def load(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        metrics_path: Path,
    ) -> TrainerState:
        directory = self._local_copy(step)
        state = TrainerState(**json.loads((directory / STATE_FILE).read_text()))
        saved: dict[str, torch.Tensor] = {}
        optimizer_state: dict[str, Any] = {}
        if self.dist.is_main:  # read once; load_full_trainable_state broadcasts it to the other ranks
            names = set(trainable_parameters(model))
            saved = load_file(directory / WEIGHTS_FILE)
            if saved.keys() != names:
                raise ValueError(
                    f"{self.uri(step)} holds other parameters than this model trains "
                    f"(e.g. {sorted(saved.keys() ^ names)[:3]}); was it written with other LoRA settings?"
                )
            optimizer_state = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        load_full_trainable_state(model, optimizer, saved, optimizer_state, self.dist)
        scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=True))
        rng_path = directory / rng_file(self.dist.rank)
        if rng_path.exists() and state.world_size == self.dist.world:
            rng = torch.load(rng_path, weights_only=True)
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        else:
            log.warning(
                "resuming on %d ranks from a %d-rank checkpoint: dropout RNG streams start afresh",
                self.dist.world,
                state.world_size,
            )
        if self.dist.is_main:
            if (directory / METRICS_FILE).exists():
                shutil.copyfile(directory / METRICS_FILE, metrics_path)
            else:
                metrics_path.unlink(missing_ok=True)
        self.dist.barrier()
        return state

    def read_state(self, step: int) -> TrainerState:
        if self.store is not None:
            data = self.store.get_bytes(self.prefix + step_name(step) + "/" + STATE_FILE)
        else:
            data = (Path(self.root) / step_name(step) / STATE_FILE).read_bytes()
        return TrainerState(**json.loads(data))

    def _local_copy(self, step: int) -> Path:
        if self.store is None:
            return Path(self.root) / step_name(step)
        target = self.work_dir / f"resume-{step}-rank{self.dist.rank}"
        return self.store.download_dir(self.prefix + step_name(step) + "/", target)
