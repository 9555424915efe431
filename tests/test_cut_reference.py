"""The published objective at any micro-batch size.

The authors trained with micro-batch 1 on each of 8 GPUs: every example's loss is computed alone (its own
token means, its own "(L1 + L2)/2 if it is a negative") and DDP averages the 8 gradients. Below, that
computation is re-implemented from the reference code's description (docs/method.md §4: the judged row and the
Misalign row concatenated into ONE forward, probabilities by softmax, NLL of the judged row, the ratio rule on
detached probabilities, log(1 - p) with 1e-5 added where p == 0), and compared with the trainer's batched
pieces (tokenizer, collator, objective, ``backward_micro_batch``) on a real model: micro-batch 8 in one
backward, micro-batch 1 x 8 accumulation steps, and 2 x 4, all under the default ``normalization="example"``.
The earlier per-micro-batch normalization (``batch``) is measured too, to show the comparison can fail.
"""

from __future__ import annotations

import math

import pytest
import torch

from cutalign.cut.collator import CutCollator, ExampleTokenizer, TokenizedExample
from cutalign.cut.examples import CutExample
from cutalign.cut.objectives import CutObjective, backward_micro_batch, forward_logits
from cutalign.modelinit import build_char_tokenizer, build_model
from trainer_support import CORPUS, TINY, arithmetic_records

TOK = build_char_tokenizer(CORPUS)


def _examples() -> list[TokenizedExample]:
    tokenize = ExampleTokenizer(TOK, "short")
    out = []
    for r in arithmetic_records(8):
        # responses of different lengths, so token means and example means differ
        response = r["output"] + " ok" * (int(r["id"][2:]) % 4)
        out.append(
            tokenize(
                CutExample(
                    r["id"], r["instruction"], "", response, r["judgment"] or "", r["judgment"] is None
                )
            )
        )
    assert 0 < sum(e.positive for e in out) < len(out)
    return out


def _model(seed: int = 3) -> torch.nn.Module:
    model = build_model(TOK, TINY, seed=seed).train()
    with torch.no_grad():
        for p in model.parameters():  # a random init predicts nearly uniformly; sharpen it so detection fires
            p.mul_(4.0)
    return model


def _gradient(model: torch.nn.Module) -> torch.Tensor:
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return grad


def _reference_example_loss(
    model: torch.nn.Module, ex: TokenizedExample, threshold: float, alpha: float
) -> torch.Tensor:
    """One example as the reference code computes it at micro-batch 1."""
    first = list(ex.plain_ids if ex.positive else ex.judged_ids)
    second = list(ex.plain_ids) if not ex.positive else [TOK.pad_token_id]
    length = max(len(first), len(second))
    ids = torch.full((2, length), TOK.pad_token_id)
    attention = torch.zeros((2, length), dtype=torch.long)
    labels = torch.full((2, length), -100)
    for row, seq in enumerate([first, second]):
        ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
        if row == 0 or not ex.positive:
            labels[row, len(seq) - ex.response_len : len(seq)] = torch.tensor(seq[-ex.response_len :])
    probs = torch.softmax(model(input_ids=ids, attention_mask=attention).logits.float(), dim=-1)
    shift_probs, shift_labels = probs[:, :-1], labels[:, 1:]
    mask = shift_labels[0] != -100
    p_first = shift_probs[0][mask].gather(-1, shift_labels[0][mask].unsqueeze(-1)).squeeze(-1)
    mle = -torch.log(p_first).mean()
    if ex.positive:
        return mle
    mask_neg = shift_labels[1] != -100
    p_plain = shift_probs[1][mask_neg].gather(-1, shift_labels[1][mask_neg].unsqueeze(-1)).squeeze(-1)
    flagged = (p_first / p_plain).detach() > threshold
    p = torch.where(flagged, 1 - p_plain, p_plain)
    p = torch.where(p == 0, p + 1e-5, p)
    log_p = torch.log(p)
    log_p = torch.where(flagged, alpha * log_p, log_p)
    unlikelihood = -log_p.sum() / log_p.numel()
    return (unlikelihood + mle) / 2


def _reference_gradient(model: torch.nn.Module, data: list[TokenizedExample], lam: float, alpha: float):
    for ex in data:  # 8 ranks x micro-batch 1, DDP averages their gradients
        (_reference_example_loss(model, ex, lam, alpha) / len(data)).backward()
    return _gradient(model)


def _trainer_gradient(
    model: torch.nn.Module, data: list[TokenizedExample], micro: int, objective: CutObjective
) -> tuple[torch.Tensor, int]:
    collate = CutCollator(objective.plan, TOK.pad_token_id)
    accum = len(data) // micro
    flagged = 0
    for start in range(0, len(data), micro):
        out = backward_micro_batch(
            model, objective, collate(data[start : start + micro]), fuse=False, scale=1 / accum
        )
        flagged += out.flagged_tokens
    return _gradient(model), flagged


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


@pytest.mark.parametrize(("lam", "alpha"), [(1.1, 1.0), (1.2, 0.5)])
def test_any_micro_batch_gives_the_published_micro_batch_one_gradient(lam: float, alpha: float) -> None:
    model, data = _model(), _examples()
    reference = _reference_gradient(model, data, lam, alpha)
    objective = CutObjective(threshold=lam, unlikelihood_weight=alpha)
    cosines, grads = {}, {}
    for micro in (8, 2, 1):
        grads[micro], flagged = _trainer_gradient(model, data, micro, objective)
        grad = grads[micro]
        assert flagged > 0, "detection never fired: the comparison would not exercise unlikelihood"
        cosines[micro] = _cosine(grad, reference)
        relative = float((grad - reference).norm() / reference.norm())
        print(
            f"λ={lam} α={alpha} micro-batch {micro} x {8 // micro}: cosine to reference "
            f"{cosines[micro]:.8f}, "
            f"relative difference {relative:.2e}"
        )
        assert cosines[micro] >= 0.9999 and relative < 1e-4
    invariance = _cosine(grads[8], grads[1])
    print(f"λ={lam} α={alpha} micro-batch 8 vs micro-batch 1 x 8 accumulation: cosine {invariance:.8f}")
    assert invariance >= 0.9999
    batch_grad, _ = _trainer_gradient(
        model, data, 8, CutObjective(threshold=lam, unlikelihood_weight=alpha, normalization="batch")
    )
    batch_cosine = _cosine(batch_grad, reference)
    print(f"λ={lam} α={alpha} normalization=batch, micro-batch 8: cosine to reference {batch_cosine:.4f}")
    assert batch_cosine < 0.99  # the old per-micro-batch rule is a different objective


def test_per_example_loss_value_matches_the_reference() -> None:
    model, data = _model(seed=5).eval(), _examples()
    objective = CutObjective()
    collate = CutCollator(objective.plan, TOK.pad_token_id)
    with torch.no_grad():
        reference = sum(_reference_example_loss(model, ex, 1.1, 1.0).item() for ex in data) / len(data)
        batch = collate(data)
        ours = objective.loss(*forward_logits(model, batch, fuse=False), batch).loss.item()
    print(f"micro-batch 8 loss {ours:.7f}, reference mean of 8 micro-batch-1 losses {reference:.7f}")
    assert math.isclose(ours, reference, rel_tol=1e-5)
