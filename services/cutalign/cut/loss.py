"""The CUT loss (docs/method.md §3-§4): MLE on judgment-aligned rows, unlikelihood on blamed tokens.

Rows and tokens (HF convention: the logits at position t predict the label at t+1; label -100 = no loss):

* ``logits``/``labels`` [B, L]: one row per example — Align-P (positive, plain prompt) or Align-N (negative,
  judgment prompt). ``is_negative`` [B] marks the Align-N rows.
* ``misalign_logits``/``misalign_labels`` [N, L2]: the same negative responses under the plain prompt, one row
  per Align-N row, in the order of ``is_negative.nonzero()``.

The k-th labelled token of an Align-N row and the k-th labelled token of its Misalign row are the same
response token (the prompts differ in length, so positions differ; alignment is by label mask, never by
position).
With p_j = p(y_t | y<t, x, j) from the Align-N row and p = p(y_t | y<t, x) from the Misalign row:

    U   = { t : log p_j - log p > log λ }                         detection; p_j and p detached
    w_t = α · p_j^γ                                               detached; γ = 0 gives the constant α
    L2  = - mean_{t in Align-P ∪ Align-N tokens} c_t · log p(y_t | context)   c_t: align_n_weight on Align-N
    L1  = - mean_{t in Misalign tokens} [ w_t · log(1 - p)   if t in U
                                          log p              otherwise ]
    L   = (L1 + L2) / 2 for a negative, L2 for a positive                combine="mean" (reference code)
    L   = L1 + L2                                                       combine="sum"  (paper's equation)

Normalization (``normalization``). The published setting is micro-batch 1 on each of 8 ranks, so each
*example* has its own token means, its own (L1 + L2)/2 rule, and every example weighs the same in the
averaged gradient. ``example`` (the default) computes exactly that at any micro-batch size: L2, L1 and L are
taken per example (its MLE row, its Misalign row), and the micro-batch loss is the mean of the per-example
losses, so micro-batches of one example x 8 accumulation steps, 8 ranks x 1, and one micro-batch of 8 all
give the same gradient. ``batch`` is the earlier behaviour: token means over the whole micro-batch and the
(L1 + L2)/2 rule applied when the micro-batch holds any negative — a positive batched with a negative then
gets half its MLE, and examples weigh by their token counts (gradient cosine ~0.5 to the published objective
at micro-batch 8); it is kept only to reproduce results produced with it.

log(1 - p) is ``log1p(-p)`` with p clamped below 1 - 1e-5 (the reference adds 1e-5 where p == 1). Everything
is computed in float32 whatever the logits' dtype, so bf16 autocast does not degrade the loss.

Detection-quality options (issue 8; defaults reproduce the method exactly): ``span_mask`` gives the tokens a
judge blamed by character span, ``span_mode`` chooses U from the ratio rule, the spans, or their union or
intersection (see ``cutalign.cut.detection``); ``mask_after_error`` drops the MLE term of Misalign tokens
after the first token of U (the continuation of an error is conditioned on a wrong prefix, so reinforcing it
teaches the wrong thing) — dropped tokens leave the L1 mean's denominator too; ``align_n_weight`` scales the
Align-N terms of L2 (the denominator stays the token count, so 0 removes the Align-N MLE as in the ablation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from cutalign.cut.detection import DetectionCounts, select_unlikelihood

IGNORE_INDEX = -100
LOG1M_EPS = 1e-5

Combine = Literal["mean", "sum"]
Normalization = Literal["example", "batch"]


@dataclass(frozen=True)
class CutLossOutput:
    """The loss to backpropagate and its parts (parts detached, for logging; per-example means under
    ``normalization="example"``)."""

    loss: torch.Tensor  # scalar float32, differentiable
    mle_loss: torch.Tensor  # L2
    unlikelihood_loss: torch.Tensor  # L1: the whole Misalign term (MLE on normal tokens + UL on U)
    flagged_fraction: torch.Tensor  # |U| / Misalign tokens (0 without negatives)
    flagged_tokens: int
    misalign_tokens: int
    detection: DetectionCounts | None  # ratio rule against known spans; None without span_mask


def response_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of every labelled token, flat in row-major order (T,), and the label mask (B, L-1).

    Only labelled positions reach the float32 cast and the softmax: prompt and padding cost nothing here.
    """
    mask = labels[:, 1:] != IGNORE_INDEX  # (B, L-1)
    selected = logits[:, :-1][mask].float()  # (T, V)
    logp = -F.cross_entropy(selected, labels[:, 1:][mask], reduction="none")  # (T,)
    return logp, mask


def log1m_prob(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(logp)), finite even where the model is certain."""
    return torch.log1p(-logp.exp().clamp(max=1.0 - LOG1M_EPS))


def combine_losses(
    l1: torch.Tensor, l2: torch.Tensor, has_negative: bool | torch.Tensor, combine: Combine
) -> torch.Tensor:
    """L from L1 and L2: scalars (a micro-batch), or per-example vectors and ``has_negative`` flags."""
    if combine == "sum":
        return l1 + l2
    if combine == "mean":
        if isinstance(has_negative, torch.Tensor):
            return torch.where(has_negative, (l1 + l2) / 2, l2)
        return (l1 + l2) / 2 if has_negative else l2
    raise ValueError(f"combine must be 'mean' or 'sum', got {combine!r}")


def row_of_tokens(mask: torch.Tensor) -> torch.Tensor:
    """The row of every labelled token, flat in the order ``response_logprobs`` returns them (T,)."""
    return torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]


def row_means(
    values: torch.Tensor, rows: torch.Tensor, n_rows: int, counts: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-row sum of flat ``values`` over ``counts`` (default: the row's number of values); empty rows 0."""
    sums = values.new_zeros(n_rows).index_add(0, rows, values)
    if counts is None:
        counts = torch.bincount(rows, minlength=n_rows).to(values.dtype)
    return sums / counts.clamp(min=1)


