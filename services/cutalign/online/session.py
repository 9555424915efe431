"""One online run, from a base model and prompt sets to a report: what ``cutalign demo`` and ``cutalign run``
both do, for the counting task and for a user's own task.

1. start the stack (``online.stack``): platform, run namespace, policy server on the base model, services;
2. evaluate the base model on the held-out prompts (iteration 0), in-process, exactly as the pipeline does;
3. run the iterations of the judgment-based objective through the KFP pipeline (``online.runner``);
4. stop the stack, then — if asked — run SFT on positives in-process on the same prompts, judge, base model,
   trainer settings and step counts (``experiment.loop``): the baseline the judgment arm must beat.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cutalign.config import KafkaSettings, S3Settings
from cutalign.experiment.arms import PRESETS
from cutalign.experiment.loop import Decoding, IterationRecord, LoopSettings, accuracy_of, respond, run_arm
from cutalign.judges.loader import load_judge, parse_options
from cutalign.online.report import OnlineReport
from cutalign.online.runner import OnlineIteration, pipeline_params, run_online
from cutalign.online.stack import StackSettings, local_stack
from cutalign.policy.loading import load_policy
from cutalign.store import ArtifactStore

KEEP_ALL_POSITIVES = 1e9  # builder align_p_ratio that keeps every positive
Prompt = Mapping[str, Any]


@dataclass(frozen=True)
class SessionSettings:
    arm: str  # name of the judgment-based objective
    arm_overrides: Mapping[str, Any]  # its TrainerSettings fields (align_p_ratio: the builder's downsampling)
    trainer: Mapping[str, Any] = field(default_factory=dict)  # shared by both arms
    steps: int = 30
    baseline: bool = True
    seed: int = 0
    threads: int = 2
    deadline_s: float = 900.0  # longest wait for one iteration's generation and judging


@dataclass
class Callbacks:
    stage: Callable[[str], None] = lambda name: None
    task: Callable[[int, str], None] | None = None
    iteration: Callable[[OnlineIteration], None] | None = None
    baseline: Callable[[IterationRecord], None] | None = None


def run_session(
    settings: SessionSettings,
    stack_settings: StackSettings,
    base_model: Callable[[ArtifactStore], str],
    local_base: Callable[[str, S3Settings], Path],
    prompts: Sequence[Sequence[Prompt]],
    eval_prompts: Sequence[Prompt],
    *,
    kafka: KafkaSettings | None = None,
    s3: S3Settings | None = None,
    callbacks: Callbacks | None = None,
) -> OnlineReport:
    """Run the session (module doc). ``base_model(store)`` returns the URI to serve and train from;
    ``local_base(uri, s3)`` a local copy of it for the in-process evaluation and baseline."""
    cb = callbacks or Callbacks()
    work = stack_settings.work_dir
    judge = load_judge(stack_settings.judge, parse_options(stack_settings.judge_options_json))
    decoding = Decoding(stack_settings.template, stack_settings.max_new_tokens)
    trainer = {**settings.trainer, **settings.arm_overrides}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    holder: dict[str, str] = {}

    def timed_base(store: ArtifactStore) -> str:
        t = time.perf_counter()
        holder["uri"] = base_model(store)
        seconds["base model"] = time.perf_counter() - t
        return holder["uri"]

    with local_stack(stack_settings, timed_base, kafka=kafka, s3=s3, on_stage=cb.stage) as stack:
        seconds["platform + services"] = time.perf_counter() - started - seconds["base model"]
        base_dir = local_base(holder["uri"], stack.s3)
        cb.stage("evaluating the base model (iteration 0)")
        t = time.perf_counter()
        base_accuracy = accuracy_of(respond(load_policy(str(base_dir)), eval_prompts, judge, decoding))
        seconds["base evaluation"] = time.perf_counter() - t
        cb.stage(f"online iterations of {settings.arm} through the services and the KFP pipeline")
        t = time.perf_counter()
        params = pipeline_params(
            stack,
            trainer,
            judge=stack_settings.judge,
            judge_options_json=stack_settings.judge_options_json,
            steps=settings.steps,
            template=stack_settings.template,
            max_new_tokens=stack_settings.max_new_tokens,
            deadline_s=settings.deadline_s,
        )
        iterations = run_online(
            stack,
            base_model_uri=holder["uri"],
            prompts=prompts,
            eval_prompts=eval_prompts,
            params=params,
            objective=str(trainer.get("objective", "cut")),
            work_dir=work,
            on_task=cb.task,
            on_iteration=cb.iteration,
        )
        seconds["online iterations"] = time.perf_counter() - t
        bucket = stack.store.bucket
    baseline = None
    if settings.baseline:
        cb.stage("baseline: SFT on positives, same prompts, judge, base and steps (in-process)")
        t = time.perf_counter()
        loop = LoopSettings(
            iterations=len(prompts),
            steps=settings.steps,
            template=stack_settings.template,
            max_new_tokens=stack_settings.max_new_tokens,
            threads=settings.threads,
            trainer=dict(settings.trainer),
        )
        (work / "sft").mkdir(parents=True, exist_ok=True)
        baseline = run_arm(
            str(base_dir),
            PRESETS["sft"],
            prompts,
            eval_prompts,
            judge,
            loop,
            work / "sft",
            seed=settings.seed,
            base_accuracy=base_accuracy,
            on_record=cb.baseline,
        )
        seconds["sft baseline"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    return OnlineReport(
        arm=settings.arm,
        arm_overrides=dict(settings.arm_overrides),
        base_accuracy=base_accuracy,
        iterations=iterations,
        baseline=baseline,
        config={
            "base_model": holder["uri"],
            "bucket": bucket,
            "run_dir": str(work),
            "steps_per_iteration": settings.steps,
            "prompts_per_iteration": [len(p) for p in prompts],
            "eval_prompts": len(eval_prompts),
            "trainer": dict(settings.trainer),
            "template": stack_settings.template,
            "judge": stack_settings.judge,
        },
        seconds=seconds,
    )


def builder_ratio(arm_overrides: Mapping[str, Any]) -> float:
    """The builder's Align-P ratio for an arm: its ``align_p_ratio``, or keep every positive when None."""
    ratio = arm_overrides.get("align_p_ratio", 0.25)
    return KEEP_ALL_POSITIVES if ratio is None else float(ratio)
