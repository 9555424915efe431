"""``cutalign demo``: online alignment from judgments, end to end, on this machine's CPUs.

The counting task (``cutalign.demo.task``) through ``cutalign.online.session``: the platform (reused if
``cutalign up`` is running), a fresh run namespace, the policy server and services; the base model —
init-model + warm start (``cutalign.demo.basemodel``), fetched from the S3 cache when an earlier run built it;
``iterations`` online iterations of the judgment-based objective through the KFP pipeline on the local runner
(the pipeline a cluster runs); SFT on positives on identical prompts, judge, base model and step counts,
in-process; and a report. Everything started is stopped on exit, Ctrl-C and SIGTERM included.

The judgment arm runs :data:`JUDGMENT_ARM`, the best regime ``cutalign experiment`` found at this scale
(docs/results.md has the comparison, with seeds, and the command that produced it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cutalign.config import KafkaSettings, S3Settings
from cutalign.demo.basemodel import BaseModelSpec, cached_base_model, fetch_base_model
from cutalign.experiment.arms import PRESETS
from cutalign.experiment.compare import ExperimentPlan, iteration_prompts
from cutalign.experiment.loop import LoopSettings, Prompt
from cutalign.online.report import OnlineReport
from cutalign.online.session import Callbacks, SessionSettings, builder_ratio, run_session
from cutalign.online.stack import StackSettings, new_run_id
from cutalign.store import ArtifactStore

JUDGMENT_ARM = "span"  # the judgment-based objective the demo runs (see docs/results.md)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo; the defaults fit 10 minutes on two CPU cores (measured in docs/results.md)."""

    base: BaseModelSpec = field(default_factory=BaseModelSpec)
    arm: str = JUDGMENT_ARM
    iterations: int = 3
    prompts_per_iteration: int = 200
    eval_size: int = 0  # 0: the task's whole held-out set
    steps: int = 30
    trainer: dict[str, Any] = field(
        default_factory=lambda: {
            "learning_rate": 1e-3,
            "lora": True,
            "lora_r": 16,
            "lora_alpha": 16,
            "micro_batch_size": 8,
            "cutoff": 512,
        }  # fmt: skip
    )
    baseline: bool = True
    seed: int = 0
    threads: int = 2
    max_new_tokens: int = 48


def demo_prompts(settings: DemoSettings) -> tuple[list[list[Prompt]], list[Prompt]]:
    """(fresh training prompts per iteration, held-out prompts): the experiment's prompts for the seed."""
    task = settings.base.task
    plan = ExperimentPlan(
        base_model="",
        arms={settings.arm: PRESETS[settings.arm]},
        seeds=[settings.seed],
        train_pool=task.train_prompts(len(task.split()[0])),
        eval_prompts=task.eval_prompts()[: settings.eval_size or None],
        prompts_per_iteration=settings.prompts_per_iteration,
        loop=LoopSettings(iterations=settings.iterations),
    )
    return iteration_prompts(plan, settings.seed), list(plan.eval_prompts)


def run_demo(
    settings: DemoSettings,
    out_dir: Path,
    *,
    kafka: KafkaSettings | None = None,
    s3: S3Settings | None = None,
    callbacks: Callbacks | None = None,
    on_base_step: Callable[[int, int, float], None] | None = None,
) -> OnlineReport:
    """Run the demo (module doc); returns its report (``cutalign.online.report.write`` writes it)."""
    run_id = new_run_id()
    work = out_dir / "runs" / run_id
    arm = dict(PRESETS[settings.arm])
    prompts, eval_prompts = demo_prompts(settings)
    cached: dict[str, bool] = {}

    def base_model(store: ArtifactStore) -> str:
        (callbacks or Callbacks()).stage("base model (init-model + warm start, cached in S3)")
        uri, cached["hit"] = cached_base_model(
            settings.base, store, work, threads=settings.threads, on_step=on_base_step
        )
        return uri

    def local_base(uri: str, s3_settings: S3Settings) -> Path:
        return fetch_base_model(uri, ArtifactStore(s3_settings), work / "base")

    report = run_session(
        SessionSettings(
            arm=settings.arm,
            arm_overrides=arm,
            trainer=settings.trainer,
            steps=settings.steps,
            baseline=settings.baseline,
            seed=settings.seed,
            threads=settings.threads,
        ),
        StackSettings(
            run_id=run_id,
            work_dir=work,
            max_new_tokens=settings.max_new_tokens,
            align_p_ratio=builder_ratio(arm),
        ),
        base_model,
        local_base,
        prompts,
        eval_prompts,
        kafka=kafka,
        s3=s3,
        callbacks=callbacks,
    )
    report.config.update({"demo": asdict(settings), "run_id": run_id, "base_cached": cached.get("hit")})
    return report
