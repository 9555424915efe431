"""Online iterations through the real services: one KFP pipeline run per iteration on the KFP local runner.

This is the cluster's loop run here: ``pipelines.driver.run_iterations`` submits ``online_iteration`` (publish
prompts → wait for judgments → seal → train → evaluate → gate → promote + hot reload) with the local runner,
one iteration at a time so progress can be shown between them. After each iteration its record is read back
from the run's bucket — the sealed manifest's counts, the evaluation report, the trainer's metrics — so the
report shows what the pipeline actually did, not what this process assumed.

Stage wall times come from the local runner's own task log lines ("Executing task ..." / "Task ... finished"),
which this module captures (with everything the tasks print) into ``kfp.log`` in the run directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cutalign.config import TrainerSettings
from cutalign.iteration.evaluate import ACCURACY
from cutalign.iteration.train import read_metrics, run_name
from cutalign.online.stack import Stack
from cutalign.store import ObjectMissing
from cutalign.store.layout import eval_key, iteration_manifest_key, metrics_key
from cutalign.v1 import training_pb2

log = logging.getLogger(__name__)

# pipeline parameters that are TrainerSettings fields; every other trainer field goes in the overrides JSON
PIPELINE_TRAINER_PARAMS = ("objective", "threshold", "unlikelihood_weight", "lora", "lora_r", "lora_alpha",
                           "learning_rate")  # fmt: skip
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")


@dataclass
class OnlineIteration:
    """What one pipeline iteration did, read back from the run's bucket."""

    iteration: int
    accuracy: float
    promoted: bool
    positives: int  # judged responses, before the builder's downsampling
    negatives: int
    trained_positives: int  # kept after downsampling
    metrics: dict[str, float] = field(default_factory=dict)  # detection/*, tokens/flagged_fraction
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per pipeline task
    wall_s: float = 0.0


