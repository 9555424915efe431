"""One arm of an experiment: the online loop of method page §6, in one process, for one objective and seed.

Per iteration: generate a response to each of the iteration's fresh prompts with the current policy (greedy,
the plain template, ``cutalign.policy.generation.generate`` — the routine the policy server runs), judge each
with the judge plug-in, write the judged examples (reference-format JSONL, error spans included), train
the next policy from the current one with ``cutalign.cut.trainer.train`` for exactly ``steps`` optimizer
steps, and evaluate it on the held-out prompts the same way. No broker, no store: arms must differ only in
their objective, so everything else — base model, prompts, judge, decoding, step count — is shared and
reproducible.

The arm's ``TrainerSettings`` overrides decide the objective and its data balance (``align_p_ratio``: None
keeps every positive; the trainer downsamples file data itself, seeded by the run's seed, so two arms with the
same ratio and seed keep the same positives).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cutalign.config import TrainerSettings
from cutalign.cut.examples import DataError
from cutalign.cut.trainer import train
from cutalign.iteration.evaluate import detection_metrics
from cutalign.iteration.prompts import reference_of
from cutalign.judges.base import Judge, run_judge
from cutalign.policy.generation import SamplingParams, generate
from cutalign.policy.loading import LoadedPolicy, load_policy
from cutalign.templates import PromptFormat, join_input

log = logging.getLogger(__name__)

Prompt = Mapping[str, Any]


@dataclass(frozen=True)
class Judged:
    """One prompt's response and its judgment."""

    prompt_id: str
    instruction: str
    input: str
    response: str
    judgment: str
    positive: bool
    error_spans: tuple[tuple[int, int], ...]

    def record(self) -> dict[str, Any]:
        """The reference-format training record (``cutalign.cut.examples``); positives carry no judgment."""
        return {
            "id": self.prompt_id,
            "instruction": self.instruction,
            "input": self.input,
            "output": self.response,
            "judgment": "" if self.positive else self.judgment,
            "error_spans": [list(s) for s in self.error_spans],
        }


@dataclass(frozen=True)
class LoopSettings:
    """What every arm of an experiment shares."""

    iterations: int = 3
    steps: int = 30  # optimizer steps per iteration, the same for every objective
    template: str = "short"
    max_new_tokens: int = 48
    generation_batch_size: int = 64
    threads: int = 2
    trainer: Mapping[str, Any] = field(default_factory=dict)  # TrainerSettings shared by every arm

    @property
    def decoding(self) -> Decoding:
        return Decoding(self.template, self.max_new_tokens, self.generation_batch_size)


@dataclass
class IterationRecord:
    """What one iteration of one arm did; iteration 0 is the base model (no training)."""

    iteration: int
    accuracy: float
    positives: int = 0  # among the iteration's judged training responses
    negatives: int = 0
    trained_examples: int = 0
    steps: int = 0
    prompts_sha256: str = ""
    data_sha256: str = ""  # of the judged training records: identical across arms at iteration 1
    train_metrics: dict[str, float] = field(default_factory=dict)  # detection/*, tokens/flagged_fraction
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage


@dataclass(frozen=True)
class Decoding:
    """How responses are decoded: greedy, the plain prompt of ``template``, at most ``max_new_tokens``."""

    template: str = "short"
    max_new_tokens: int = 48
    batch_size: int = 64


def respond(
    policy: LoadedPolicy, prompts: Sequence[Prompt], judge: Judge, decoding: Decoding
) -> list[Judged]:
    """Greedy responses of ``policy`` to ``prompts`` under the plain template, each judged."""
    fmt = PromptFormat.of(decoding.template, policy.tokenizer)
    texts = [fmt.plain(p["instruction"], p.get("input", "")) for p in prompts]
    with torch.inference_mode():
        outputs = generate(
            policy.model,
            policy.tokenizer,
            texts,
            SamplingParams(max_new_tokens=decoding.max_new_tokens),
            batch_size=decoding.batch_size,
        )
    judged = []
    for prompt, out in zip(prompts, outputs, strict=True):
        instruction = join_input(prompt["instruction"], prompt.get("input", ""))
        verdict = run_judge(judge, instruction, out.text, reference_of(dict(prompt)) or None)
        judged.append(
            Judged(
                prompt_id=str(prompt["id"]),
                instruction=prompt["instruction"],
                input=prompt.get("input", ""),
                response=out.text,
                judgment=verdict.text,
                positive=verdict.positive,
                error_spans=tuple(verdict.error_spans),
            )
        )
    return judged


def fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(list(rows), sort_keys=True).encode()).hexdigest()


def accuracy_of(judged: Sequence[Judged]) -> float:
    return sum(j.positive for j in judged) / len(judged)


def run_arm(
    base_model: str,
    arm: Mapping[str, Any],
    prompts: Sequence[Sequence[Prompt]],
    eval_prompts: Sequence[Prompt],
    judge: Judge,
    settings: LoopSettings,
    work_dir: Path,
    *,
    seed: int,
    base_accuracy: float | None = None,
    on_record: Callable[[IterationRecord], None] | None = None,
) -> list[IterationRecord]:
    """Run ``len(prompts)`` online iterations of the objective ``arm`` (TrainerSettings overrides).

    ``prompts[i]`` are iteration i+1's fresh prompts. ``base_accuracy`` skips re-evaluating the base model
    when the caller already knows it. Returns one record per iteration, iteration 0 first.
    """
    torch.set_num_threads(settings.threads)
    options = settings.decoding
    policy_uri = base_model
    policy = load_policy(policy_uri)
    if base_accuracy is None:
        base_accuracy = accuracy_of(respond(policy, eval_prompts, judge, options))
    records = [IterationRecord(0, base_accuracy)]
    for iteration, iteration_prompts in enumerate(prompts, start=1):
        started = time.perf_counter()
        judged = respond(policy, iteration_prompts, judge, options)
        rows = [j.record() for j in judged]
        data = work_dir / f"iteration-{iteration}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        record = IterationRecord(
            iteration,
            accuracy=0.0,
            positives=sum(j.positive for j in judged),
            negatives=sum(not j.positive for j in judged),
            prompts_sha256=fingerprint([dict(p) for p in iteration_prompts]),
            data_sha256=fingerprint(rows),
        )
        generated = time.perf_counter()
        trainer = TrainerSettings(
            **{
                "template": settings.template,
                "epochs": 10_000,  # bounded by max_steps: every arm takes exactly `steps` steps
                "checkpoint_every": 10**6,
                "resume": False,
                **settings.trainer,
                **arm,
                "max_steps": settings.steps,
                "seed": seed * 1000 + iteration,
            }
        )
        try:
            result = train(trainer, str(data), policy_uri, str(work_dir / f"run-{iteration}"), progress=False)
        except DataError as e:  # e.g. SFT with no positive response: the policy stays as it is
            log.warning("iteration %d: nothing to train on (%s); keeping the policy", iteration, e)
        else:
            policy_uri = result.model_uri
            record.trained_examples, record.steps = result.examples, result.steps
            steps = _read_metrics(Path(result.metrics_uri))
            record.train_metrics = _mean_training_metrics(steps, trainer.objective)
            policy = load_policy(policy_uri)
        trained = time.perf_counter()
        record.accuracy = accuracy_of(respond(policy, eval_prompts, judge, options))
        record.seconds = {
            "generate+judge": generated - started,
            "train": trained - generated,
            "evaluate": time.perf_counter() - trained,
        }
        log.info(
            "arm %s seed %d iteration %d: accuracy %.3f (%d+/%d-)",
            arm.get("objective", "cut"),
            seed,
            iteration,
            record.accuracy,
            record.positives,
            record.negatives,
        )
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def _read_metrics(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean_training_metrics(steps: Sequence[Mapping[str, float]], objective: str) -> dict[str, float]:
    """Detection metrics averaged over the steps that report them, and the mean flagged fraction (for the
    objectives that flag tokens: sft and hindsight have no unlikelihood set)."""
    out = detection_metrics([dict(s) for s in steps])
    flagged = [s["tokens/flagged_fraction"] for s in steps if "tokens/flagged_fraction" in s]
    if flagged and objective not in ("sft", "hindsight"):
        out["tokens/flagged_fraction"] = sum(flagged) / len(flagged)
    return out
