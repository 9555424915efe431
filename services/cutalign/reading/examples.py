"""Judgment-reading warm-start data for any task, from the model's own samples and the task's own judge.

The demo's warm start teaches a tiny model to read judgments with hand-made data: judged examples showing the
policy's habitual mistakes under the judgments that name them (``cutalign.demo.task.warm_start_examples``).
What made it work (docs/results.md) is that the judged responses are *the policy's own* errors — the
judgment then raises the probability of exactly the token the policy gets wrong, which is what CUT's
detection needs. This builds the same kind of data for a user's task without knowing anything about it:

1. sample ``samples_per_prompt`` responses per training prompt from the model — the greedy one (what online
   training will see) and others at ``temperature`` (its other habits and varied judgments of one prompt);
2. judge each with the task's judge;
3. emit a **judged** example for every distinct response — its judgment, then the response, so the model
   learns that the judgment text describes the response (positives under their positive judgment, so
   "Perfect." and a named error are told apart) — and a **plain** example for every positive response and
   every correction the judge gives (``Judgment.correction``), repeated up to ``plain_share`` of the data,
   so the task itself is not unlearned (measured: a tiny model trained on its own judged wrong responses
   makes them under the plain prompt too; docs/results.md).

Held-out prompts are never used: the eval set stays unseen.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cutalign.cut.examples import CutExample
from cutalign.iteration.prompts import reference_of
from cutalign.iteration.task import Decoding, Prompt
from cutalign.judges.base import Judge, run_judge
from cutalign.policy.generation import SamplingParams, generate
from cutalign.policy.loading import LoadedPolicy
from cutalign.reading.settings import ReadingSettings
from cutalign.reading.training import judged, plain
from cutalign.templates import PromptFormat, join_input


@dataclass(frozen=True)
class ReadingData:
    examples: list[CutExample]
    responses: int  # distinct (prompt, response) pairs judged
    positives: int
    corrections: int


def reading_examples(
    policy: LoadedPolicy,
    prompts: Sequence[Prompt],
    judge: Judge,
    decoding: Decoding,
    settings: ReadingSettings,
) -> ReadingData:
    """Sample, judge and turn the results into plain and judged examples (module doc)."""
    pool = list(prompts)[: settings.max_prompts or None]
    fmt = PromptFormat.of(decoding.template, policy.tokenizer)
    texts = [fmt.plain(p["instruction"], p.get("input", "")) for p in pool]
    params = [SamplingParams(max_new_tokens=decoding.max_new_tokens)]
    params += [
        SamplingParams(
            max_new_tokens=decoding.max_new_tokens,
            do_sample=True,
            temperature=settings.temperature,
            seed=settings.seed * 1000 + k,
        )
        for k in range(1, settings.samples_per_prompt)
    ]
    with torch.inference_mode():
        rounds = [
            generate(policy.model, policy.tokenizer, texts, p, batch_size=decoding.batch_size) for p in params
        ]
    examples: list[CutExample] = []
    responses = positives = corrections = 0
    for i, prompt in enumerate(pool):
        instruction, extra = prompt["instruction"], prompt.get("input", "")
        seen: set[str] = set()
        for k, out in enumerate(r[i] for r in rounds):
            if out.text in seen or not out.text.strip():
                continue
            seen.add(out.text)
            reference = reference_of(dict(prompt)) or None
            verdict = run_judge(judge, join_input(instruction, extra), out.text, reference)
            sid = f"{prompt['id']}#{k}"
            responses += 1
            examples.append(judged(sid, instruction, out.text, verdict.text, extra))
            if verdict.positive:
                positives += 1
                examples.append(plain(sid, instruction, out.text, extra))
            elif settings.corrections and verdict.correction and verdict.correction not in seen:
                seen.add(verdict.correction)
                corrections += 1
                examples.append(plain(f"{sid}-corrected", instruction, verdict.correction, extra))
    return ReadingData(_with_plain_share(examples, settings.plain_share), responses, positives, corrections)


def _with_plain_share(examples: list[CutExample], share: float) -> list[CutExample]:
    """``examples`` with the plain ones repeated (in order) until they make at least ``share`` of the data."""
    plain_ones = [e for e in examples if e.positive]
    judged_count = len(examples) - len(plain_ones)
    if not plain_ones:
        return examples
    needed = math.ceil(share * judged_count / (1 - share))  # plain / (plain + judged) >= share
    repeats = [
        dataclasses.replace(e, sample_id=f"{e.sample_id}@{k}")
        for k, e in enumerate(itertools.islice(itertools.cycle(plain_ones), max(0, needed - len(plain_ones))))
    ]
    return examples + repeats