class TaskClock(io.TextIOBase):
    """A text stream for the local runner's output: writes it to ``log_file`` and times each task."""

    def __init__(self, log_file: io.TextIOBase, on_task: Callable[[str], None] | None = None) -> None:
        self.log_file = log_file
        self.on_task = on_task
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.failed: list[str] = []
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log_file.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._parse(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log_file.flush()

    def _parse(self, line: str) -> None:
        if match := _STARTED.search(line):
            self.started[match.group(1)] = time.perf_counter()
            if self.on_task is not None:
                self.on_task(match.group(1))
        elif match := _FINISHED.search(line):
            name, status = match.groups()
            if name in self.started:
                self.seconds[name] = time.perf_counter() - self.started[name]
            if status != "SUCCESS":
                self.failed.append(name)


def pipeline_params(
    stack: Stack,
    trainer: Mapping[str, Any],
    *,
    judge: str,
    judge_options_json: str,
    steps: int,
    template: str,
    max_new_tokens: int,
    deadline_s: float,
) -> dict[str, Any]:
    """The pipeline arguments of every iteration: services' URLs, the trainer, the evaluation."""
    checked = TrainerSettings(**{k: v for k, v in trainer.items() if k != "align_p_ratio"})
    fields = {k: getattr(checked, k) for k in trainer if k != "align_p_ratio"}
    overrides = {
        "template": template,
        "epochs": 10_000,  # bounded by max_steps: exactly `steps` optimizer steps, as in the experiment
        "max_steps": steps,
        "checkpoint_every": 10**6,
        **{k: v for k, v in fields.items() if k not in PIPELINE_TRAINER_PARAMS},
    }
    return {
        **{k: v for k, v in fields.items() if k in PIPELINE_TRAINER_PARAMS},
        "trainer_overrides_json": json.dumps(overrides),
        "builder_url": stack.builder_url,
        "policy_admin_url": stack.server.url,
        "gpus": 0,
        "deadline_s": deadline_s,
        "gate_tolerance": 1.0,  # the method promotes every iteration (method page §6)
        "judge": judge,
        "judge_options_json": judge_options_json,
        "eval_overrides_json": json.dumps(
            {"eval_template": template, "eval_max_new_tokens": max_new_tokens, "eval_batch_size": 64}
        ),
    }


def write_prompt_files(
    directory: Path, prompts: Sequence[Sequence[Mapping[str, Any]]], eval_prompts: Sequence[Mapping[str, Any]]
) -> tuple[str, str]:
    """``prompts-{iteration}.jsonl`` per iteration (1-based) and ``eval.jsonl``: (template, eval path)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(prompts, start=1):
        (directory / f"prompts-{i}.jsonl").write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
    (directory / "eval.jsonl").write_text("".join(json.dumps(dict(r)) + "\n" for r in eval_prompts))
    return str(directory / "prompts-{iteration}.jsonl"), str(directory / "eval.jsonl")


def run_online(
    stack: Stack,
    *,
    base_model_uri: str,
    prompts: Sequence[Sequence[Mapping[str, Any]]],
    eval_prompts: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    objective: str,
    work_dir: Path,
    on_task: Callable[[int, str], None] | None = None,
    on_iteration: Callable[[OnlineIteration], None] | None = None,
) -> list[OnlineIteration]:
    """Run ``len(prompts)`` iterations of the pipeline; returns each iteration's record."""
    local_submitter, run_iterations = _pipeline_driver()
    template, eval_path = write_prompt_files(work_dir / "prompts", prompts, eval_prompts)
    records = []
    with (work_dir / "kfp.log").open("w", encoding="utf-8") as log_file:
        submit = local_submitter(str(work_dir / "kfp"))
        for iteration in range(1, len(prompts) + 1):
            clock = TaskClock(log_file, _bind(on_task, iteration))
            started = time.perf_counter()
            with contextlib.redirect_stdout(clock):  # the local runner prints each task's output
                try:
                    (outcome,) = run_iterations(
                        stack.store,
                        submit,
                        iterations=1,
                        first_iteration=iteration,
                        prompts_template=template,
                        eval_uri=eval_path,
                        initial_policy_uri=base_model_uri,
                        params=params,
                    )
                except RuntimeError as e:
                    stack.services.check()  # a failed service explains a failed task best
                    raise RuntimeError(
                        f"iteration {iteration} failed ({e}); see {work_dir / 'kfp.log'}"
                    ) from e
            stack.services.check()
            record = read_iteration(stack, iteration, objective, outcome.promoted)
            record.seconds = dict(clock.seconds)
            record.wall_s = time.perf_counter() - started
            records.append(record)
            if on_iteration is not None:
                on_iteration(record)
    return records


def read_iteration(stack: Stack, iteration: int, objective: str, promoted: bool) -> OnlineIteration:
    """An iteration's record from its sealed manifest, evaluation report and training metrics."""
    store = stack.store
    manifest = store.get_manifest(iteration_manifest_key(iteration), training_pb2.IterationManifest)
    before, after = dict(manifest.counts_before_downsampling), dict(manifest.counts_by_kind)
    report = json.loads(store.get_bytes(eval_key(iteration)))
    metrics = {k: float(v) for k, v in report["metrics"].items() if k.startswith("detection/")}
    try:
        steps = read_metrics(store, store.uri(metrics_key(iteration, run_name(_objective(objective)))))
    except ObjectMissing:
        steps = []
    flagged = [s["tokens/flagged_fraction"] for s in steps if "tokens/flagged_fraction" in s]
    if flagged and objective not in ("sft", "hindsight"):
        metrics["tokens/flagged_fraction"] = sum(flagged) / len(flagged)
    return OnlineIteration(
        iteration=iteration,
        accuracy=float(report["metrics"][ACCURACY]),
        promoted=promoted,
        positives=int(before.get("ALIGN_P", 0)),
        negatives=int(before.get("ALIGN_N_MISALIGN", 0)),
        trained_positives=int(after.get("ALIGN_P", 0)),
        metrics=metrics,
    )


def _bind(on_task: Callable[[int, str], None] | None, iteration: int) -> Callable[[str], None] | None:
    if on_task is None:
        return None
    return lambda task: on_task(iteration, task)


def _pipeline_driver() -> tuple[Any, Any]:
    """The multi-iteration pipeline driver (imported here: it loads kfp, which ``--help`` need not)."""
    from cutalign.pipelines import driver

    return driver.local_submitter, driver.run_iterations


def _objective(objective: str) -> TrainerSettings:
    return TrainerSettings(objective=objective)  # type: ignore[arg-type]
