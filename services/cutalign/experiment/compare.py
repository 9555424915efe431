"""Run several arms over several seeds on identical prompts, base model, judge and step counts.

Seed ``s`` fixes the iteration prompts (``fresh_prompt_sets``: disjoint slices of a seeded shuffle of the
task's pool) and the trainer's seed (data order, LoRA init, downsampling): every arm of seed ``s`` sees
exactly the same prompts, and at iteration 1 — same base, greedy decoding — the same judged responses (each
record's ``data_sha256``, the hash of its sealed shards, shows it). Only the policy each arm trains makes
later iterations' responses differ, which is the point of an online comparison.

Each (arm, seed) run is the in-process driver (``cutalign.iteration.inprocess``) in a bucket of its own, so
its sealed manifests, checkpoints, evaluations and releases can be inspected afterwards. The base model is
evaluated once; every run starts from that evaluation (``start_run``). Runs are independent, so
``workers`` > 1 runs them in parallel processes, one torch thread each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import torch

from cutalign.config import OnlineSettings, S3Settings, TrainerSettings
from cutalign.iteration.arms import run_loop
from cutalign.iteration.evaluate import EvalReport, evaluate_policy
from cutalign.iteration.inprocess import run_inprocess
from cutalign.iteration.record import IterationRecord, read_record, start_run
from cutalign.iteration.task import Task, fresh_prompt_sets
from cutalign.judges.loader import load_judge
from cutalign.store import ArtifactStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExperimentPlan:
    task: Task
    base_model: str  # a local HF model directory or an s3:// prefix of the store
    arms: Mapping[str, Mapping[str, Any]]  # name -> TrainerSettings overrides
    seeds: Sequence[int]
    online: OnlineSettings  # iterations, prompts per iteration, steps, threads
    trainer: TrainerSettings  # shared by every arm
    s3: S3Settings  # where each run's bucket is made
    run_id: str  # names the runs' buckets
    workers: int = 1
    reserve: int = 0  # the pool's first prompts, kept out of every iteration (for a probe and a warm start)

    def __post_init__(self) -> None:
        if not self.arms or not self.seeds:
            raise ValueError("an experiment needs at least one arm and one seed")

    def prompt_sets(self, seed: int) -> list[list[Any]]:
        o = self.online
        pool = list(self.task.train_prompts())[self.reserve :]
        return fresh_prompt_sets(pool, o.iterations, o.prompts_per_iteration, seed)

    def spare(self) -> list[Any]:
        """The reserved prompts: no iteration of any arm or seed uses them."""
        return list(self.task.train_prompts())[: self.reserve]

    def bucket(self, arm: str, seed: int) -> str:
        name = "".join(c if c.isalnum() else "-" for c in arm.lower())
        return f"cutalign-exp-{self.run_id}-{name}-{seed}"[:63].rstrip("-")


@dataclass(frozen=True)
class RunResult:
    arm: str
    seed: int
    records: list[IterationRecord]  # iteration 0 (the base model) first
    bucket: str = ""


def base_report(plan: ExperimentPlan) -> EvalReport:
    """The base model's held-out evaluation: iteration 0 of every arm and seed."""
    decoding = plan.task.decoding
    return evaluate_policy(
        plan.base_model,
        plan.task.eval_prompts(),
        load_judge(plan.task.judge, plan.task.judge_options),
        s3=plan.s3,
        template=decoding.template,
        max_new_tokens=decoding.max_new_tokens,
        batch_size=decoding.batch_size,
    )


def run_one(plan: ExperimentPlan, arm: str, seed: int, base: EvalReport, threads: int) -> RunResult:
    """One (arm, seed) run in its own bucket."""
    torch.set_num_threads(threads)
    bucket = plan.bucket(arm, seed)
    store = ArtifactStore(plan.s3.model_copy(update={"bucket": bucket}))
    store.ensure_bucket()
    loop = run_loop(
        plan.trainer, plan.arms[arm], steps=plan.online.steps, seed=seed, template=plan.task.decoding.template
    )
    start_run(store, plan.base_model, base, model_id=f"{arm}-seed{seed}", s3=plan.s3)
    records = run_inprocess(store, plan.task, plan.prompt_sets(seed), loop)
    return RunResult(arm, seed, [read_record(store, 0, loop.trainer.objective), *records], bucket)


def run_experiment(
    plan: ExperimentPlan, on_result: Callable[[RunResult], None] | None = None
) -> tuple[EvalReport, list[RunResult]]:
    """(the base model's evaluation, one result per (arm, seed)), results in (arm, seed) order."""
    torch.set_num_threads(plan.online.threads)
    base = base_report(plan)
    log.info("base model %s: held-out accuracy %.3f", plan.base_model, base.accuracy)
    jobs = [(arm, seed) for arm in plan.arms for seed in plan.seeds]
    results: dict[tuple[str, int], RunResult] = {}
    if plan.workers <= 1:
        for arm, seed in jobs:
            results[arm, seed] = run_one(plan, arm, seed, base, plan.online.threads)
            if on_result is not None:
                on_result(results[arm, seed])
    else:
        with ProcessPoolExecutor(plan.workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_one, plan, arm, seed, base, 1): (arm, seed) for arm, seed in jobs}
            for future in as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                if on_result is not None:
                    on_result(result)
    return base, [results[job] for job in jobs]
