"""One online run of a task, from a base model to results: what ``cutalign demo`` and ``cutalign run`` do.

1. start the stack (``online.stack``): platform, run namespace, policy server on the base model, services;
2. evaluate the base model on the held-out prompts in-process and record it as iteration 0 (``start_run``);
3. run the iterations of the judgment-based arm through the KFP pipeline and the services
   (``online.pipeline``);
4. if asked, run SFT on positives in-process (``iteration.inprocess``) on the same prompts, judge, base model,
   trainer settings and step counts, in a bucket of its own: the baseline the judgment arm must beat.

The results are the experiment's (``cutalign.experiment.compare.RunResult``): one run per arm, one seed, so
one report (``cutalign.experiment.report``) serves runs, demos and experiments.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cutalign.config import KafkaSettings, OnlineSettings, S3Settings, TrainerSettings
from cutalign.experiment.compare import RunResult
from cutalign.iteration.arms import PRESETS, parse_arm, run_loop
from cutalign.iteration.evaluate import evaluate_policy
from cutalign.iteration.inprocess import run_inprocess
from cutalign.iteration.record import IterationRecord, read_record, start_run
from cutalign.iteration.task import Task, fresh_prompt_sets
from cutalign.judges.loader import load_judge
from cutalign.online.pipeline import run_pipeline
from cutalign.online.stack import StackSettings, local_stack
from cutalign.store import ArtifactStore

BASELINE = "sft"


@dataclass
class Callbacks:
    stage: Callable[[str], None] = lambda name: None
    task: Callable[[int, str], None] | None = None  # (iteration, pipeline task) as each task starts
    record: Callable[[str, IterationRecord], None] | None = None  # (arm, record) as each iteration ends


@dataclass
class SessionResult:
    arms: dict[str, dict[str, Any]]  # name -> TrainerSettings overrides, the judgment arm first
    base_accuracy: float
    results: list[RunResult]
    s3: S3Settings  # the store the runs' buckets are in
    config: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase


def run_session(
    task: Task,
    online: OnlineSettings,
    trainer: TrainerSettings,
    stack_settings: StackSettings,
    base_model: Callable[[ArtifactStore], str],
    local_base: Callable[[str, S3Settings], Path],
    *,
    kafka: KafkaSettings | None = None,
    s3: S3Settings | None = None,
    callbacks: Callbacks | None = None,
) -> SessionResult:
    """Run the session (module doc). ``base_model(store)`` returns the URI to serve and train from;
    ``local_base(uri, s3)`` a local copy of it for the in-process evaluation."""
    cb = callbacks or Callbacks()
    arm, overrides = parse_arm(online.arm)
    prompt_sets = fresh_prompt_sets(
        task.train_prompts(), online.iterations, online.prompts_per_iteration, online.seed
    )
    template = task.decoding.template
    loop = run_loop(trainer, overrides, steps=online.steps, seed=online.seed, template=template)
    judge = load_judge(task.judge, task.judge_options)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    holder: dict[str, str] = {}

    def timed_base(store: ArtifactStore) -> str:
        t = time.perf_counter()
        holder["uri"] = base_model(store)
        seconds["base model"] = time.perf_counter() - t
        return holder["uri"]

    stack_settings = stack_settings.for_task(task, loop.align_p_ratio)
    with local_stack(stack_settings, timed_base, kafka=kafka, s3=s3, on_stage=cb.stage) as stack:
        seconds["platform + services"] = time.perf_counter() - started - seconds["base model"]
        cb.stage("evaluating the base model (iteration 0)")
        t = time.perf_counter()
        decoding = task.decoding
        base = evaluate_policy(
            str(local_base(holder["uri"], stack.s3)),
            task.eval_prompts(),
            judge,
            s3=None,
            template=decoding.template,
            max_new_tokens=decoding.max_new_tokens,
            batch_size=decoding.batch_size,
        )
        start_run(stack.store, holder["uri"], base, model_id="base")
        seconds["base evaluation"] = time.perf_counter() - t
        cb.stage(f"online iterations of {arm} through the services and the KFP pipeline")
        t = time.perf_counter()
        records = run_pipeline(
            stack,
            task,
            prompt_sets,
            loop,
            work_dir=stack_settings.work_dir,
            deadline_s=online.deadline_s,
            on_task=cb.task,
            on_record=None if cb.record is None else lambda r: cb.record(arm, r),  # type: ignore[misc]
        )
        run = read_record(stack.store, 0, loop.trainer.objective)
        results = [RunResult(arm, online.seed, [run, *records], stack.store.bucket)]
        seconds["online iterations"] = time.perf_counter() - t
        arms = {arm: overrides}
        s3_settings = stack.s3
        if online.baseline:
            cb.stage("baseline: SFT on positives, same prompts, judge, base and steps (in-process)")
            t = time.perf_counter()
            store = ArtifactStore(stack.s3.model_copy(update={"bucket": f"{stack.store.bucket}-{BASELINE}"}))
            store.ensure_bucket()
            baseline = run_loop(
                trainer, PRESETS[BASELINE], steps=online.steps, seed=online.seed, template=template
            )
            start_run(store, holder["uri"], base, model_id=BASELINE)
            sft = run_inprocess(
                store,
                task,
                prompt_sets,
                baseline,
                on_record=None if cb.record is None else lambda r: cb.record(BASELINE, r),  # type: ignore[misc]
            )
            results.append(RunResult(BASELINE, online.seed, [run, *sft], store.bucket))
            arms[BASELINE] = dict(PRESETS[BASELINE])
            seconds["sft baseline"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    config = {
        "task": task.name,
        "base_model": holder["uri"],
        "run_dir": str(stack_settings.work_dir),
        "online": online.model_dump(),
        "trainer": trainer.model_dump(mode="json"),
        "judge": task.judge,
        "template": template,
        "eval_prompts": len(task.eval_prompts()),
    }
    return SessionResult(arms, base.accuracy, results, s3_settings, config, seconds)
