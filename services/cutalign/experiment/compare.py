"""Run several arms over several seeds on identical prompts, base model, judge and step counts.

Seed ``s`` fixes the iteration prompts (a seeded shuffle of the task's training prompts, sliced into fresh,
disjoint sets per iteration) and the trainer's seed (data order, LoRA init, downsampling): every arm of seed
``s`` sees exactly the same prompts, and at iteration 1 — same base, greedy decoding — the same judged
responses (each record's ``data_sha256`` shows it). Only the policy each arm trains makes later iterations'
responses differ, which is the point of an online comparison.

(arm, seed) runs are independent, so ``workers`` > 1 runs them in parallel processes, one torch thread each.
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from cutalign.experiment.loop import IterationRecord, LoopSettings, Prompt, accuracy_of, respond, run_arm
from cutalign.judges.loader import load_judge
from cutalign.policy.loading import load_policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExperimentPlan:
    base_model: str  # a local HF model directory
    arms: Mapping[str, Mapping[str, Any]]  # name -> TrainerSettings overrides
    seeds: Sequence[int]
    train_pool: Sequence[Prompt]  # prompts to draw each iteration's fresh set from
    eval_prompts: Sequence[Prompt]
    prompts_per_iteration: int
    judge: str = "counting"  # entry point or module:Class
    judge_options: Mapping[str, Any] | None = None
    loop: LoopSettings = LoopSettings()
    workers: int = 1

    def __post_init__(self) -> None:
        need = self.loop.iterations * self.prompts_per_iteration
        if need > len(self.train_pool):
            raise ValueError(
                f"{self.loop.iterations} iterations x {self.prompts_per_iteration} prompts need {need} "
                f"training prompts; the pool has {len(self.train_pool)}"
            )
        if not self.arms or not self.seeds:
            raise ValueError("an experiment needs at least one arm and one seed")


@dataclass(frozen=True)
class RunResult:
    arm: str
    seed: int
    records: list[IterationRecord]


def iteration_prompts(plan: ExperimentPlan, seed: int) -> list[list[Prompt]]:
    """Seed ``seed``'s fresh prompts for each iteration: disjoint slices of a seeded shuffle of the pool."""
    pool = list(plan.train_pool)
    random.Random(f"prompts-{seed}").shuffle(pool)
    n = plan.prompts_per_iteration
    return [pool[i * n : (i + 1) * n] for i in range(plan.loop.iterations)]


def base_accuracy(plan: ExperimentPlan) -> float:
    """The base model's held-out accuracy: iteration 0 of every arm and seed."""
    judge = load_judge(plan.judge, plan.judge_options)
    policy = load_policy(plan.base_model)
    return accuracy_of(respond(policy, plan.eval_prompts, judge, plan.loop.decoding))


def _run_one(plan: ExperimentPlan, arm: str, seed: int, accuracy0: float, threads: int) -> RunResult:
    loop = LoopSettings(**{**asdict(plan.loop), "threads": threads})
    with tempfile.TemporaryDirectory(prefix=f"cutalign-exp-{arm}-{seed}-") as work:
        records = run_arm(
            plan.base_model,
            plan.arms[arm],
            iteration_prompts(plan, seed),
            plan.eval_prompts,
            load_judge(plan.judge, plan.judge_options),
            loop,
            Path(work),
            seed=seed,
            base_accuracy=accuracy0,
        )
    return RunResult(arm, seed, records)


def run_experiment(
    plan: ExperimentPlan, on_result: Callable[[RunResult], None] | None = None
) -> tuple[float, list[RunResult]]:
    """(base accuracy, one result per (arm, seed)), results in (arm, seed) order."""
    accuracy0 = base_accuracy(plan)
    log.info("base model %s: held-out accuracy %.3f", plan.base_model, accuracy0)
    jobs = [(arm, seed) for arm in plan.arms for seed in plan.seeds]
    results: dict[tuple[str, int], RunResult] = {}
    if plan.workers <= 1:
        for arm, seed in jobs:
            results[arm, seed] = _run_one(plan, arm, seed, accuracy0, plan.loop.threads)
            if on_result is not None:
                on_result(results[arm, seed])
    else:
        with ProcessPoolExecutor(plan.workers, mp_context=get_context("spawn")) as pool:
            futures = {
                pool.submit(_run_one, plan, arm, seed, accuracy0, 1): (arm, seed) for arm, seed in jobs
            }
            for future in as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                if on_result is not None:
                    on_result(result)
    return accuracy0, [results[job] for job in jobs]
