"""Training objectives on identical data: CUT and the paper's baselines, one small class each.

Each objective says which rows it needs (a ``RowPlan``) and turns the logits of those rows into a loss:

* ``cut``          — Align-P / Align-N MLE + Misalign contrastive unlikelihood (``cutalign.cut.loss``).
* ``sft``          — MLE on positive responses under the plain prompt; negatives are not used.
* ``hindsight``    — MLE of every response under the judgment prompt (Hindsight / Chain-of-Hindsight: the
  model learns p(y | x, j) only; positives use the judgment "Perfect" when they carry none).
* ``unlikelihood`` — MLE on positives, unlikelihood on *every* token of each negative response (the paper's
  "no detection" ablation); the judgment text is not used. Combined with ``combine`` like CUT.

Every objective normalizes like CUT (``cutalign.cut.loss``, ``normalization``): by default each example's
token mean is its loss and the micro-batch loss is the mean over examples, so baselines and CUT are compared
under one rule and neither depends on the micro-batch size.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch

from cutalign.config import TrainerSettings
from cutalign.cut.collator import CutBatch, RowPlan, Rows
from cutalign.cut.detection import DetectionCounts
from cutalign.cut.loss import (
    Combine,
    Normalization,
    check_normalization,
    combine_losses,
    cut_loss,
    log1m_prob,
    response_logprobs,
    row_means,
    row_of_tokens,
)


@dataclass(frozen=True)
class StepLoss:
    loss: torch.Tensor  # scalar float32, differentiable
    mle: float
    unlikelihood: float
    flagged_tokens: int = 0
    misalign_tokens: int = 0
    detection: DetectionCounts | None = None


class Objective(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def plan(self) -> RowPlan:
        """The rows this objective trains on."""
        ...

    def loss(
        self, mle_logits: torch.Tensor | None, misalign_logits: torch.Tensor | None, batch: CutBatch
    ) -> StepLoss:
        """The loss of one micro-batch from the logits of its ``mle`` and ``misalign`` rows."""
        ...


@dataclass(frozen=True)
class CutObjective:
    threshold: float = 1.1
    unlikelihood_weight: float = 1.0
    gamma: float = 0.0
    combine: Combine = "mean"
    span_mode: str = "ratio"
    mask_after_error: bool = False
    align_n_weight: float = 1.0
    normalization: Normalization = "example"
    name: str = "cut"
    plan: RowPlan = RowPlan(positive_mle="plain", negative_mle="judged", negative_misalign=True)

    def loss(
        self, mle_logits: torch.Tensor | None, misalign_logits: torch.Tensor | None, batch: CutBatch
    ) -> StepLoss:
        assert mle_logits is not None and batch.mle is not None, "CUT has one MLE row per example"
        if misalign_logits is None or batch.misalign is None:  # no negatives: zero Misalign rows, no compute
            misalign_logits = mle_logits.new_zeros((0, 1, mle_logits.shape[-1]))
            misalign_labels = batch.mle.labels.new_zeros((0, 1))
        else:
            misalign_labels = batch.misalign.labels
        out = cut_loss(
            mle_logits,
            batch.mle.labels,
            misalign_logits,
            misalign_labels,
            batch.is_negative,
            self.threshold,
            self.unlikelihood_weight,
            self.gamma,
            self.combine,
            span_mask=batch.span_mask,
            span_known=batch.span_known,
            span_mode=self.span_mode,
            mask_after_error=self.mask_after_error,
            align_n_weight=self.align_n_weight,
            normalization=self.normalization,
        )
        return StepLoss(
            out.loss,
            out.mle_loss.item(),
            out.unlikelihood_loss.item(),
            out.flagged_tokens,
            out.misalign_tokens,
            out.detection,
        )


def token_terms(logits: torch.Tensor, rows: Rows) -> tuple[torch.Tensor, torch.Tensor, int]:
    """log p of every labelled token (T,), the row of each (T,), and the number of rows."""
    logp, mask = response_logprobs(logits, rows.labels)
    return logp, row_of_tokens(mask), rows.labels.shape[0]


def normalized_mean(
    values: torch.Tensor, rows: torch.Tensor, n_rows: int, normalization: str
) -> torch.Tensor:
    """The mean of per-row token means (``example``), or the token mean of the micro-batch (``batch``)."""
    check_normalization(normalization)
    if normalization == "batch":
        return values.mean() if values.numel() else values.new_zeros(())
    return row_means(values, rows, n_rows).mean()


def _mle(logits: torch.Tensor, rows: Rows, normalization: str) -> torch.Tensor:
    logp, token_rows, n = token_terms(logits, rows)
    return -normalized_mean(logp, token_rows, n, normalization)


@dataclass(frozen=True)
class SftObjective:
    normalization: Normalization = "example"
    name: str = "sft"
    plan: RowPlan = RowPlan(positive_mle="plain", negative_mle=None, negative_misalign=False)

    def loss(
        self, mle_logits: torch.Tensor | None, misalign_logits: torch.Tensor | None, batch: CutBatch
    ) -> StepLoss:
        assert mle_logits is not None and batch.mle is not None
        mle = _mle(mle_logits, batch.mle, self.normalization)
        return StepLoss(mle, mle.item(), 0.0)


@dataclass(frozen=True)
class HindsightObjective:
    normalization: Normalization = "example"
    name: str = "hindsight"
    plan: RowPlan = RowPlan(positive_mle="judged", negative_mle="judged", negative_misalign=False)

    def loss(
        self, mle_logits: torch.Tensor | None, misalign_logits: torch.Tensor | None, batch: CutBatch
    ) -> StepLoss:
        assert mle_logits is not None and batch.mle is not None
        mle = _mle(mle_logits, batch.mle, self.normalization)
        return StepLoss(mle, mle.item(), 0.0)


@dataclass(frozen=True)
class UnlikelihoodObjective:
    unlikelihood_weight: float = 1.0
    combine: Combine = "mean"
    normalization: Normalization = "example"
    name: str = "unlikelihood"
    plan: RowPlan = RowPlan(positive_mle="plain", negative_mle=None, negative_misalign=True)

    def loss(
        self, mle_logits: torch.Tensor | None, misalign_logits: torch.Tensor | None, batch: CutBatch
    ) -> StepLoss:
        """Positives have an MLE row only and negatives a Misalign row only: per example, L is L2 or L1
        (``batch`` normalization: the token means combined by ``combine`` when both kinds are present)."""
        zero = torch.zeros((), device=batch.is_negative.device)
        l2, positives = zero, 0
        if mle_logits is not None and batch.mle is not None:
            l2, positives = _mle(mle_logits, batch.mle, self.normalization), batch.mle.labels.shape[0]
        l1, tokens, negatives = zero, 0, 0
        if misalign_logits is not None and batch.misalign is not None:
            logp, rows, negatives = token_terms(misalign_logits, batch.misalign)
            terms = -self.unlikelihood_weight * log1m_prob(logp)
            l1, tokens = normalized_mean(terms, rows, negatives, self.normalization), logp.numel()
        if self.normalization == "example":
            loss = (l2 * positives + l1 * negatives) / max(positives + negatives, 1)
        else:  # only negatives in the batch: no MLE term to combine with
            loss = l1 if batch.mle is None else combine_losses(l1, l2, tokens > 0, self.combine)
        return StepLoss(loss, l2.item(), l1.item(), tokens, tokens)


def make_objective(settings: TrainerSettings) -> Objective:
    if settings.objective == "cut":
        return CutObjective(
            threshold=settings.threshold,
            unlikelihood_weight=settings.unlikelihood_weight,
            gamma=settings.gamma,
            combine=settings.combine,
            span_mode=settings.span_mode,
            mask_after_error=settings.mask_after_error,
            align_n_weight=settings.align_n_weight,
            normalization=settings.normalization,
        )
    if settings.objective == "sft":
        return SftObjective(normalization=settings.normalization)
    if settings.objective == "hindsight":
        return HindsightObjective(normalization=settings.normalization)
    if settings.objective == "unlikelihood":
        return UnlikelihoodObjective(
            unlikelihood_weight=settings.unlikelihood_weight,
            combine=settings.combine,
            normalization=settings.normalization,
        )
    raise ValueError(f"unknown objective {settings.objective!r}")


# -- the forward pass ---------------------------------------------------------------------------------------


def should_fuse(batch: CutBatch, device: torch.device, mode: str) -> bool:
    """One forward over both row groups, or one per group.

    On a GPU one larger forward is faster than two smaller ones even with some extra padding; on a CPU
    compute is proportional to padded tokens, so fusing only pays when the groups are the same length.
    """
    if batch.mle is None or batch.misalign is None or mode == "never":
        return False
    if mode == "always" or device.type == "cuda":
        return True
    return batch.mle.input_ids.shape[1] == batch.misalign.input_ids.shape[1]


def forward_logits(
    model: torch.nn.Module,
    batch: CutBatch,
    fuse: bool,
    autocast: AbstractContextManager[object] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Logits of the ``mle`` rows and of the ``misalign`` rows (each [rows, L, V], or None without rows)."""

    def run(rows: Rows) -> torch.Tensor:
        with autocast or nullcontext():
            return model(input_ids=rows.input_ids, attention_mask=rows.attention_mask, use_cache=False).logits

    if fuse and batch.mle is not None and batch.misalign is not None:
        length = max(batch.mle.input_ids.shape[1], batch.misalign.input_ids.shape[1])
        a, b = batch.mle.padded_to(length, batch.pad_id), batch.misalign.padded_to(length, batch.pad_id)
        both = Rows(
            *(
                torch.cat(pair)
                for pair in zip(
                    (a.input_ids, a.attention_mask, a.labels),
                    (b.input_ids, b.attention_mask, b.labels),
                    strict=True,
                )
            )
        )
        logits = run(both)
        rows = a.input_ids.shape[0]
        return logits[:rows, : batch.mle.input_ids.shape[1]], logits[
            rows:, : batch.misalign.input_ids.shape[1]
        ]
    return (
        run(batch.mle) if batch.mle is not None else None,
        run(batch.misalign) if batch.misalign is not None else None,
    )


def backward_micro_batch(
    model: torch.nn.Module,
    objective: Objective,
    batch: CutBatch,
    *,
    fuse: bool,
    autocast: AbstractContextManager[object] | None = None,
    scale: float = 1.0,
) -> StepLoss:
    """Forward, loss and backward of one micro-batch (the loss scaled by ``scale`` for accumulation)."""
    mle_logits, misalign_logits = forward_logits(model, batch, fuse, autocast)
    out = objective.loss(mle_logits, misalign_logits, batch)
    (out.loss * scale).backward()
    return out
