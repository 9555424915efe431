"""Generate and judge, in-process: the policy's greedy responses to prompts, each with its judgment.

The one place where a model answers prompts outside the services: evaluation (``evaluate``), the in-process
driver (``inprocess``) and the probe all call :func:`respond`. It renders each prompt as generation and
training do (``cutalign.templates.PromptFormat``: the text template, or the tokenizer's chat template),
decodes with the project's one decoding routine (``cutalign.policy.generation.generate``, which the policy
server runs too) and judges every response with the judge plug-in through ``run_judge`` (checked spans, the
judge's id), so an in-process response and a served one are judged alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cutalign.iteration.prompts import reference_of
from cutalign.iteration.task import Decoding, Prompt
from cutalign.judges.base import Judge, run_judge
from cutalign.policy.generation import SamplingParams, generate
from cutalign.policy.loading import LoadedPolicy
from cutalign.templates import PromptFormat, join_input


@dataclass(frozen=True)
class Judged:
    """One prompt's response and its judgment (spans: code-point ranges of the response the judge blames)."""

    prompt_id: str
    instruction: str
    input: str
    response: str
    judgment: str
    positive: bool
    error_spans: tuple[tuple[int, int], ...] = ()
    finish_reason: str = ""
    judge_id: str = ""


def respond(
    policy: LoadedPolicy, prompts: Sequence[Prompt], judge: Judge, decoding: Decoding
) -> list[Judged]:
    """Greedy responses of ``policy`` to ``prompts`` under the plain template of ``decoding``, each judged."""
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
                finish_reason=out.finish_reason,
                judge_id=verdict.judge_id,
            )
        )
    return judged


def accuracy_of(judged: Sequence[Judged]) -> float:
    """Share of responses judged positive."""
    return sum(j.positive for j in judged) / len(judged)