def row_counts(keep: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How many tokens of each row ``keep`` keeps (float, for ``row_means``)."""
    return keep.new_zeros(mask.shape[0], dtype=torch.float32).index_add(0, rows, keep.float())


def check_normalization(normalization: str) -> None:
    if normalization not in ("example", "batch"):
        raise ValueError(f"normalization must be 'example' or 'batch', got {normalization!r}")


def cut_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    misalign_logits: torch.Tensor,
    misalign_labels: torch.Tensor,
    is_negative: torch.Tensor,
    threshold: float = 1.1,
    unlikelihood_weight: float = 1.0,
    gamma: float = 0.0,
    combine: Combine = "mean",
    *,
    span_mask: torch.Tensor | None = None,
    span_known: torch.Tensor | None = None,
    span_mode: str = "ratio",
    mask_after_error: bool = False,
    align_n_weight: float = 1.0,
    normalization: Normalization = "example",
) -> CutLossOutput:
    """CUT loss of one micro-batch; see the module docstring for the equations and the normalization.

    ``span_mask`` [N, L2] bool marks, in Misalign-label coordinates, the response tokens inside a blamed
    span; ``span_known`` [N] bool says which Misalign rows have spans at all (default: every row).
    """
    _check_inputs(logits, labels, misalign_logits, misalign_labels, is_negative, threshold)
    check_normalization(normalization)
    logp, mask = response_logprobs(logits, labels)  # (T,), (B, L-1)
    rows = row_of_tokens(mask)  # (T,)
    on_negative = is_negative[rows]  # (T,) tokens of Align-N rows
    scale = torch.where(on_negative, align_n_weight, 1.0)
    mle_terms = -(logp * scale)  # (T,)

    mis_logp, mis_mask = response_logprobs(misalign_logits, misalign_labels)  # (T2,), (N, L2-1)
    if not torch.equal(mask[is_negative].sum(1), mis_mask.sum(1)):
        raise ValueError(
            "each Align-N row and its Misalign row must label the same number of response tokens "
            f"(got {mask[is_negative].sum(1).tolist()} vs {mis_mask.sum(1).tolist()}); build both from "
            "the same tokenized response (cutalign.cut.collator does)"
        )
    judged = logp[on_negative].detach()  # (T2,) aligned with mis_logp by label order
    ratio_flagged = judged - mis_logp.detach() > math.log(threshold)

    mis_rows = row_of_tokens(mis_mask)  # (T2,)
    span = known = None
    if span_mask is not None:
        span = span_mask[:, 1:][mis_mask]
        row_known = span_known if span_known is not None else torch.ones_like(mis_mask[:, 0])
        known = row_known[mis_rows]
    in_u = select_unlikelihood(ratio_flagged, span, known, span_mode)

    keep = torch.ones_like(in_u)
    if mask_after_error:
        u_rows = torch.zeros_like(mis_mask)
        u_rows[mis_mask] = in_u
        after_first = (u_rows.cumsum(1) > 0)[mis_mask]
        keep = in_u | ~after_first

    weight = unlikelihood_weight * torch.exp(gamma * judged)
    l1_terms = -torch.where(in_u, weight * log1m_prob(mis_logp), mis_logp) * keep  # (T2,)

    if normalization == "batch":
        mle = mle_terms.sum() / max(mle_terms.numel(), 1)
        l1 = l1_terms.sum() / max(int(keep.sum()), 1)
        loss = combine_losses(l1, mle, bool(is_negative.any()), combine)
    else:
        examples = labels.shape[0]
        mle_each = row_means(mle_terms, rows, examples)  # (B,)
        l1_negatives = row_means(l1_terms, mis_rows, mis_mask.shape[0], row_counts(keep, mis_rows, mis_mask))
        l1_each = mle_each.new_zeros(examples).index_put((is_negative.nonzero().squeeze(1),), l1_negatives)
        loss = combine_losses(l1_each, mle_each, is_negative, combine).mean()
        mle = mle_each.mean()
        l1 = l1_negatives.mean() if l1_negatives.numel() else mle.new_zeros(())
    flagged = int(in_u.sum())
    detection = None
    if span is not None and known is not None:
        detection = DetectionCounts.from_masks(ratio_flagged[known], span[known])
    return CutLossOutput(
        loss=loss,
        mle_loss=mle.detach(),
        unlikelihood_loss=l1.detach(),
        flagged_fraction=torch.tensor(flagged / max(mis_logp.numel(), 1)),
        flagged_tokens=flagged,
        misalign_tokens=mis_logp.numel(),
        detection=detection,
    )


def _check_inputs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    misalign_logits: torch.Tensor,
    misalign_labels: torch.Tensor,
    is_negative: torch.Tensor,
    threshold: float,
) -> None:
    if logits.shape[:2] != labels.shape or misalign_logits.shape[:2] != misalign_labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} / labels {tuple(labels.shape)} and misalign_logits "
            f"{tuple(misalign_logits.shape)} / misalign_labels {tuple(misalign_labels.shape)} must agree "
            "on [B, L]"
        )
    if is_negative.dtype != torch.bool or is_negative.shape != labels.shape[:1]:
        raise ValueError(f"is_negative must be a bool tensor of shape [{labels.shape[0]}]")
    negatives = int(is_negative.sum())
    if negatives != misalign_labels.shape[0]:
        raise ValueError(f"{negatives} negative rows but {misalign_labels.shape[0]} Misalign rows")
    if threshold <= 0:
        raise ValueError(f"threshold λ must be positive, got {threshold}")
