"""What CUT will see on a task, measured before training: ``cutalign probe`` (and the first step of a run).

CUT learns from two things the task must supply (docs/method.md §1-§3):

* **both polarities**: positives for Align-P and negatives for Align-N/Misalign. The probe samples the model's
  greedy responses to the task's prompts, judges them, and reports the *positive rate*. At 0 there is nothing
  to contrast with (and SFT on positives has no data); at 1 there is nothing to correct.
* **a model that reads judgments**: detection flags token t when ``p(y_t | x, j) / p(y_t | x) > λ``, so the
  judgment of a response must raise the probability of exactly the tokens it blames. On the model's own wrong
  responses the probe measures, per response token,

  - ``flagged_fraction``: the share the ratio rule flags at λ (≈ 0: CUT is MLE on the wrong responses, which
    reinforces them; large: unlikelihood on most of every response, which collapses the model);
  - ``contrast``: mean log p(y | x, own judgment) − log p(y | x, another response's judgment), in nats per
    token. A model that reads judgments finds a response likelier under the judgment that describes it than
    under one describing a different response; one that only reacts to the judgment *prompt* (longer context,
    the word "Judgment") scores ≈ 0 however many tokens it flags. This needs no spans, so it works with any
    judge;
  - with error spans (a judge that reports them): the ratio rule's precision and recall against the spans
    (``cutalign.cut.detection``), the direct measure of what the contrast estimates.

:func:`verdict` turns these into a plain statement of what to expect and what to change; its thresholds are
the ones ``docs/results.md`` validated on tasks where the outcome is known (it reports how often they were
right).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cutalign.cut.collator import CutCollator, ExampleTokenizer, RowPlan, TokenizedExample
from cutalign.cut.detection import DetectionCounts
from cutalign.cut.examples import CutExample
from cutalign.cut.loss import response_logprobs
from cutalign.iteration.respond import Judged
from cutalign.policy.loading import LoadedPolicy

# each negative twice: under its judgment (the MLE row) and under the plain prompt (the Misalign row)
_PLAN = RowPlan(positive_mle=None, negative_mle="judged", negative_misalign=True)

MIN_CONTRAST = 0.05  # nats per token: below this the model does not tell its judgment from another's
MIN_FLAGGED = 0.005  # below: detection flags (almost) nothing, CUT is MLE on the wrong responses
MAX_FLAGGED = 0.5  # above: unlikelihood on most of every wrong response
MIN_PRECISION = 0.5  # with spans: most flagged tokens must be blamed ones


@dataclass(frozen=True)
class Verdict:
    ok: bool  # whether CUT can be expected to learn from these judgments
    finding: str  # what was measured, in words
    advice: str  # what to do about it ("" when ok)


@dataclass(frozen=True)
class ProbeReport:
    responses: int
    positives: int
    negatives_measured: int  # wrong responses the model was probed on (a pair of them at least)
    spans_reported: float  # share of the negatives whose judgment came with error spans
    flagged_fraction: float | None
    contrast: float | None
    log_ratio: float | None  # mean log p(y|x,j) - log p(y|x) per token: the ratio rule's raw signal
    threshold: float
    detection: dict[str, float] = field(default_factory=dict)  # detection/* against the spans

    @property
    def positive_rate(self) -> float:
        return self.positives / self.responses if self.responses else 0.0

    def metrics(self) -> dict[str, float]:
        """The report under the project's metric names (probe/*, detection/*)."""
        out = {
            "probe/positive_rate": self.positive_rate,
            "probe/responses": float(self.responses),
            "probe/negatives_measured": float(self.negatives_measured),
            "probe/spans_reported": self.spans_reported,
            **self.detection,
        }
        for name in ("flagged_fraction", "contrast", "log_ratio"):
            if (value := getattr(self, name)) is not None:
                out[f"probe/{name}"] = value
        return out


def negatives_of(judged: Sequence[Judged]) -> list[CutExample]:
    """The wrong responses among ``judged`` as examples (with the judge's spans, if any)."""
    return [
        CutExample(j.prompt_id, j.instruction, j.input, j.response, j.judgment, False, j.error_spans)
        for j in judged
        if not j.positive
    ]


