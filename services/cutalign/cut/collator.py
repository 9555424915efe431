"""From judged examples to padded tensors: tokenization (docs/method.md §2) and micro-batch assembly (§4).

Tokenization. Each example's prompt (plain and judgment prompt, rendered by ``cutalign.templates``) is
tokenized alone, exactly as a policy server tokenizes the prompt it continues, and its response alone
(``cutalign.templates.encode_response``: special-token text stays text), then joined: so training sees the
prompt ids inference sees, no merge can cross the boundary, and the response is the same token ids after both
prompts by construction. Prompt tokens get label -100; response tokens and the response end token (EOS, or a
chat template's end-of-turn token) are trained. A sequence longer than the cutoff loses prompt tokens from
the left (BOS kept), never response tokens; an example whose response alone does not fit is refused with
``ExampleTooLong`` (``ExampleTokenizer.fits`` tells in advance), which the trainer counts and skips. Character
error spans (Unicode code points of the response) become a per-token mask through the response's offsets.

Batching. Reference CUT runs one Align row and one Misalign row per micro-batch of one and pads a whole
Misalign row even for positives. Here a micro-batch of any size becomes two row groups: ``mle`` (one row per
example the objective trains with MLE) and ``misalign`` (one row per negative only — a batch without negatives
has none), each right-padded to a multiple of 8. Right padding keeps every real token at the same position
whatever the padding, so the two groups can be run as one forward or two with identical results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from cutalign.cut.examples import CutExample, DataError
from cutalign.cut.loss import IGNORE_INDEX
from cutalign.templates import PromptFormat, Template, encode_prompt, encode_response

Context = Literal["plain", "judged"]
POSITIVE_JUDGMENT = "Perfect"  # judgment text for positives under the judgment prompt (judge convention, §6)


class ExampleTooLong(DataError):
    """The response (with its end token) leaves no room for a prompt within the cutoff."""


@dataclass(frozen=True)
class TokenizedExample:
    """Both tokenizations of one example. The last ``response_len`` ids of each are the response + its end."""

    sample_id: str
    positive: bool
    plain_ids: tuple[int, ...]
    judged_ids: tuple[int, ...]
    response_len: int
    span_mask: tuple[bool, ...] | None  # per response token incl. the end token; None = no spans given

    def ids(self, context: Context) -> tuple[int, ...]:
        return self.plain_ids if context == "plain" else self.judged_ids


class ExampleTokenizer:
    """Tokenizes ``CutExample``s for training with one tokenizer, template and cutoff."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, template: str | Template = "plain", cutoff: int = 2048
    ) -> None:
        if not tokenizer.is_fast:
            raise ValueError(
                f"{type(tokenizer).__name__} is a slow tokenizer; the trainer needs offset mappings: "
                "load the "
                "model directory with a tokenizer.json (AutoTokenizer.from_pretrained(..., use_fast=True))"
            )
        self.tokenizer = tokenizer
        self.format = PromptFormat.of(template, tokenizer)
        self.cutoff = cutoff
        self.end_id = self.format.response_end_id

    def response_ids(self, response: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The trained ids of a response (its tokens, then the end token) and its tokens' offsets."""
        ids, offsets = encode_response(self.tokenizer, response)
        return [*ids, self.end_id], offsets

    def fits(self, example: CutExample) -> bool:
        """Whether ``example`` can be trained within the cutoff (its response leaves room for a prompt)."""
        return len(self.response_ids(example.response)[0]) < self.cutoff

    def __call__(self, example: CutExample) -> TokenizedExample:
        plain_prompt = self.format.plain(example.instruction, example.input)
        judgment = (example.judgment.strip() or POSITIVE_JUDGMENT) if example.positive else example.judgment
        judged_prompt = self.format.judged(example.instruction, judgment, example.input)
        response, offsets = self.response_ids(example.response)
        if len(response) >= self.cutoff:
            raise ExampleTooLong(
                f"sample {example.sample_id!r}: the response is {len(response)} tokens with its end token, "
                f"which leaves no room for the prompt within cutoff={self.cutoff}"
            )
        span_mask = None
        if example.error_spans:
            blamed = [any(a < e and b > s for s, e in example.error_spans) for a, b in offsets]
            end = len(example.response)
            blames_eos = any(s == e == end for s, e in example.error_spans)  # "stops too early"
            span_mask = (*blamed, blames_eos)
        return TokenizedExample(
            sample_id=example.sample_id,
            positive=example.positive,
            plain_ids=(
                *self._truncate(encode_prompt(self.tokenizer, plain_prompt), len(response)),
                *response,
            ),
            judged_ids=(
                *self._truncate(encode_prompt(self.tokenizer, judged_prompt), len(response)),
                *response,
            ),
            response_len=len(response),
            span_mask=span_mask,
        )

    def _truncate(self, prompt_ids: list[int], response_len: int) -> list[int]:
        budget = self.cutoff - response_len
        if len(prompt_ids) <= budget:
            return prompt_ids
        bos = self.tokenizer.bos_token_id
        if bos is not None and prompt_ids[0] == bos and budget >= 2:
            return [bos, *prompt_ids[len(prompt_ids) - budget + 1 :]]
        return prompt_ids[len(prompt_ids) - budget :]


# -- micro-batches ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowPlan:
    """Which rows an objective trains on: MLE context per example kind, and Misalign rows for negatives."""

    positive_mle: Context | None
    negative_mle: Context | None
    negative_misalign: bool

    def uses(self, example: TokenizedExample | CutExample) -> bool:
        if example.positive:
            return self.positive_mle is not None
        return self.negative_mle is not None or self.negative_misalign


@dataclass(frozen=True)
class Rows:
    input_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, L)
    labels: torch.Tensor  # (R, L) -100 outside response + EOS

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> Rows:
        return Rows(
            *(t.to(device, non_blocking=True) for t in (self.input_ids, self.attention_mask, self.labels))
        )

    def padded_to(self, length: int, pad_id: int) -> Rows:
        extra = length - self.input_ids.shape[1]
        if extra == 0:
            return self
        pad = torch.nn.functional.pad
        return Rows(
            pad(self.input_ids, (0, extra), value=pad_id),
            pad(self.attention_mask, (0, extra)),
            pad(self.labels, (0, extra), value=IGNORE_INDEX),
        )


