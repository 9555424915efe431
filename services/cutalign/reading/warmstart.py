"""The judgment-reading warm start: sample the model on a task, judge, train it to condition on judgments.

``cutalign warm-start`` and ``cutalign run --warm-start`` run it before the online loop; ``cutalign probe``
measures what it changed (the contrast and the detection on the model's own wrong responses).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from cutalign.iteration.task import Prompt, Task
from cutalign.judges.loader import load_judge
from cutalign.policy.loading import load_policy
from cutalign.reading.examples import ReadingData, reading_examples
from cutalign.reading.settings import ReadingSettings, WarmStartSettings
from cutalign.reading.training import warm_start

log = logging.getLogger(__name__)


def reading_warm_start(
    model_dir: str | Path,
    task: Task,
    prompts: Sequence[Prompt],
    out_dir: Path,
    *,
    reading: ReadingSettings,
    training: WarmStartSettings,
    threads: int | None = None,
) -> ReadingData:
    """Build judgment-reading data from ``model_dir``'s own responses to ``prompts`` and train on it; the
    warm-started model is saved to ``out_dir``. ``prompts`` must not be the online loop's or the eval's."""
    if threads:
        torch.set_num_threads(threads)
    policy = load_policy(str(model_dir))
    judge = load_judge(task.judge, task.judge_options)
    data = reading_examples(policy, prompts, judge, task.decoding, reading)
    del policy
    log.info(
        "judgment-reading warm start: %d responses judged (%d right), %d corrections, %d examples",
        data.responses,
        data.positives,
        data.corrections,
        len(data.examples),
    )
    settings = training.model_copy(update={"template": task.decoding.template})
    out_dir.mkdir(parents=True, exist_ok=True)
    warm_start(Path(model_dir), data.examples, settings, out_dir, threads=threads)
    return data
