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

from cutalign.config import KafkaSettings, OnlineSettings, S3Settings, TrainerSettings
from cutalign.demo import preset
from cutalign.demo.basemodel import BaseModelSpec, cached_base_model, fetch_base_model
from cutalign.online.session import Callbacks, SessionResult, run_session
from cutalign.online.stack import StackSettings, new_run_id
from cutalign.store import ArtifactStore

JUDGMENT_ARM = preset.JUDGMENT_ARM


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo; the defaults fit 10 minutes on two CPU cores (measured in docs/results.md)."""

    base: BaseModelSpec = field(default_factory=BaseModelSpec)
    online: OnlineSettings = field(default_factory=lambda: OnlineSettings(**preset.ONLINE))
    trainer: dict[str, Any] = field(default_factory=lambda: dict(preset.TRAINER))
    eval_size: int = 0  # 0: the task's whole held-out set


@dataclass(frozen=True)
class DemoTask:
    """The counting task with the held-out set cut to ``eval_size`` (0: all of it)."""

    spec: BaseModelSpec
    eval_size: int = 0

    name = "counting"
    judge = "counting"
    judge_options: dict[str, Any] = field(default_factory=dict)

    @property
    def decoding(self) -> Any:
        return self.spec.task.decoding

    def train_prompts(self) -> list[dict[str, Any]]:
        return self.spec.task.train_prompts()

    def eval_prompts(self) -> list[dict[str, Any]]:
        return self.spec.task.eval_prompts()[: self.eval_size or None]


def run_demo(
    settings: DemoSettings,
    out_dir: Path,
    *,
    kafka: KafkaSettings | None = None,
    s3: S3Settings | None = None,
    callbacks: Callbacks | None = None,
    on_base_step: Callable[[int, int, float], None] | None = None,
) -> SessionResult:
    """Run the demo (module doc); returns its results (``cutalign.experiment.report`` writes them)."""
    run_id = new_run_id()
    work = out_dir / "runs" / run_id
    cached: dict[str, bool] = {}

    def base_model(store: ArtifactStore) -> str:
        (callbacks or Callbacks()).stage("base model (init-model + warm start, cached in S3)")
        uri, cached["hit"] = cached_base_model(
            settings.base, store, work, threads=settings.online.threads, on_step=on_base_step
        )
        return uri

    def local_base(uri: str, s3_settings: S3Settings) -> Path:
        return fetch_base_model(uri, ArtifactStore(s3_settings), work / "base")

    result = run_session(
        DemoTask(settings.base, settings.eval_size),
        settings.online,
        TrainerSettings(**settings.trainer),
        StackSettings(run_id=run_id, work_dir=work),
        base_model,
        local_base,
        kafka=kafka,
        s3=s3,
        callbacks=callbacks,
    )
    result.config.update({"demo": asdict(settings), "run_id": run_id, "base_cached": cached.get("hit")})
    return result
