"""The CUT trainer: judged examples + a base model in, a merged model + metrics + checkpoints out.

Public API (used by the CLI, the PyTorchJob entry point ``services/trainer/main.py``, pipeline and demo)::

    from cutalign.cut.trainer import train
    result = train(
        settings,                 # TrainerSettings: objective, CUT options, optimisation, LoRA, checkpointing
        data,                     # s3://bucket/iterations/0001/manifest.json, or a reference .json/.jsonl
        model,                    # a Hugging Face model directory, or an s3:// prefix holding one
        out,                      # a directory or s3:// prefix; by default everything goes under it:
                                  #   {out}/model/  {out}/metrics.jsonl  {out}/checkpoints/step-XXXXXXXX/
        store=None,               # ArtifactStore giving S3 endpoint + credentials (default: S3Settings() env)
        progress=True,            # rich progress bar on rank 0
        on_step=None,             # called on rank 0 with each step's metrics dict
        outputs=None,             # Outputs(model=..., metrics=..., checkpoints=...) to place them elsewhere,
    )                             #   e.g. on the bucket layout of cutalign.store.layout
    result.model_uri, result.model_sha256, result.metrics_uri, result.final_metrics

Run under ``torchrun --nproc-per-node N`` for data parallelism (NCCL on GPUs, Gloo on CPUs): every process
calls ``train`` with the same arguments; ``settings.strategy`` chooses DDP or FSDP2
(``cutalign.cut.parallel``). With ``settings.resume`` (default) a run continues from the latest complete
checkpoint under its checkpoint root, and the resumed result equals the uninterrupted one.

Lengths: the cutoff is capped at the model's context (GPT-2's position table, a RoPE model's
``max_position_embeddings``); an example whose response alone does not fit is skipped with a warning and
counted (``TrainResult.skipped_too_long``), never an abort.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, get_cosine_schedule_with_warmup

from cutalign.config import TrainerSettings
from cutalign.cut import sampling
from cutalign.cut.checkpoint import Checkpoints, TrainerState
from cutalign.cut.collator import CutCollator, ExampleTokenizer, ExampleTooLong, TokenizedExample
from cutalign.cut.detection import DetectionCounts
from cutalign.cut.distributed import Dist, init_distributed
from cutalign.cut.examples import DataError, downsample_positives, load_examples
from cutalign.cut.export import (
    MetricsLog,
    adapter_location,
    export_adapter,
    export_dtype,
    export_merged,
    read_metrics,
)
from cutalign.cut.location import is_s3, join
from cutalign.cut.modeling import (
    compute_dtype,
    context_length,
    fetch_model_dir,
    load_model,
    load_tokenizer,
    trainable_parameters,
)
from cutalign.cut.objectives import Objective, StepLoss, backward_micro_batch, make_objective, should_fuse
from cutalign.cut.parallel import full_trainable_state, gradient_sync, is_sharded, parallelize
from cutalign.cut.progress import TrainingProgress
from cutalign.store import ArtifactStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outputs:
    """Where a run writes (each a local path or an ``s3://`` URI)."""

    model: str
    metrics: str
    checkpoints: str

    @classmethod
    def under(cls, out: str) -> Outputs:
        return cls(
            model=join(out, "model"), metrics=join(out, "metrics.jsonl"), checkpoints=join(out, "checkpoints")
        )


@dataclass(frozen=True)
class TrainResult:
    objective: str
    steps: int
    examples: int
    model_uri: str
    model_sha256: str  # the merged model's checkpoint sha256 (PolicyVersion.checkpoint_sha256)
    metrics_uri: str
    checkpoint_uri: str
    resumed_from: int | None
    final_metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    skipped_too_long: int = 0  # examples whose response does not fit the cutoff


def train(
    settings: TrainerSettings,
    data: str,
    model: str,
    out: str,
    *,
    store: ArtifactStore | None = None,
    progress: bool = True,
    on_step: Callable[[dict[str, float]], None] | None = None,
    outputs: Outputs | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` with ``settings.objective``; see the module docstring."""
    dist = init_distributed()
    try:
        with tempfile.TemporaryDirectory(prefix="cutalign-train-") as work:
            run = _Run(settings, dist, outputs or Outputs.under(out), Path(work), store)
            return run.execute(data, model, progress=progress, on_step=on_step)
    finally:
        dist.close()


@dataclass(frozen=True)
class Dataset:
    examples: list[TokenizedExample]
    cutoff: int  # the cutoff used: settings.cutoff capped at the model's context
    skipped_too_long: list[str]  # sample ids of the examples that do not fit it


def build_dataset(
    settings: TrainerSettings,
    data: str,
    tokenizer: Any,
    objective: Objective,
    store: ArtifactStore | None,
    context: int | None = None,
) -> Dataset:
    """Load, (for offline files) downsample, keep what the objective uses, tokenize within the cutoff."""
    examples = load_examples(data, store).examples
    if settings.align_p_ratio is not None and not is_s3(data):
        examples = downsample_positives(examples, settings.align_p_ratio, settings.seed)
    used = [ex for ex in examples if objective.plan.uses(ex)]
    if not used:
        raise DataError(
            f"objective {objective.name!r} uses none of the {len(examples)} examples in {data} "
            "(sft trains on positives only)"
        )
    cutoff = min(settings.cutoff, context) if context else settings.cutoff
    if cutoff < settings.cutoff:
        log.info("cutoff %d capped at the model's context of %d tokens", settings.cutoff, cutoff)
    tokenize = ExampleTokenizer(tokenizer, settings.template, cutoff)
    tokenized, too_long = [], []
    for ex in used:
        try:
            tokenized.append(tokenize(ex))
        except ExampleTooLong as e:
            too_long.append(ex.sample_id)
            log.debug("%s", e)
    if too_long:
        log.warning(
            "skipped %d example(s) whose response does not fit cutoff=%d (e.g. %s)",
            len(too_long),
            cutoff,
            ", ".join(too_long[:3]),
        )
    if not tokenized:
        raise DataError(f"none of the {len(used)} examples in {data} fits cutoff={cutoff}")
    return Dataset(tokenized, cutoff, too_long)


class _StepStats:
    """Sums over one step's micro-batches (and, after ``reduce``, over ranks)."""

    FIELDS = ("loss", "mle", "ul", "micro_batches", "flagged", "misalign_tokens", "tokens", "examples")

    def __init__(self) -> None:
        self.values = dict.fromkeys(self.FIELDS, 0.0)
        self.detection = DetectionCounts()

    def add(self, out: StepLoss, tokens: int, examples: int) -> None:
        for name, value in (
            ("loss", out.loss.item()),
            ("mle", out.mle),
            ("ul", out.unlikelihood),
            ("micro_batches", 1),
            ("flagged", out.flagged_tokens),
            ("misalign_tokens", out.misalign_tokens),
            ("tokens", tokens),
            ("examples", examples),
        ):
            self.values[name] += value
        if out.detection is not None:
            self.detection = self.detection + out.detection

    def reduce(self, dist: Dist) -> None:
        total = dist.sum(
            torch.cat(
                [
                    torch.tensor([self.values[f] for f in self.FIELDS], dtype=torch.float64),
                    self.detection.as_tensor(),
                ]
            )
        )
        self.values = dict(zip(self.FIELDS, total[: len(self.FIELDS)].tolist(), strict=True))
        self.detection = DetectionCounts.from_tensor(total[len(self.FIELDS) :])

    def metrics(self, seconds: float) -> dict[str, float]:
        v = self.values
        return {
            "loss/total": v["loss"] / v["micro_batches"],
            "loss/mle": v["mle"] / v["micro_batches"],
            "loss/unlikelihood": v["ul"] / v["micro_batches"],
            "tokens/flagged_fraction": v["flagged"] / v["misalign_tokens"] if v["misalign_tokens"] else 0.0,
            "tokens/processed": v["tokens"],
            "throughput/tokens_per_s": v["tokens"] / seconds,
            "throughput/examples_per_s": v["examples"] / seconds,
            **self.detection.metrics(),
        }


class _Run:
    def __init__(
        self, settings: TrainerSettings, dist: Dist, outputs: Outputs, work: Path, store: ArtifactStore | None
    ) -> None:
        self.settings = settings
        self.dist = dist
        self.outputs = outputs
        self.work = work
        self.store = store
        self.objective = make_objective(settings)
        self.checkpoints = Checkpoints(outputs.checkpoints, dist, work, settings.keep_checkpoints, store)
        self.metrics_path = work / "metrics.jsonl" if is_s3(outputs.metrics) else Path(outputs.metrics)
        self.dtype = compute_dtype(settings, dist.device)
        sharded = settings.strategy == "fsdp" and dist.world > 1  # FSDP casts through its own policy
        low_precision = self.dtype != torch.float32 and not sharded
        self.autocast = torch.autocast(dist.device.type, dtype=self.dtype) if low_precision else None

    def execute(
        self, data: str, model_uri: str, *, progress: bool, on_step: Callable[[dict[str, float]], None] | None
    ) -> TrainResult:
        started = time.perf_counter()
        s, dist = self.settings, self.dist
        self.base_uri = model_uri
        model_dir = fetch_model_dir(model_uri, self.work, self.store)
        tokenizer = load_tokenizer(model_dir)
        built = build_dataset(
            s,
            data,
            tokenizer,
            self.objective,
            self.store,
            context_length(AutoConfig.from_pretrained(model_dir)),
        )
        dataset = built.examples
        torch.manual_seed(s.seed)  # identical LoRA init on every rank
        model = load_model(model_dir, s, dist.device)
        model.train()
        runner = parallelize(model, s.strategy, dist, self.dtype)
        params = list(trainable_parameters(model).values())
        optimizer = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)
        batch_size = sampling.global_batch_size(s.micro_batch_size, s.grad_accum, dist.world)
        per_epoch = sampling.steps_per_epoch(len(dataset), batch_size)
        total = min(s.epochs * per_epoch, s.max_steps or s.epochs * per_epoch)
        scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(s.warmup_ratio * total), total)
        state = TrainerState(
            step=0,
            total_steps=total,
            world_size=dist.world,
            data_fingerprint=sampling.data_fingerprint(dataset),
            config={
                **s.model_dump(mode="json"),
                "global_batch_size": batch_size,
                "base_model": model_uri,
                "cutoff": built.cutoff,
            },
        )
        resumed = self._resume_or_start(state)
        torch.manual_seed(s.seed + 1 + dist.rank)  # dropout streams differ per rank (restored on resume)
        if resumed is not None:
            self.checkpoints.load(resumed, model, optimizer, scheduler, self.metrics_path)
        collator = CutCollator(self.objective.plan, pad_id=tokenizer.pad_token_id)
        metrics_log = MetricsLog(self.metrics_path)
        log.info(
            "training %s on %d examples: %d steps of %d (%d rank(s)), resuming at %d",
            self.objective.name,
            len(dataset),
            total,
            batch_size,
            dist.world,
            resumed or 0,
        )
        last: dict[str, float] = {}
        step = resumed or 0
        with TrainingProgress(total, step, progress and dist.is_main, self.objective.name) as bar:
            lengths = [sampling.example_cost(ex) for ex in dataset]
            batches_epoch, batches = -1, []
            while step < total:
                epoch, index = divmod(step, per_epoch)
                if epoch != batches_epoch:
                    batches_epoch = epoch
                    batches = sampling.epoch_batches(lengths, s.seed, epoch, batch_size, s.group_by_length)
                batch = batches[index]
                last = self._step(runner, params, optimizer, scheduler, collator, dataset, batch)
                step += 1
                last = {"step": step, "epoch": epoch, **last}
                if dist.is_main:
                    metrics_log.append(last)
                    bar.update(step, last)
                    if on_step is not None:
                        on_step(last)
                if step % s.checkpoint_every == 0 or step == total:
                    self._save(model, optimizer, scheduler, state, step)
        result = self._finish(model, model_dir, tokenizer, state, step, len(dataset), resumed, last, started)
        return dataclasses.replace(result, skipped_too_long=len(built.skipped_too_long))

    def _resume_or_start(self, state: TrainerState) -> int | None:
        steps = self.checkpoints.complete_steps()
        if not steps:
            if self.dist.is_main:
                self.metrics_path.unlink(missing_ok=True)
            return None
        if not self.settings.resume:
            raise ValueError(
                f"{self.outputs.checkpoints} already holds checkpoints {steps}; resume is disabled, so "
                "refusing to mix two runs: write to a new output or delete the old checkpoints"
            )
        previous = self.checkpoints.read_state(steps[-1])
        previous.check_compatible(state, self.checkpoints.uri(steps[-1]))
        log.info("resuming from %s", self.checkpoints.uri(steps[-1]))
        return steps[-1]

    def _step(
        self,
        model: torch.nn.Module,
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        collator: CutCollator,
        dataset: list[TokenizedExample],
        batch: list[int],
    ) -> dict[str, float]:
        s, dist = self.settings, self.dist
        started = time.perf_counter()
        stats = _StepStats()
        micro_batches = sampling.rank_micro_batches(batch, s.micro_batch_size, s.grad_accum, dist.rank)
        # every FSDP rank must run the same number of forwards: one per micro-batch, row groups fused
        fuse_mode = "always" if is_sharded(model) else s.fuse_forward
        for i, indices in enumerate(micro_batches):
            cut_batch = collator([dataset[j] for j in indices]).to(dist.device)
            with gradient_sync(model, i == len(micro_batches) - 1):
                fuse = should_fuse(cut_batch, dist.device, fuse_mode)
                out = backward_micro_batch(
                    model,
                    self.objective,
                    cut_batch,
                    fuse=fuse,
                    autocast=self.autocast,
                    scale=1 / s.grad_accum,
                )
            stats.add(out, cut_batch.tokens, cut_batch.examples)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        grad_norm = getattr(grad_norm, "full_tensor", lambda: grad_norm)()  # a DTensor under FSDP
        lr = float(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stats.reduce(dist)
        return {**stats.metrics(time.perf_counter() - started), "lr": lr, "grad_norm": float(grad_norm)}

    def _save(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: TrainerState, step: int
    ) -> None:
        self.checkpoints.save(model, optimizer, scheduler, _at(state, step), self.metrics_path)
        if self.dist.is_main and is_s3(self.outputs.metrics) and self.metrics_path.exists():
            MetricsLog(self.metrics_path).upload(self.outputs.metrics, self.store)

    def _finish(
        self,
        model: torch.nn.Module,
        model_dir: Path,
        tokenizer: Any,
        state: TrainerState,
        step: int,
        examples: int,
        resumed: int | None,
        last: dict[str, float],
        started: float,
    ) -> TrainResult:
        digest = ""
        dtype = export_dtype(self.settings.export_dtype, model_dir)
        if is_sharded(model):  # gather the trained weights into an unsharded copy on rank 0's CPU
            weights, _ = full_trainable_state(model, None)
            if self.dist.is_main:
                model = load_model(model_dir, self.settings, torch.device("cpu"))
                loaded = model.load_state_dict(weights, strict=False)
                missing = set(loaded.missing_keys) & set(trainable_parameters(model))
                if missing or loaded.unexpected_keys:
                    raise RuntimeError(
                        f"gathered weights do not fit the model (missing {sorted(missing)[:3]}, unexpected "
                        f"{loaded.unexpected_keys[:3]})"
                    )
        if self.dist.is_main:
            if not last and self.metrics_path.exists():  # resumed a finished run: report its last step
                last = read_metrics(self.metrics_path)[-1]
            adapter = adapter_location(self.outputs.model)
            export_adapter(model, adapter, self.base_uri, self.work, self.store)  # before merging
            digest = export_merged(model, tokenizer, self.outputs.model, self.work, self.store, dtype=dtype)
            if is_s3(self.outputs.metrics) and self.metrics_path.exists():
                MetricsLog(self.metrics_path).upload(self.outputs.metrics, self.store)
        self.dist.barrier()
        return TrainResult(
            objective=self.objective.name,
            steps=step,
            examples=examples,
            model_uri=self.outputs.model,
            model_sha256=digest,
            metrics_uri=self.outputs.metrics,
            checkpoint_uri=self.checkpoints.uri(step),
            resumed_from=resumed,
            final_metrics=last,
            wall_s=time.perf_counter() - started,
        )


def _at(state: TrainerState, step: int) -> TrainerState:
    return TrainerState(step, state.total_steps, state.world_size, state.data_fingerprint, state.config)
