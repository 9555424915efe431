"""The baseline objectives on hand-computable logits (uniform: every token has p = 1/V)."""

from __future__ import annotations

import math

import pytest
import torch

from cutalign.config import TrainerSettings
from cutalign.cut.collator import CutCollator, ExampleTokenizer
from cutalign.cut.examples import CutExample
from cutalign.cut.objectives import (
    CutObjective,
    HindsightObjective,
    SftObjective,
    UnlikelihoodObjective,
    make_objective,
)
from cutalign.modelinit import build_char_tokenizer
from trainer_support import CORPUS

TOK = build_char_tokenizer(CORPUS)
V = len(TOK)
TOKENIZE = ExampleTokenizer(TOK, "short")
POS = TOKENIZE(CutExample("p", "say a", "", "a", "", True))
NEG = TOKENIZE(CutExample("n", "say b", "", "c", "wrong: say b", False))


def _uniform(rows):
    return None if rows is None else torch.zeros(*rows.labels.shape, V, requires_grad=True)


def _loss(objective, examples):
    batch = CutCollator(objective.plan, TOK.pad_token_id)(examples)
    return objective.loss(_uniform(batch.mle), _uniform(batch.misalign), batch)


def test_sft_and_hindsight_are_token_mean_mle() -> None:
    assert _loss(SftObjective(), [POS]).loss.item() == pytest.approx(math.log(V))
    hindsight = _loss(HindsightObjective(), [POS, NEG])
    assert hindsight.loss.item() == pytest.approx(math.log(V)) and hindsight.unlikelihood == 0.0


@pytest.mark.parametrize("normalization", ["example", "batch"])
@pytest.mark.parametrize("combine", ["mean", "sum"])
def test_unlikelihood_on_every_negative_token(combine: str, normalization: str) -> None:
    objective = UnlikelihoodObjective(unlikelihood_weight=0.5, combine=combine, normalization=normalization)
    out = _loss(objective, [POS, NEG])
    l1, l2 = -0.5 * math.log(1 - 1 / V), math.log(V)
    assert out.unlikelihood == pytest.approx(l1) and out.mle == pytest.approx(l2)
    if normalization == "example":  # a positive's loss is its L2, a negative's its L1: averaged
        assert out.loss.item() == pytest.approx((l1 + l2) / 2)
    else:
        assert out.loss.item() == pytest.approx((l1 + l2) / 2 if combine == "mean" else l1 + l2)
    assert out.flagged_tokens == out.misalign_tokens == 2  # "c" and EOS
    assert _loss(objective, [NEG]).loss.item() == pytest.approx(l1)  # negatives only: no MLE rows at all
    assert _loss(objective, [POS]).loss.item() == pytest.approx(l2)


def test_settings_choose_the_objective_and_its_options() -> None:
    cut = make_objective(TrainerSettings(threshold=1.2, unlikelihood_weight=0.5, span_mode="union"))
    assert cut == CutObjective(threshold=1.2, unlikelihood_weight=0.5, span_mode="union")
    assert make_objective(TrainerSettings(objective="sft")) == SftObjective()
    assert make_objective(TrainerSettings(objective="hindsight")) == HindsightObjective()
    assert make_objective(TrainerSettings(objective="unlikelihood", combine="sum")) == UnlikelihoodObjective(
        combine="sum"
    )
