"""Tokenization (masking, EOS, left truncation, identical response ids, spans via offsets) and micro-batch
assembly; plus the loss of a collated batch against the reference code's micro-batch-1 layout on a real
model."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from cutalign.cut.collator import CutCollator, ExampleTokenizer, ExampleTooLong, TokenizedExample
from cutalign.cut.examples import CutExample
from cutalign.cut.loss import cut_loss
from cutalign.cut.objectives import (
    CutObjective,
    HindsightObjective,
    SftObjective,
    UnlikelihoodObjective,
    forward_logits,
)
from cutalign.modelinit import build_char_tokenizer, build_model
from cutalign.templates import Template, get_template
from trainer_support import CORPUS, TINY

torch.set_num_threads(1)
TOK = build_char_tokenizer(CORPUS)
EOS = TOK.eos_token_id


def _ids(text: str, special: bool = False) -> list[int]:
    return TOK(text, add_special_tokens=special)["input_ids"]


def _neg(sid: str = "n", response: str = "2+2=5", spans: tuple[tuple[int, int], ...] = ()) -> CutExample:
    return CutExample(sid, "add 2 and 2", "", response, "wrong: 2+2 is 4", False, spans)


def _pos(sid: str = "p", response: str = "1+1=2") -> CutExample:
    return CutExample(sid, "add 1 and 1", "", response, "", True)


def test_prompt_is_masked_response_and_eos_trained() -> None:
    example = _neg()
    tok = ExampleTokenizer(TOK, "short", cutoff=256)(example)
    plain = get_template("short").format_plain(example.instruction)
    judged = get_template("short").format_judged(example.instruction, example.judgment)
    response = [*_ids("2+2=5"), EOS]
    assert tok.plain_ids == (TOK.bos_token_id, *_ids(plain), *response)
    assert tok.judged_ids == (TOK.bos_token_id, *_ids(judged), *response)
    assert tok.response_len == len(response) and tok.span_mask is None
    batch = CutCollator(CutObjective().plan, TOK.pad_token_id)([tok])
    assert batch.mle is not None and batch.misalign is not None
    labelled = batch.mle.labels[0][batch.mle.labels[0] != -100].tolist()
    assert labelled == response
    assert batch.misalign.labels[0][batch.misalign.labels[0] != -100].tolist() == response


def test_positive_under_the_judgment_prompt_reads_perfect() -> None:
    tok = ExampleTokenizer(TOK, "short")(_pos())
    assert tok.judged_ids[1 : -tok.response_len] == tuple(_ids("Q: add 1 and 1\nJ: Perfect\nA: "))


def test_left_truncation_keeps_bos_and_the_whole_response() -> None:
    example = CutExample("long", "x" * 100, "", "abc", "bad", False)
    tok = ExampleTokenizer(TOK, "plain", cutoff=20)(example)
    for ids in (tok.plain_ids, tok.judged_ids):
        assert len(ids) == 20
        assert ids[0] == TOK.bos_token_id
        assert ids[-4:] == (*_ids("abc"), EOS)
        assert ids[-5] == _ids("\n")[0]  # the end of "### Response:\n" survives, its start is cut
    short = ExampleTokenizer(TOK, "plain", cutoff=4)
    assert not short.fits(example) and ExampleTokenizer(TOK, "plain", cutoff=5).fits(example)
    with pytest.raises(ExampleTooLong, match=r"sample 'long'.*no room for the prompt within cutoff=4"):
        short(example)


def _merging_tokenizer(merges: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    chars = sorted(set(CORPUS))
    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", *chars, *("".join(m) for m in merges)])}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=merges)),
        eos_token="</s>",
        pad_token="<pad>",
    )


def test_no_merge_crosses_the_prompt_response_boundary() -> None:
    # jointly, "x" + "ab" would merge into "xa", "y" + "ab" would not; tokenized apart, the prompt keeps its
    # own ids (as a server encodes it) and the response is the same ids after both prompts
    merging = _merging_tokenizer([("x", "a")])
    tokenizer = ExampleTokenizer(merging, Template(plain="P x", judged="J y"))
    tok = tokenizer(CutExample("n", "i", "", "ab", "bad", False))
    assert tok.plain_ids[: -tok.response_len] == tuple(merging("P x")["input_ids"])
    assert tok.plain_ids[-tok.response_len :] == tok.judged_ids[-tok.response_len :]
    assert tok.plain_ids[-tok.response_len :] == (*merging("ab", add_special_tokens=False)["input_ids"], 1)


def test_error_spans_become_token_masks_through_offsets() -> None:
    char_level = ExampleTokenizer(TOK, "short")(_neg(response="2+2=5", spans=((4, 5),)))
    assert char_level.span_mask == (False, False, False, False, True, False)  # "5" blamed, EOS never
    merged = ExampleTokenizer(_merging_tokenizer([("a", "b")]), "short")(
        _neg(response="cabd", spans=((2, 3),))
    )
    assert merged.span_mask == (False, True, False, False)  # token "ab" overlaps the span on "b"


def _tokenized() -> list[TokenizedExample]:
    tokenize = ExampleTokenizer(TOK, "short")
    return [
        tokenize(_pos("p1")),
        tokenize(_neg("n1", "2+2=5", ((4, 5),))),
        tokenize(_pos("p2", "1+1=2, surely")),
        tokenize(_neg("n2", "4")),
        tokenize(_neg("n3", "2+2=22", ((4, 6),))),
    ]


def test_collator_rows_padding_pairing_and_spans() -> None:
    examples = _tokenized()
    batch = CutCollator(CutObjective().plan, TOK.pad_token_id)(examples)
    assert batch.mle is not None and batch.misalign is not None
    assert batch.mle.input_ids.shape[0] == 5 and batch.misalign.input_ids.shape[0] == 3
    assert batch.mle.input_ids.shape[1] % 8 == 0 and batch.misalign.input_ids.shape[1] % 8 == 0
    assert batch.is_negative.tolist() == [False, True, False, True, True]
    for row, ex in enumerate(examples):
        ids = ex.plain_ids if ex.positive else ex.judged_ids
        assert batch.mle.input_ids[row, : len(ids)].tolist() == list(ids)
        assert (batch.mle.input_ids[row, len(ids) :] == TOK.pad_token_id).all()
        assert batch.mle.attention_mask[row].sum() == len(ids)
    for row, ex in enumerate(e for e in examples if not e.positive):
        assert batch.misalign.input_ids[row, : len(ex.plain_ids)].tolist() == list(ex.plain_ids)
    assert batch.span_known is not None and batch.span_known.tolist() == [True, False, True]
    assert batch.span_mask is not None
    blamed = batch.misalign.labels[batch.span_mask]
    assert blamed.tolist() == [*_ids("5"), *_ids("22")]
    assert batch.tokens == batch.mle.tokens + batch.misalign.tokens


@pytest.mark.parametrize("size", [1, 2, 5])
def test_any_micro_batch_size_and_no_misalign_rows_without_negatives(size: int) -> None:
    examples = _tokenized()[:size]
    batch = CutCollator(CutObjective().plan, TOK.pad_token_id)(examples)
    negatives = sum(not e.positive for e in examples)
    assert batch.examples == size and int(batch.is_negative.sum()) == negatives
    assert (batch.misalign is None) == (negatives == 0)


def test_row_plans_of_the_baselines() -> None:
    examples = _tokenized()
    sft = CutCollator(SftObjective().plan, TOK.pad_token_id)([e for e in examples if e.positive])
    assert sft.mle is not None and sft.mle.input_ids.shape[0] == 2 and sft.misalign is None
    hindsight = CutCollator(HindsightObjective().plan, TOK.pad_token_id)(examples)
    assert hindsight.mle is not None and hindsight.misalign is None
    assert hindsight.mle.input_ids[0, : len(examples[0].judged_ids)].tolist() == list(examples[0].judged_ids)
    ul = CutCollator(UnlikelihoodObjective().plan, TOK.pad_token_id)(examples)
    assert ul.mle is not None and ul.mle.input_ids.shape[0] == 2
    assert ul.misalign is not None and ul.misalign.input_ids.shape[0] == 3
    assert not ul.is_negative.any()


def _reference_layout_loss(model: torch.nn.Module, ex: TokenizedExample) -> float:
    """The reference code: micro-batch 1, the judged row and a Misalign row (all padding for a positive)
    concatenated and run as ONE forward."""
    judged = list(ex.plain_ids if ex.positive else ex.judged_ids)
    misalign = [] if ex.positive else list(ex.plain_ids)
    length = max(len(judged), len(misalign))
    ids = torch.full((2, length), TOK.pad_token_id)
    labels = torch.full((2, length), -100)
    attention = torch.zeros((2, length), dtype=torch.long)
    for row, seq in enumerate([judged, misalign]):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
        labels[row, len(seq) - ex.response_len : len(seq)] = torch.tensor(seq[len(seq) - ex.response_len :])
    if ex.positive:
        attention[1, 0] = 1  # an all-padding row still needs one attended position
        labels[1] = -100
    logits = model(input_ids=ids, attention_mask=attention).logits
    neg = torch.tensor([not ex.positive])
    mis_logits, mis_labels = (logits[1:], labels[1:]) if not ex.positive else (logits[1:1], labels[1:1])
    return cut_loss(logits[:1], labels[:1], mis_logits, mis_labels, neg).loss.item()


@torch.no_grad()
def test_collated_loss_equals_the_reference_layout_and_fusing_changes_nothing() -> None:
    model = build_model(TOK, TINY, seed=3).eval()
    torch.manual_seed(0)
    for p in model.parameters():  # a random init predicts nearly uniformly; sharpen it so detection fires
        p.mul_(4.0)
    collate = CutCollator(CutObjective().plan, TOK.pad_token_id)
    objective = CutObjective()
    flagged = 0
    for ex in _tokenized():
        batch = collate([ex])
        ours = objective.loss(*forward_logits(model, batch, fuse=False), batch)
        flagged += ours.flagged_tokens
        assert ours.loss.item() == pytest.approx(_reference_layout_loss(model, ex), rel=1e-5, abs=1e-6)
    assert flagged > 0
    batch = collate(_tokenized())
    split = objective.loss(*forward_logits(model, batch, fuse=False), batch)
    fused = objective.loss(*forward_logits(model, batch, fuse=True), batch)
    assert fused.loss.item() == pytest.approx(split.loss.item(), rel=1e-5)
    assert fused.flagged_tokens == split.flagged_tokens