@dataclass(frozen=True)
class CutBatch:
    """One micro-batch; ``is_negative`` [B] marks ``mle`` rows paired, in order, with ``misalign`` rows."""

    mle: Rows | None
    misalign: Rows | None
    is_negative: torch.Tensor
    span_mask: (
        torch.Tensor | None
    )  # (N, L2) True on blamed response tokens of Misalign rows, at label positions
    span_known: torch.Tensor | None  # (N,) rows whose example has error spans
    examples: int
    pad_id: int

    @property
    def tokens(self) -> int:
        """Non-padding tokens the forward pass processes."""
        return sum(rows.tokens for rows in (self.mle, self.misalign) if rows is not None)

    def to(self, device: torch.device | str) -> CutBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return CutBatch(
            mle=self.mle.to(device) if self.mle else None,
            misalign=self.misalign.to(device) if self.misalign else None,
            is_negative=self.is_negative.to(device),
            span_mask=move(self.span_mask),
            span_known=move(self.span_known),
            examples=self.examples,
            pad_id=self.pad_id,
        )


class CutCollator:
    """Builds ``CutBatch``es for one objective's ``RowPlan``; any micro-batch size."""

    def __init__(self, plan: RowPlan, pad_id: int, pad_to_multiple_of: int = 8) -> None:
        self.plan = plan
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, examples: Sequence[TokenizedExample]) -> CutBatch:
        mle: list[TokenizedExample] = []
        contexts: list[Context] = []
        negative_flags: list[bool] = []
        misalign: list[TokenizedExample] = []
        for ex in examples:
            context = self.plan.positive_mle if ex.positive else self.plan.negative_mle
            paired = not ex.positive and self.plan.negative_misalign
            if context is not None:
                mle.append(ex)
                contexts.append(context)
                negative_flags.append(paired)
            if paired:
                misalign.append(ex)
        mle_rows = self._rows(
            [ex.ids(c) for ex, c in zip(mle, contexts, strict=True)], [ex.response_len for ex in mle]
        )
        mis_rows = self._rows([ex.plain_ids for ex in misalign], [ex.response_len for ex in misalign])
        span_mask = span_known = None
        if mis_rows is not None and any(ex.span_mask is not None for ex in misalign):
            span_mask = torch.zeros_like(mis_rows.labels, dtype=torch.bool)
            for row, ex in enumerate(misalign):
                if ex.span_mask is not None:
                    start = len(ex.plain_ids) - ex.response_len
                    span_mask[row, start : len(ex.plain_ids)] = torch.tensor(ex.span_mask)
            span_known = torch.tensor([ex.span_mask is not None for ex in misalign])
        return CutBatch(
            mle=mle_rows,
            misalign=mis_rows,
            is_negative=torch.tensor(negative_flags, dtype=torch.bool),
            span_mask=span_mask,
            span_known=span_known,
            examples=len(examples),
            pad_id=self.pad_id,
        )

    def _rows(self, sequences: list[tuple[int, ...]], response_lens: list[int]) -> Rows | None:
        if not sequences:
            return None
        longest = max(len(s) for s in sequences)
        length = -(-longest // self.multiple) * self.multiple
        input_ids = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, (seq, n_resp) in enumerate(zip(sequences, response_lens, strict=True)):
            ids = torch.tensor(seq, dtype=torch.long)
            input_ids[row, : len(seq)] = ids
            attention[row, : len(seq)] = 1
            labels[row, len(seq) - n_resp : len(seq)] = ids[len(seq) - n_resp :]
        return Rows(input_ids, attention, labels)
