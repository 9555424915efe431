"""How well the ratio-based detection finds the tokens a judge blames (docs/method.md §8).

CUT's unlikelihood set U is chosen by ``p(y_t | x, j) / p(y_t | x) > λ``. That rule assumes the model reads
judgments well; a tiny model often does not, and then U misses the wrong token and flags correct ones. When
the judge names the error as character spans, the span tokens are ground truth and we can *measure* U:

    precision             = |U ∩ S| / |U|          (flagged tokens that are inside a blamed span)
    recall                = |U ∩ S| / |S|          (blamed tokens that were flagged)
    flagged_outside_spans = |U \\ S| / |¬S|         (correct tokens wrongly pushed down)

The counts are kept as sums so they add up over micro-batches and ranks before the ratios are taken; a ratio
whose denominator is zero is undefined and left out rather than reported as 0 or 1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

SPAN_MODES = ("ratio", "span", "union", "intersection")


@dataclass
class DetectionCounts:
    """Token counts over the Misalign response tokens of examples whose error spans are known."""

    flagged: float = 0.0
    span: float = 0.0
    hit: float = 0.0
    outside_flagged: float = 0.0
    outside: float = 0.0

    @classmethod
    def from_masks(cls, flagged: torch.Tensor, span: torch.Tensor) -> DetectionCounts:
        """``flagged`` and ``span`` are equal-shaped bool tensors over the same (known-span) tokens."""
        outside = ~span
        return cls(
            flagged=float(flagged.sum()),
            span=float(span.sum()),
            hit=float((flagged & span).sum()),
            outside_flagged=float((flagged & outside).sum()),
            outside=float(outside.sum()),
        )

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def as_tensor(self) -> torch.Tensor:
        """For an all-reduce across ranks (float64 so counts stay exact)."""
        return torch.tensor([getattr(self, f.name) for f in fields(self)], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> DetectionCounts:
        return cls(*(float(v) for v in t.tolist()))

    def metrics(self) -> dict[str, float]:
        """The ``detection/*`` metrics that are defined for these counts."""
        out: dict[str, float] = {}
        if self.flagged > 0:
            out["detection/precision"] = self.hit / self.flagged
        if self.span > 0:
            out["detection/recall"] = self.hit / self.span
        if self.outside > 0:
            out["detection/flagged_outside_spans"] = self.outside_flagged / self.outside
        return out


def select_unlikelihood(
    ratio_flagged: torch.Tensor, span: torch.Tensor | None, span_known: torch.Tensor | None, mode: str
) -> torch.Tensor:
    """The tokens that get unlikelihood, per ``span_mode`` (flat bool tensors over Misalign tokens).

    ``ratio`` is the method as published; ``span`` trusts the judge's spans alone; ``union``/``intersection``
    combine both. Tokens of examples without known spans always fall back to the ratio rule: treating "no
    span given" as "nothing is wrong" would train plain MLE on a response the judge rejected.
    """
    if mode not in SPAN_MODES:
        raise ValueError(f"span_mode must be one of {SPAN_MODES}, got {mode!r}")
    if mode == "ratio" or ratio_flagged.numel() == 0:  # (a micro-batch of positives has no Misalign tokens)
        return ratio_flagged
    if span is None or span_known is None:
        raise ValueError(f"span_mode={mode!r} needs error spans: pass span_mask (or use span_mode='ratio')")
    if mode == "span":
        chosen = span
    elif mode == "union":
        chosen = ratio_flagged | span
    else:
        chosen = ratio_flagged & span
    return torch.where(span_known, chosen, ratio_flagged)
