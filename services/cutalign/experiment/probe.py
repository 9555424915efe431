"""How well a model's ratio detection finds the tokens a judge blames, before any training (method page §8).

CUT flags token t for unlikelihood when ``p(y_t | x, j) / p(y_t | x) > λ``. This probe runs exactly the
trainer's computation (its tokenization, collator, forward pass and ``cut_loss`` detection counts) without a
gradient, on two sets of judged negatives with known error spans:

* the policy's **own** wrong responses to the held-out prompts — what online training actually sees;
* for a task that can make them, **synthetic** responses with one known local error (the counting task's
  ``synthetic_negatives``) — what the warm start's judgment-conditioned examples look like.

The gap between the two is the point: a model can read judgments about errors it would not make (the ratio
can grow large when the plain model finds the token unlikely) and still miss its own confident mistakes —
the ratio can never exceed ``1 / p(y_t | x)``, so a token the plain model gives 0.7 is flagged at λ = 1.1
only if the judgment lifts it above 0.77.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM

from cutalign.cut.collator import CutCollator, ExampleTokenizer
from cutalign.cut.detection import DetectionCounts
from cutalign.cut.examples import CutExample
from cutalign.cut.loss import cut_loss
from cutalign.cut.modeling import load_tokenizer
from cutalign.cut.objectives import CutObjective, forward_logits
from cutalign.iteration.respond import Judged


def own_negatives(judged: Sequence[Judged]) -> list[CutExample]:
    """The wrong responses among ``judged`` that carry error spans."""
    return [
        CutExample(j.prompt_id, j.instruction, j.input, j.response, j.judgment, False, j.error_spans)
        for j in judged
        if not j.positive and j.error_spans
    ]


def detection_of(
    model_dir: str, examples: Sequence[CutExample], *, template: str, threshold: float, batch_size: int = 16
) -> dict[str, float]:
    """``detection/*`` metrics of the ratio rule at ``threshold`` over ``examples`` (see module doc)."""
    tokenizer = load_tokenizer(model_dir)  # type: ignore[arg-type]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenize = ExampleTokenizer(tokenizer, template, cutoff=tokenizer.model_max_length)
    objective = CutObjective(threshold=threshold)
    collator = CutCollator(objective.plan, pad_id=tokenizer.pad_token_id)
    dataset = [tokenize(ex) for ex in examples]
    counts = DetectionCounts()
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = collator(dataset[start : start + batch_size])
            mle_logits, misalign_logits = forward_logits(model, batch, fuse=False)
            assert mle_logits is not None and misalign_logits is not None and batch.mle and batch.misalign
            out = cut_loss(
                mle_logits,
                batch.mle.labels,
                misalign_logits,
                batch.misalign.labels,
                batch.is_negative,
                threshold,
                span_mask=batch.span_mask,
                span_known=batch.span_known,
            )
            if out.detection is not None:
                counts = counts + out.detection
    return {**counts.metrics(), "examples": float(len(dataset))}
