"""The online loop through the real services: one KFP pipeline run per iteration, on the KFP local runner.

This is the cluster's loop run here: ``pipelines.driver.run_iterations`` submits ``online_iteration`` (publish
prompts → wait for judgments → seal → train → evaluate → gate → promote + hot reload) with the local runner,
one iteration at a time so progress can be shown between them. Each iteration's record is then read back from
the run's bucket (``cutalign.iteration.record``), exactly as the in-process driver's are, so the report shows
what the pipeline did, not what this process assumed.

Stage wall times come from the local runner's own task log lines ("Executing task ..." / "Task ... finished"),
which this module captures (with everything the tasks print) into ``kfp.log`` in the run directory.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cutalign.iteration.inprocess import Loop
from cutalign.iteration.record import IterationRecord, read_record
from cutalign.iteration.task import Prompt, Task
from cutalign.iteration.train import run_name
from cutalign.online.stack import Stack

# pipeline parameters that are TrainerSettings fields; every other trainer field goes in the overrides JSON
PIPELINE_TRAINER_PARAMS = (
    "objective",
    "threshold",
    "unlikelihood_weight",
    "lora",
    "lora_r",
    "lora_alpha",
    "learning_rate",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")


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


def pipeline_params(stack: Stack, task: Task, loop: Loop, *, deadline_s: float) -> dict[str, Any]:
    """The pipeline arguments of every iteration: services' URLs, the trainer, the judge, the evaluation."""
    trainer = loop.trainer.model_dump(mode="json")
    decoding = task.decoding
    return {
        **{k: trainer[k] for k in PIPELINE_TRAINER_PARAMS},
        "trainer_overrides_json": json.dumps(
            {k: v for k, v in trainer.items() if k not in PIPELINE_TRAINER_PARAMS}
        ),
        "builder_url": stack.builder_url,
        "policy_admin_url": stack.server.url,
        "gpus": 0,
        "deadline_s": deadline_s,
        "gate_tolerance": loop.gate_tolerance,
        "judge": task.judge,
        "judge_options_json": json.dumps(dict(task.judge_options)),
        "eval_overrides_json": json.dumps(
            {
                "eval_template": decoding.template,
                "eval_max_new_tokens": decoding.max_new_tokens,
                "eval_batch_size": decoding.batch_size,
            }
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


def run_pipeline(
    stack: Stack,
    task: Task,
    prompt_sets: Sequence[Sequence[Prompt]],
    loop: Loop,
    *,
    work_dir: Path,
    deadline_s: float,
    on_task: Callable[[int, str], None] | None = None,
    on_record: Callable[[IterationRecord], None] | None = None,
) -> list[IterationRecord]:
    """Run one pipeline iteration per prompt set from the store's current release; returns iterations 1..N."""
    from cutalign.pipelines.driver import local_submitter, run_iterations

    params = pipeline_params(stack, task, loop, deadline_s=deadline_s)
    template, eval_path = write_prompt_files(work_dir / "prompts", prompt_sets, task.eval_prompts())
    records = []
    with (work_dir / "kfp.log").open("w", encoding="utf-8") as log_file:
        submit = local_submitter(str(work_dir / "kfp"))
        for iteration in range(1, len(prompt_sets) + 1):
            clock = TaskClock(log_file, None if on_task is None else functools.partial(on_task, iteration))
            with contextlib.redirect_stdout(clock), warnings.catch_warnings():  # the tasks' output is logged
                # the steps' cluster resources (CPU, memory, GPUs) mean nothing to the local runner, which
                # warns of each on every task
                warnings.filterwarnings("ignore", r"Task '.*': settings .* have no effect", UserWarning)
                try:
                    run_iterations(
                        stack.store,
                        submit,
                        iterations=1,
                        first_iteration=iteration,
                        prompts_template=template,
                        eval_uri=eval_path,
                        initial_policy_uri="",  # the run's release 0 (start_run) is always there
                        params=params,
                    )
                except RuntimeError as e:
                    stack.services.check()  # a failed service explains a failed task best
                    raise RuntimeError(
                        f"iteration {iteration} failed ({e}); see {work_dir / 'kfp.log'}"
                    ) from e
            stack.services.check()
            record = read_record(stack.store, iteration, run_name(loop.trainer))
            record.seconds = dict(clock.seconds)
            records.append(record)
            if on_record is not None:
                on_record(record)
    return records
