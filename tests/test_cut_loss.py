"""cut_loss against an independent float64 implementation written from the formulas of docs/method.md, and
against hand-computed values on tiny cases with known probabilities."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cutalign.cut.loss import cut_loss

torch.set_num_threads(1)


# -- an independent implementation: per-token loops over the formulas of docs/method.md §3-§4 ----------------


def reference_cut(
    logits,
    labels,
    mis_logits,
    mis_labels,
    is_negative,
    lam,
    alpha,
    gamma,
    combine,
    span=None,
    known=None,
    mode="ratio",
    after_error=False,
    align_n_weight=1.0,
):
    def row_logps(lg, lb, b):
        lsm = torch.log_softmax(lg[b], dim=-1)
        return [lsm[t - 1, lb[b, t]] for t in range(1, lb.shape[1]) if lb[b, t] != -100]

    def row_positions(lb, b):
        return [t for t in range(1, lb.shape[1]) if lb[b, t] != -100]

    mle_terms, count = [], 0
    judged_rows = []
    for b in range(labels.shape[0]):
        lps = row_logps(logits, labels, b)
        c = align_n_weight if is_negative[b] else 1.0
        mle_terms += [c * v for v in lps]
        count += len(lps)
        if is_negative[b]:
            judged_rows.append(lps)
    l2 = -sum(mle_terms) / count

    l1_terms, kept = [], 0
    for k, judged in enumerate(judged_rows):
        plain = row_logps(mis_logits, mis_labels, k)
        positions = row_positions(mis_labels, k)
        assert len(plain) == len(judged)
        seen_u = False
        for pj, pp, pos in zip(judged, plain, positions, strict=True):
            ratio = math.exp(pj.item()) / math.exp(pp.item())
            r_flag = ratio > lam
            if span is not None and bool(known[k]):
                s = bool(span[k, pos])
                u = {"ratio": r_flag, "span": s, "union": r_flag or s, "intersection": r_flag and s}[mode]
            else:
                u = r_flag
            if after_error and seen_u and not u:
                continue
            seen_u = seen_u or u
            kept += 1
            if u:
                w = alpha * math.exp(pj.item()) ** gamma
                p = torch.exp(pp).clamp(max=1 - 1e-5)
                l1_terms.append(w * torch.log(1 - p))
            else:
                l1_terms.append(pp)
    l1 = -sum(l1_terms) / kept if kept else torch.zeros((), dtype=torch.float64)
    if combine == "sum":
        return l1 + l2, l1, l2
    return ((l1 + l2) / 2 if any(is_negative) else l2), l1, l2


def reference_per_example(logits, labels, mis_logits, mis_labels, is_negative, span=None, known=None, **kw):
    """``normalization="example"``: each example alone through ``reference_cut``, the results averaged (L2
    over every example, L1 over the negatives)."""
    losses, l1s, l2s = [], [], []
    k = 0
    for b, negative in enumerate(is_negative):
        mis = slice(k, k + 1) if negative else slice(k, k)
        k += int(negative)
        loss, l1, l2 = reference_cut(
            logits[b : b + 1],
            labels[b : b + 1],
            mis_logits[mis],
            mis_labels[mis],
            [negative],
            span=None if span is None else span[mis],
            known=None if known is None else known[mis],
            **kw,
        )
        losses.append(loss)
        l2s.append(l2)
        if negative:
            l1s.append(l1)
    l1 = sum(l1s) / len(l1s) if l1s else torch.zeros((), dtype=torch.float64)
    return sum(losses) / len(losses), l1, sum(l2s) / len(l2s)


# -- random cases: variable prompt/response lengths, padding, Misalign rows with their own prompts ---------


def make_case(seed: int, negatives: list[bool], vocab: int = 11):
    g = torch.Generator().manual_seed(seed)

    def rand(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    responses = [torch.randint(0, vocab, (rand(1, 5),), generator=g) for _ in negatives]
    judged_prompts = [rand(1, 6) for _ in negatives]
    plain_prompts = [rand(1, 3) for _ in negatives]
    length = max(p + len(r) for p, r in zip(judged_prompts, responses, strict=True)) + rand(0, 3)
    labels = torch.full((len(negatives), length), -100)
    for b, (p, r) in enumerate(zip(judged_prompts, responses, strict=True)):
        labels[b, p : p + len(r)] = r
    neg_idx = [b for b, n in enumerate(negatives) if n]
    length2 = max([plain_prompts[b] + len(responses[b]) for b in neg_idx], default=1) + rand(0, 2)
    mis_labels = torch.full((len(neg_idx), length2), -100)
    for k, b in enumerate(neg_idx):
        p = plain_prompts[b]
        mis_labels[k, p : p + len(responses[b])] = responses[b]
    logits = torch.randn(len(negatives), length, vocab, generator=g, dtype=torch.float64) * 2
    mis_logits = torch.randn(len(neg_idx), length2, vocab, generator=g, dtype=torch.float64) * 2
    # make some response tokens much likelier with the judgment, so every branch of detection is exercised
    for b in neg_idx:
        for j, tok in enumerate(responses[b][::2].tolist()):
            logits[b, judged_prompts[b] + 2 * j - 1, tok] += 3.0
    span = torch.rand(len(neg_idx), length2, generator=g) < 0.4
    known = torch.rand(len(neg_idx), generator=g) < 0.7
    return logits, labels, mis_logits, mis_labels, torch.tensor(negatives), span, known


BATCHES = [
    [True, False, True, True],
    [False, False, False],
    [True],
    [False, True],
    [True, True, False, False, True],
]
OPTIONS = [
    dict(threshold=1.1, unlikelihood_weight=1.0, gamma=0.0, combine="mean"),
    dict(threshold=1.2, unlikelihood_weight=0.5, gamma=0.0, combine="sum"),
    dict(threshold=1.1, unlikelihood_weight=1.0, gamma=1.0, combine="mean"),
    dict(threshold=1.05, unlikelihood_weight=0.7, gamma=2.5, combine="sum"),
    dict(threshold=1.1, span_mode="span", with_span=True),
    dict(threshold=1.1, span_mode="union", with_span=True, combine="sum"),
    dict(threshold=1.1, span_mode="intersection", with_span=True, gamma=0.5),
    dict(threshold=1.1, mask_after_error=True),
    dict(threshold=1.1, span_mode="span", with_span=True, mask_after_error=True),
    dict(threshold=1.1, align_n_weight=0.3),
    dict(threshold=1.1, align_n_weight=0.0, combine="sum"),
]


@pytest.mark.parametrize("normalization", ["example", "batch"])
@pytest.mark.parametrize(("batch", "options"), list(itertools.product(range(len(BATCHES)), OPTIONS)))
def test_matches_independent_implementation_values_and_gradients(
    batch: int, options: dict, normalization: str
) -> None:
    opts = dict(options)
    with_span = opts.pop("with_span", False)
    logits64, labels, mis64, mis_labels, is_neg, span, known = make_case(100 + batch, BATCHES[batch])
    ref_logits = logits64.clone().requires_grad_()
    ref_mis = mis64.clone().requires_grad_()
    reference = reference_per_example if normalization == "example" else reference_cut
    ref_loss, ref_l1, ref_l2 = reference(
        ref_logits,
        labels,
        ref_mis,
        mis_labels,
        is_neg.tolist(),
        lam=opts.get("threshold", 1.1),
        alpha=opts.get("unlikelihood_weight", 1.0),
        gamma=opts.get("gamma", 0.0),
        combine=opts.get("combine", "mean"),
        span=span if with_span else None,
        known=known if with_span else None,
        mode=opts.get("span_mode", "ratio"),
        after_error=opts.get("mask_after_error", False),
        align_n_weight=opts.get("align_n_weight", 1.0),
    )
    ref_loss.backward()

    logits = logits64.float().requires_grad_()
    mis = mis64.float().requires_grad_()
    extra = dict(span_mask=span, span_known=known) if with_span else {}
    out = cut_loss(logits, labels, mis, mis_labels, is_neg, **opts, **extra, normalization=normalization)
    out.loss.backward()

    assert out.loss.dtype == torch.float32 and out.loss.dim() == 0
    assert out.loss.item() == pytest.approx(ref_loss.detach().item(), rel=1e-5, abs=1e-6)
    assert out.mle_loss.item() == pytest.approx(ref_l2.detach().item(), rel=1e-5, abs=1e-6)
    assert out.unlikelihood_loss.item() == pytest.approx(ref_l1.detach().item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(logits.grad, ref_logits.grad.float(), rtol=1e-4, atol=1e-6)
    if mis.numel():
        torch.testing.assert_close(mis.grad, ref_mis.grad.float(), rtol=1e-4, atol=1e-6)


def test_bf16_logits_give_a_float32_loss() -> None:
    logits64, labels, mis64, mis_labels, is_neg, _, _ = make_case(7, [True, False])
    out = cut_loss(logits64.bfloat16(), labels, mis64.bfloat16(), mis_labels, is_neg)
    ref = cut_loss(logits64.bfloat16().float(), labels, mis64.bfloat16().float(), mis_labels, is_neg)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)


# -- hand-computed cases: V=2, logits [0, z] give p(token 1) = sigmoid(z) ----------------------------------


def _two_way(p1: float) -> list[float]:
    return [0.0, math.log(p1 / (1 - p1))]


def _tiny_negative_batch(p_judged: tuple[float, float], p_plain: tuple[float, float]):
    """One negative: response = token 1, then EOS (token 0); Align-N prompt 2 tokens, Misalign prompt 1."""
    labels = torch.tensor([[-100, -100, 1, 0]])
    logits = torch.zeros(1, 4, 2)
    logits[0, 1] = torch.tensor(_two_way(p_judged[0]))  # predicts token 1
    logits[0, 2] = torch.tensor(_two_way(1 - p_judged[1]))  # predicts EOS = token 0 with p_judged[1]
    mis_labels = torch.tensor([[-100, 1, 0]])
    mis = torch.zeros(1, 3, 2)
    mis[0, 0] = torch.tensor(_two_way(p_plain[0]))
    mis[0, 1] = torch.tensor(_two_way(1 - p_plain[1]))
    return logits, labels, mis, mis_labels, torch.tensor([True])


def test_hand_computed_negative_with_one_flagged_token() -> None:
    # p_j(y1)=0.8, p(y1)=0.4: ratio 2 > 1.1 flagged; EOS 0.5 vs 0.5: ratio 1, kept as MLE
    out = cut_loss(*_tiny_negative_batch((0.8, 0.5), (0.4, 0.5)))
    l1 = -(math.log(1 - 0.4) + math.log(0.5)) / 2
    l2 = -(math.log(0.8) + math.log(0.5)) / 2
    assert out.unlikelihood_loss.item() == pytest.approx(l1, rel=1e-6)
    assert out.mle_loss.item() == pytest.approx(l2, rel=1e-6)
    assert out.loss.item() == pytest.approx((l1 + l2) / 2, rel=1e-6)
    assert out.flagged_fraction.item() == pytest.approx(0.5)


def test_hand_computed_gamma_alpha_and_paper_sum() -> None:
    out = cut_loss(
        *_tiny_negative_batch((0.8, 0.5), (0.4, 0.5)), unlikelihood_weight=0.5, gamma=2.0, combine="sum"
    )
    l1 = -(0.5 * 0.8**2 * math.log(0.6) + math.log(0.5)) / 2
    l2 = -(math.log(0.8) + math.log(0.5)) / 2
    assert out.loss.item() == pytest.approx(l1 + l2, rel=1e-6)


def test_hand_computed_threshold_boundary() -> None:
    # ratio 0.66/0.6 = 1.1 exactly is not flagged (strict >); 0.67/0.6 is
    out = cut_loss(*_tiny_negative_batch((0.66, 0.5), (0.6, 0.5)), threshold=1.1 + 1e-6)
    assert out.flagged_tokens == 0
    out = cut_loss(*_tiny_negative_batch((0.67, 0.5), (0.6, 0.5)), threshold=1.1)
    assert out.flagged_tokens == 1


def test_hand_computed_positive_only_batch_and_its_gradient() -> None:
    labels = torch.tensor([[-100, 1]])
    logits = torch.zeros(1, 2, 2)
    logits[0, 0] = torch.tensor(_two_way(0.25))
    logits.requires_grad_()
    empty = torch.zeros(0, 3, 2)
    out = cut_loss(logits, labels, empty, torch.zeros(0, 3, dtype=torch.long), torch.tensor([False]))
    assert out.loss.item() == pytest.approx(-math.log(0.25), rel=1e-6)  # L = L2 without negatives
    assert out.unlikelihood_loss.item() == 0.0 and out.flagged_fraction.item() == 0.0
    out.loss.backward()
    # d(-log softmax_1)/dlogits = softmax - onehot(1) = [0.75, 0.25 - 1]
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([0.75, -0.75]))
    assert logits.grad[0, 1].abs().sum() == 0
    summed = cut_loss(
        logits, labels, empty, torch.zeros(0, 3, dtype=torch.long), torch.tensor([False]), combine="sum"
    )
    assert summed.loss.item() == pytest.approx(-math.log(0.25), rel=1e-6)


def test_certain_token_in_u_stays_finite() -> None:
    logits, labels, mis, mis_labels, neg = _tiny_negative_batch((0.9, 0.5), (0.5, 0.5))
    logits[0, 1] = torch.tensor([-200.0, 200.0])  # p_j = 1
    mis[0, 0] = torch.tensor([-30.0, 30.0])  # p = 1 - 1e-26: ratio ~1, not flagged
    mis.requires_grad_()
    out = cut_loss(
        logits, labels, mis, mis_labels, neg, span_mask=torch.tensor([[False, True, False]]), span_mode="span"
    )
    out.loss.backward()
    assert out.flagged_tokens == 1
    assert math.isfinite(out.loss.item()) and torch.isfinite(mis.grad).all()
    assert out.unlikelihood_loss.item() == pytest.approx(-(math.log(1e-5) + math.log(0.5)) / 2, rel=1e-3)


def test_mismatched_response_lengths_are_refused() -> None:
    logits, labels, mis, mis_labels, neg = _tiny_negative_batch((0.8, 0.5), (0.4, 0.5))
    mis_labels[0, 1] = -100
    with pytest.raises(ValueError, match="same number of response tokens"):
        cut_loss(logits, labels, mis, mis_labels, neg)
    with pytest.raises(ValueError, match="Misalign rows"):
        cut_loss(logits, labels, mis, mis_labels, torch.tensor([False]))
    with pytest.raises(ValueError, match="needs error spans"):
        cut_loss(logits, labels, mis, torch.tensor([[-100, 1, 0]]), neg, span_mode="span")
