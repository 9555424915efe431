"""Detection quality (issue 8): precision/recall of the ratio rule against known error spans on constructed
cases, and the span_mode / mask_after_error / align_n_weight options."""

from __future__ import annotations

import math

import pytest
import torch

from cutalign.cut.collator import CutCollator, ExampleTokenizer
from cutalign.cut.detection import DetectionCounts, select_unlikelihood
from cutalign.cut.examples import CutExample
from cutalign.cut.loss import cut_loss
from cutalign.cut.objectives import CutObjective
from cutalign.modelinit import build_char_tokenizer
from trainer_support import CORPUS

V = 6
RESPONSE = [1, 2, 3, 4, 0]  # tokens a b c d, then EOS = 0


def _case(boosted: list[int], spans: list[int]):
    """One negative. Judged prompt 2 tokens, plain prompt 1 token. Plain logits are uniform; the judged
    logits raise the response tokens at the ``boosted`` response positions (ratio ~ e^2 / (1 + ...) > 1.1),
    leave the others uniform (ratio exactly 1). ``spans``: response positions the judge blamed."""
    labels = torch.tensor([[-100, -100, *RESPONSE]])
    logits = torch.zeros(1, labels.shape[1], V)
    for k in boosted:
        logits[0, 1 + k, RESPONSE[k]] = 2.0  # position 1+k predicts response token k at 2+k
    mis_labels = torch.tensor([[-100, *RESPONSE, -100]])  # one padding position at the end
    mis_logits = torch.zeros(1, mis_labels.shape[1], V)
    span = torch.zeros_like(mis_labels, dtype=torch.bool)
    for k in spans:
        span[0, 1 + k] = True
    return logits, labels, mis_logits, mis_labels, torch.tensor([True]), span


def test_precision_recall_and_flagged_outside_on_a_known_case() -> None:
    # ratio flags b, c; the judge blamed c, d: one hit of two flags, one of two blamed; b flagged of a, b, EOS
    *tensors, span = _case(boosted=[1, 2], spans=[2, 3])
    out = cut_loss(*tensors, span_mask=span)
    assert out.detection == DetectionCounts(flagged=2, span=2, hit=1, outside_flagged=1, outside=3)
    assert out.detection.metrics() == pytest.approx(
        {"detection/precision": 0.5, "detection/recall": 0.5, "detection/flagged_outside_spans": 1 / 3}
    )


def test_perfect_detection_and_undefined_ratios() -> None:
    *tensors, span = _case(boosted=[3], spans=[3])
    metrics = cut_loss(*tensors, span_mask=span).detection.metrics()
    assert metrics == {
        "detection/precision": 1.0,
        "detection/recall": 1.0,
        "detection/flagged_outside_spans": 0.0,
    }
    *tensors, span = _case(boosted=[], spans=[3])
    metrics = cut_loss(*tensors, span_mask=span).detection.metrics()
    assert "detection/precision" not in metrics  # nothing flagged: precision undefined, not 0 or 1
    assert metrics["detection/recall"] == 0.0


def test_rows_without_known_spans_stay_out_of_detection_and_use_the_ratio_rule() -> None:
    *tensors, span = _case(boosted=[1], spans=[3])
    out = cut_loss(*tensors, span_mask=span, span_known=torch.tensor([False]), span_mode="span")
    assert out.detection == DetectionCounts()
    assert out.flagged_tokens == 1  # b, from the ratio rule, not d from the ignored span


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("ratio", [1, 2]), ("span", [2, 3]), ("union", [1, 2, 3]), ("intersection", [2])],
)
def test_span_modes_choose_the_unlikelihood_tokens(mode: str, expected: list[int]) -> None:
    *tensors, span = _case(boosted=[1, 2], spans=[2, 3])
    out = cut_loss(*tensors, span_mask=span, span_mode=mode)
    assert out.flagged_tokens == len(expected)
    # uniform plain logits: every Misalign token has p = 1/V; U terms are log(1 - 1/V), the others log(1/V)
    n = len(RESPONSE)
    l1 = -(len(expected) * math.log(1 - 1 / V) + (n - len(expected)) * math.log(1 / V)) / n
    assert out.unlikelihood_loss.item() == pytest.approx(l1, rel=1e-6)
    flat = select_unlikelihood(
        torch.tensor([0, 1, 1, 0, 0]).bool(),
        torch.tensor([0, 0, 1, 1, 0]).bool(),
        torch.ones(5, dtype=torch.bool),
        mode,
    )
    assert flat.nonzero().flatten().tolist() == expected


def test_mask_after_error_drops_mle_after_the_first_flagged_token() -> None:
    *tensors, span = _case(boosted=[1], spans=[])
    out = cut_loss(*tensors, mask_after_error=True)
    # a: MLE, b: flagged (UL), c, d, EOS: after the first flagged token, no loss at all
    l1 = -(math.log(1 / V) + math.log(1 - 1 / V)) / 2
    assert out.unlikelihood_loss.item() == pytest.approx(l1, rel=1e-6)
    *tensors, span = _case(boosted=[1, 3], spans=[])
    out = cut_loss(*tensors, mask_after_error=True)  # d is flagged again: it keeps its UL term
    l1 = -(math.log(1 / V) + 2 * math.log(1 - 1 / V)) / 3
    assert out.unlikelihood_loss.item() == pytest.approx(l1, rel=1e-6)


def test_align_n_weight_scales_the_align_n_mle() -> None:
    *tensors, span = _case(boosted=[], spans=[])
    full = cut_loss(*tensors).mle_loss.item()
    assert full == pytest.approx(math.log(V), rel=1e-6)
    assert cut_loss(*tensors, align_n_weight=0.25).mle_loss.item() == pytest.approx(0.25 * full, rel=1e-6)
    assert cut_loss(*tensors, align_n_weight=0.0).mle_loss.item() == 0.0


def test_character_spans_reach_detection_through_the_collator() -> None:
    """Spans given on characters end up on the right tokens: constructed logits flag exactly the span."""
    tok = build_char_tokenizer(CORPUS)
    example = ExampleTokenizer(tok, "short")(
        CutExample("n", "add 2 and 2", "", "2+2=5", "wrong: it is 4", False, error_spans=((4, 5),))
    )
    batch = CutCollator(CutObjective().plan, tok.pad_token_id)([example])
    assert batch.mle is not None and batch.misalign is not None and batch.span_mask is not None
    vocab = len(tok)
    logits = torch.zeros(*batch.mle.labels.shape, vocab)
    five = tok.convert_tokens_to_ids("5")
    row_len = len(example.judged_ids)
    logits[0, row_len - 3, five] = 3.0  # the position predicting "5" (two before EOS's label)
    mis_logits = torch.zeros(*batch.misalign.labels.shape, vocab)
    out = CutObjective().loss(logits, mis_logits, batch)
    assert out.detection is not None
    assert out.detection.metrics() == {
        "detection/precision": 1.0,
        "detection/recall": 1.0,
        "detection/flagged_outside_spans": 0.0,
    }


def test_counts_add_up_over_micro_batches_and_ranks() -> None:
    a = DetectionCounts(flagged=2, span=2, hit=1, outside_flagged=1, outside=3)
    b = DetectionCounts(flagged=1, span=3, hit=1, outside_flagged=0, outside=4)
    total = DetectionCounts.from_tensor(a.as_tensor() + b.as_tensor())
    assert total == a + b
    assert total.metrics() == pytest.approx(
        {"detection/precision": 2 / 3, "detection/recall": 2 / 5, "detection/flagged_outside_spans": 1 / 7}
    )
