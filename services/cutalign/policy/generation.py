"""Batched decoding for a causal LM: greedy or sampled, stop sequences, per-row parameters, left padding.

This is the one decoding routine of the project: the embedded policy server calls it for every batch and
offline evaluation calls it directly, so a policy is evaluated exactly as it is served.

Why a hand-written loop instead of ``model.generate``: a server batch mixes requests with different
parameters (greedy and sampled rows, temperatures, stop sequences, lengths), and each sampled row must be
reproducible from its own seed whatever else shares its batch — so that a re-generated sample (after a crash
and redelivery) is the same sample. ``generate`` takes one set of parameters and one RNG per call. The loop is
the standard KV-cached one: a prefill over the left-padded prompts, then one token per step; finished rows are
dropped from the batch (and the cache), so a short answer does not pay for a long one.

Greedy output equals ``model.generate(do_sample=False)`` token for token (tested).

Prompts are encoded as training encodes them (``cutalign.templates.encode_prompt``); a response ends at EOS or
at a chat template's end-of-turn token (``cutalign.templates.stop_ids``), so a chat model trained on its turns
stops where its turn ends. A response cut by the length limit in the middle of a multi-byte character drops
the incomplete character rather than ending in U+FFFD. Each result carries the prompt's and the response's
token ids, and on request the prompt tokens' log-probabilities (TGI's ``decoder_input_details``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from cutalign.templates import encode_prompt, stop_ids

FinishReason = Literal["eos", "length", "stop"]
REPLACEMENT = "\ufffd"  # what decoding shows for bytes that do not form a complete character


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one prompt. Defaults: greedy, as the method's online iteration does."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None  # sampled rows: None draws a seed from torch's global RNG
    prompt_logprobs: bool = False  # also score every prompt token (one full-logits prefill)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0, got {self.temperature}; use do_sample=False for greedy"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")


@dataclass(frozen=True)
class GenerationResult:
    text: str  # the response only; EOS and the matched stop sequence are not included
    finish_reason: FinishReason
    generated_tokens: int  # tokens decoded, including the EOS or the token that completed a stop sequence
    prompt_tokens: int
    prompt_ids: tuple[int, ...] = ()  # the prompt exactly as the model read it
    token_ids: tuple[int, ...] = ()  # every decoded token, the EOS or stop-completing one included
    prompt_logprobs: tuple[float | None, ...] | None = None  # log p of each prompt token (first: None)


class PromptTooLong(ValueError):
    """The prompt plus ``max_new_tokens`` does not fit the model's context window."""

    def __init__(self, index: int, prompt_tokens: int, max_new_tokens: int, limit: int) -> None:
        self.index = index
        self.prompt_tokens = prompt_tokens
        super().__init__(
            f"prompt {index} has {prompt_tokens} tokens; with max_new_tokens={max_new_tokens} it exceeds the "
            f"model's context of {limit} tokens — shorten the prompt or lower max_new_tokens"
        )


def context_limit(model: PreTrainedModel) -> int | None:
    limit = getattr(model.config, "max_position_embeddings", None)
    return int(limit) if limit else None


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's special tokens (BOS), as training encodes them."""
    return [encode_prompt(tokenizer, p) for p in prompts]


def check_fits(
    model: PreTrainedModel, prompt_ids: Sequence[Sequence[int]], params: Sequence[SamplingParams]
) -> None:
    """Raise ``PromptTooLong`` for the first prompt that cannot be decoded within the context window."""
    limit = context_limit(model)
    if limit is None:
        return
    for i, (ids, p) in enumerate(zip(prompt_ids, params, strict=True)):
        if len(ids) + p.max_new_tokens > limit:
            raise PromptTooLong(i, len(ids), p.max_new_tokens, limit)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    *,
    batch_size: int | None = None,
) -> list[GenerationResult]:
    """Decode a response for every prompt; results are in prompt order.

    ``params`` is one ``SamplingParams`` for all prompts or one per prompt. ``batch_size`` bounds the rows
    decoded together (prompts are grouped by length to waste little on padding); ``None`` decodes all at once.
    Raises ``PromptTooLong`` before any compute if a prompt cannot fit.
    """
    per_row = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    if len(per_row) != len(prompts):
        raise ValueError(f"got {len(per_row)} SamplingParams for {len(prompts)} prompts")
    if not prompts:
        return []
    ids = encode_prompts(tokenizer, prompts)
    check_fits(model, ids, per_row)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if batch_size else list(range(len(ids)))
    step = batch_size or len(ids)
    results: dict[int, GenerationResult] = {}
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        for i, result in zip(
            chunk,
            decode_batch(model, tokenizer, [ids[i] for i in chunk], [per_row[i] for i in chunk]),
            strict=True,
        ):
            results[i] = result
    return [results[i] for i in range(len(prompts))]


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = stop_ids(tokenizer)
    configured: Any = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list | tuple):
        ids.update(int(v) for v in configured)
    return ids


