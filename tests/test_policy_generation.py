"""The one decoding routine (serving and offline evaluation): greedy equals ``model.generate``, per-row
parameters in one batch, stop sequences, EOS, length, seeded sampling independent of batch company."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from cutalign.policy.generation import PromptTooLong, SamplingParams, generate
from policy_support import tiny_policy

torch.set_num_threads(1)

PROMPTS = [
    "Q: 2+2?\nA: ",
    "Below is an instruction.\n### Instruction:\nCount to three.\n### Response:\n",
    "x",
]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    directory = tiny_policy(tmp_path_factory.mktemp("gen") / "tiny")
    return AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


def reference_greedy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, n: int
) -> list[int]:
    """Token ids ``model.generate`` produces greedily for one unpadded prompt (no EOS stopping)."""
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids["input_ids"].shape[1] :].tolist()


def test_batched_greedy_equals_model_generate_for_every_prompt(policy: tuple) -> None:
    model, tokenizer = policy
    results = generate(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=24))
    for prompt, result in zip(PROMPTS, results, strict=True):
        expected = reference_greedy(model, tokenizer, prompt, 24)
        assert result.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert (result.finish_reason, result.generated_tokens) == ("length", 24)
        assert result.prompt_tokens == len(tokenizer(prompt)["input_ids"])


def test_length_grouped_chunks_give_the_same_results_in_prompt_order(policy: tuple) -> None:
    model, tokenizer = policy
    prompts = [f"Q: item {i * 'z'}\nA: " for i in range(7)]
    whole = generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=12))
    chunked = generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=12), batch_size=3)
    assert chunked == whole


def test_stop_sequence_cuts_the_response_before_it_at_the_first_token_that_completes_it(
    policy: tuple,
) -> None:
    model, tokenizer = policy
    tokens = reference_greedy(model, tokenizer, PROMPTS[0], 24)
    full = tokenizer.decode(tokens, skip_special_tokens=True)
    stop = full[5:7]  # two characters the greedy output does produce
    cut = full.index(stop)
    result = generate(
        model, tokenizer, [PROMPTS[0]], SamplingParams(max_new_tokens=24, stop=("never!", stop))
    )[0]
    assert (result.text, result.finish_reason) == (full[:cut], "stop")
    completing = next(
        k for k in range(1, 25) if stop in tokenizer.decode(tokens[:k], skip_special_tokens=True)
    )
    assert result.generated_tokens == completing, "decoding stops at the token that completes the stop"


def test_eos_ends_the_row_and_is_not_part_of_the_text(policy: tuple) -> None:
    model, tokenizer = policy
    # a prompt whose greedy output has a token that first appears after step 0: make that token the EOS
    prompt, tokens, step = next(
        (p, t, i)
        for p in PROMPTS
        for t in [reference_greedy(model, tokenizer, p, 24)]
        for i in range(1, len(t))
        if t[i] not in t[:i]
    )
    model.generation_config.eos_token_id = tokens[step]
    try:
        result = generate(model, tokenizer, [prompt], SamplingParams(max_new_tokens=24))[0]
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    assert result.finish_reason == "eos"
    assert result.generated_tokens == step + 1
    assert result.text == tokenizer.decode(tokens[:step], skip_special_tokens=True)


def test_rows_with_different_parameters_decode_in_one_batch_as_they_would_alone(policy: tuple) -> None:
    model, tokenizer = policy
    params = [
        SamplingParams(max_new_tokens=5),
        SamplingParams(max_new_tokens=20, do_sample=True, temperature=0.7, top_p=0.9, seed=11),
        SamplingParams(max_new_tokens=16, stop=("a",)),
    ]
    together = generate(model, tokenizer, PROMPTS, params)
    alone = [generate(model, tokenizer, [p], [sp])[0] for p, sp in zip(PROMPTS, params, strict=True)]
    assert together == alone
    assert together[0].generated_tokens == 5


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(policy: tuple) -> None:
    model, tokenizer = policy
    sampled = SamplingParams(max_new_tokens=16, do_sample=True, seed=3)
    first = generate(model, tokenizer, [PROMPTS[0], PROMPTS[2]], sampled)[0]
    again = generate(model, tokenizer, [PROMPTS[1], PROMPTS[0]], [SamplingParams(max_new_tokens=4), sampled])[
        1
    ]
    other_seed = generate(
        model, tokenizer, [PROMPTS[0]], SamplingParams(max_new_tokens=16, do_sample=True, seed=4)
    )
    assert again == first
    assert other_seed[0].text != first.text
    greedy = generate(model, tokenizer, [PROMPTS[0]], SamplingParams(max_new_tokens=16))[0]
    assert first.text != greedy.text, "temperature 1 sampling of a random model does not follow the argmax"


def test_a_prompt_that_cannot_fit_the_context_is_refused_before_any_compute(policy: tuple) -> None:
    model, tokenizer = policy
    with pytest.raises(PromptTooLong, match="prompt 1 has 501 tokens; with max_new_tokens=12") as info:
        generate(model, tokenizer, ["ok", "y" * 500], SamplingParams(max_new_tokens=12))
    assert info.value.index == 1
    assert (
        generate(model, tokenizer, ["y" * 499], SamplingParams(max_new_tokens=12))[0].generated_tokens == 12
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"stop": ("",)}, "stop sequences must be non-empty"),
    ],
)
def test_invalid_sampling_parameters_are_refused_with_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_one_params_per_prompt_is_enforced(policy: tuple, tmp_path: Path) -> None:
    model, tokenizer = policy
    with pytest.raises(ValueError, match="got 1 SamplingParams for 2 prompts"):
        generate(model, tokenizer, ["a", "b"], [SamplingParams()])
    assert generate(model, tokenizer, [], SamplingParams()) == []