def probe(
    policy: LoadedPolicy,
    judged: Sequence[Judged],
    *,
    template: str,
    threshold: float,
    max_negatives: int = 256,
    batch_size: int = 16,
) -> ProbeReport:
    """Measure the policy on its judged responses ``judged`` (module doc)."""
    negatives = negatives_of(judged)[:max_negatives]
    with_spans = [n for n in negatives if n.error_spans]
    report = ProbeReport(
        responses=len(judged),
        positives=sum(j.positive for j in judged),
        negatives_measured=len(negatives) if len(negatives) >= 2 else 0,
        spans_reported=len(with_spans) / len(negatives) if negatives else 0.0,
        flagged_fraction=None,
        contrast=None,
        log_ratio=None,
        threshold=threshold,
    )
    if len(negatives) < 2:  # a contrast needs another response's judgment
        return report
    tokenize = ExampleTokenizer(policy.tokenizer, template, cutoff=policy.tokenizer.model_max_length)
    own = [tokenize(n) for n in negatives]
    others = negatives[1:] + negatives[:1]  # each response with the next one's judgment
    swapped = [tokenize(_with_judgment(n, other)) for n, other in zip(negatives, others, strict=True)]
    judged_own, plain = _logprobs(policy, own, batch_size)
    judged_other, _ = _logprobs(policy, swapped, batch_size)
    log_lambda = math.log(threshold)
    flagged = counted = 0
    counts = DetectionCounts()
    ratios, contrasts = [], []
    for k, example in enumerate(own):
        ratio = judged_own[k] - plain[k]  # per response token (incl. EOS)
        flags = ratio > log_lambda
        flagged += int(flags.sum())
        counted += flags.numel()
        ratios.append(float(ratio.mean()))
        contrasts.append(float(judged_own[k].mean() - judged_other[k].mean()))
        if example.span_mask is not None:
            counts = counts + DetectionCounts.from_masks(flags, torch.tensor(example.span_mask))
    return ProbeReport(
        responses=report.responses,
        positives=report.positives,
        negatives_measured=len(own),
        spans_reported=report.spans_reported,
        flagged_fraction=flagged / counted,
        contrast=statistics.fmean(contrasts),
        log_ratio=statistics.fmean(ratios),
        threshold=threshold,
        detection=counts.metrics(),
    )


def verdict(report: ProbeReport) -> Verdict:
    """What to expect from CUT on this task and model, and what to change (module doc, thresholds above)."""
    if report.positives == 0:
        return Verdict(
            False,
            f"none of {report.responses} responses is judged right",
            "CUT has no positives to keep (and SFT on positives no data): warm-start the model on correct "
            "examples first (cutalign train --objective sft), or use easier prompts",
        )
    if report.positives == report.responses:
        return Verdict(
            False,
            f"all {report.responses} responses are judged right",
            "there is nothing to correct: use harder prompts or a stricter judge",
        )
    if report.contrast is None or report.flagged_fraction is None:
        return Verdict(False, "fewer than 2 wrong responses to measure", "probe more prompts (--prompts)")
    if report.contrast < MIN_CONTRAST:
        return Verdict(
            False,
            f"the model does not read judgments (contrast {report.contrast:.3f} nats/token, below "
            f"{MIN_CONTRAST}): its own judgment explains a response no better than another one's",
            "run the judgment-reading warm start first (cutalign warm-start, or cutalign run --warm-start)",
        )
    if report.flagged_fraction < MIN_FLAGGED:
        return Verdict(
            False,
            f"detection flags {report.flagged_fraction:.1%} of the wrong responses' tokens at λ "
            f"{report.threshold}: CUT would be MLE on them",
            "lower λ (--threshold), or use span supervision (--arm span) with a judge that reports spans",
        )
    if report.flagged_fraction > MAX_FLAGGED:
        return Verdict(
            False,
            f"detection flags {report.flagged_fraction:.1%} of the wrong responses' tokens at λ "
            f"{report.threshold}: unlikelihood on most of every response",
            "raise λ (--threshold), or use span supervision (--arm span) with a judge that reports spans",
        )
    precision = report.detection.get("detection/precision")
    if precision is not None and precision < MIN_PRECISION:
        return Verdict(
            False,
            f"most flagged tokens are not the blamed ones (precision {precision:.2f} against the spans)",
            "use span supervision (--arm span): the judge's spans are better than the ratio rule here",
        )
    return Verdict(
        True,
        f"positive rate {report.positive_rate:.2f}, contrast {report.contrast:.3f} nats/token, "
        f"{report.flagged_fraction:.1%} of wrong-response tokens flagged",
        "",
    )


def _with_judgment(example: CutExample, other: CutExample) -> CutExample:
    return CutExample(
        example.sample_id, example.instruction, example.input, example.response, other.judgment, False
    )


def _logprobs(
    policy: LoadedPolicy, examples: Sequence[TokenizedExample], batch_size: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per example: log p of each response token (and EOS) after the judgment prompt, and after the plain."""
    collate = CutCollator(_PLAN, pad_id=policy.tokenizer.pad_token_id)
    judged: list[torch.Tensor] = []
    plain: list[torch.Tensor] = []
    model = policy.model
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = collate(list(examples[start : start + batch_size]))
            assert batch.mle is not None and batch.misalign is not None  # every example is a negative
            for rows, out in ((batch.mle, judged), (batch.misalign, plain)):
                logits = model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).logits
                logp, mask = response_logprobs(logits, rows.labels)
                out.extend(logp.split(mask.sum(dim=1).tolist()))
    return judged, plain