def _pad_id(tokenizer: PreTrainedTokenizerBase, eos_ids: set[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(eos_ids) if eos_ids else 0


def _sample(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator) -> int:
    """One token from a row's logits (V,) with temperature and nucleus (top-p) filtering."""
    probs = torch.softmax(logits.float() / p.temperature, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, sorted_ids = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        keep = (sorted_probs.cumsum(-1) - sorted_probs) < p.top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(sorted_ids[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def _first_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop sequence in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


@torch.inference_mode()
def decode_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
) -> list[GenerationResult]:
    """Decode one batch of already-tokenized prompts that are known to fit (see ``check_fits``)."""
    device = model.device
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = _pad_id(tokenizer, eos_ids)
    batch = len(prompt_ids)
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):  # left padding: every row's last prompt token is at column -1
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    generators = [  # one RNG per row, on the logits' device (multinomial needs them together)
        torch.Generator(device=device).manual_seed(
            p.seed if p.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        )
        for p in params
    ]

    cache = DynamicCache(config=model.config)
    scored = any(p.prompt_logprobs for p in params)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=0 if scored else 1,
    )
    prompt_scores = _prompt_logprobs(out.logits, input_ids, prompt_ids, params) if scored else {}
    logits = out.logits[:, -1, :]  # (B, V)
    last_pos = positions[:, -1]  # (B,)
    active = list(range(batch))  # original row of each row still in the batch
    generated: list[list[int]] = [[] for _ in range(batch)]
    finished: dict[int, GenerationResult] = {}

    while active:
        greedy = logits.argmax(-1).tolist()
        next_tokens: list[int] = []
        keep: list[int] = []
        for pos, row in enumerate(active):
            p = params[row]
            token = _sample(logits[pos], p, generators[row]) if p.do_sample else int(greedy[pos])
            generated[row].append(token)
            result = _finish_if_done(tokenizer, generated[row], token, p, eos_ids, len(prompt_ids[row]))
            if result is None:
                keep.append(pos)
                next_tokens.append(token)
            else:
                finished[row] = dataclasses.replace(
                    result,
                    prompt_ids=tuple(prompt_ids[row]),
                    token_ids=tuple(generated[row]),
                    prompt_logprobs=prompt_scores.get(row),
                )
        if not keep:
            break
        if len(keep) < len(active):  # drop finished rows from the batch and the cache
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, last_pos = mask[index], last_pos[index]
            active = [active[k] for k in keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)  # (B', T+1)
        last_pos = last_pos + 1
        out = model(
            input_ids=torch.tensor(next_tokens, device=device)[:, None],
            attention_mask=mask,
            position_ids=last_pos[:, None],
            cache=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1, :]
    return [finished[row] for row in range(batch)]


def _prompt_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    prompt_ids: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
) -> dict[int, tuple[float | None, ...]]:
    """log p of every prompt token given the ones before it, for the rows that ask (left-padded rows)."""
    width = input_ids.shape[1]
    scores: dict[int, tuple[float | None, ...]] = {}
    for row, (ids, p) in enumerate(zip(prompt_ids, params, strict=True)):
        if not p.prompt_logprobs:
            continue
        start = width - len(ids)
        logp = torch.log_softmax(logits[row, start : width - 1].float(), dim=-1)
        picked = logp.gather(-1, input_ids[row, start + 1 :, None]).squeeze(-1).tolist()
        scores[row] = (None, *picked)
    return scores


def _finish_if_done(
    tokenizer: PreTrainedTokenizerBase,
    tokens: list[int],
    token: int,
    p: SamplingParams,
    eos_ids: set[int],
    prompt_tokens: int,
) -> GenerationResult | None:
    """The row's result if ``token`` ended it (EOS, a stop sequence, or the length limit), else None."""
    if token in eos_ids:
        return GenerationResult(decode_response(tokenizer, tokens[:-1]), "eos", len(tokens), prompt_tokens)
    if p.stop:
        text = decode_response(tokenizer, tokens)
        cut = _first_stop(text, p.stop)
        if cut >= 0:
            return GenerationResult(text[:cut], "stop", len(tokens), prompt_tokens)
    if len(tokens) >= p.max_new_tokens:
        return GenerationResult(decode_response(tokenizer, tokens), "length", len(tokens), prompt_tokens)
    return None


def decode_response(tokenizer: PreTrainedTokenizerBase, tokens: list[int]) -> str:
    """The decoded response, without a trailing incomplete character.

    A byte-level tokenizer decodes a character whose bytes span tokens only once all of them are there; cut
    before that, the decode ends in U+FFFD. The last tokens (at most three: a character has at most four
    bytes) are dropped while that is so, leaving the text of the complete characters.
    """
    text = str(tokenizer.decode(tokens, skip_special_tokens=True))
    for drop in range(1, min(3, len(tokens)) + 1):
        if not text.endswith(REPLACEMENT):
            break
        text = str(tokenizer.decode(tokens[:-drop], skip_special_tokens=True))
    return text
