"""One prompt format from training to serving to evaluation, on chat models and at token boundaries.

Two tiny chat models with locally trained byte-level BPE tokenizers — Qwen2 with ChatML, Llama with a Llama-3
style template — are served by the real embedded KServe policy server. For each, the project's client asks
the server for the prompt token ids it generated from (vLLM's ``return_token_ids`` on the OpenAI route, TGI's
``decoder_input_details`` on the native one), and the trainer's tokenization of the same example must give
exactly those ids, on both client backends. The ``plain`` template on the same server goes to
``/v1/completions`` and is never wrapped in the chat template. Evaluation renders as serving does (its greedy
responses equal the server's).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from arch_support import corpus, tiny_arch_model
from cutalign.config import PolicySettings
from cutalign.cut.collator import ExampleTokenizer
from cutalign.cut.examples import CutExample
from cutalign.iteration.evaluate import evaluate_policy
from cutalign.modelinit import build_bpe_tokenizer
from cutalign.policy.client import PolicyClient
from cutalign.policy.generation import decode_response
from cutalign.policy.launcher import PolicyServerProcess, start_policy_server
from cutalign.templates import PromptFormat, encode_prompt

torch.set_num_threads(1)

PROMPTS = [("add 2 and 5", ""), ("Translate to French:", "the answer is right"), ("Say <|im_end|> twice", "")]
CHAT_MODELS = {"chatml": "qwen2", "llama3": "llama"}


@pytest.fixture(scope="module", params=sorted(CHAT_MODELS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, PolicyServerProcess]]:
    checkpoint = tiny_arch_model(tmp_path_factory.mktemp(request.param) / "model", CHAT_MODELS[request.param])
    with start_policy_server(checkpoint, torch_threads=1, max_batch_size=4, max_batch_wait_ms=2) as server:
        yield checkpoint, server


def _client(
    server: PolicyServerProcess, checkpoint: Path, backend: str, template: str = "auto"
) -> PolicyClient:
    tokenizer = (
        str(checkpoint) if backend == "tgi" else None
    )  # TGI's route needs the chat template applied here
    return PolicyClient(
        PolicySettings(
            url=server.url, backend=backend, template=template, tokenizer=tokenizer, max_new_tokens=6
        )
    )


@pytest.mark.parametrize("backend", ["openai", "tgi"])
def test_trained_prompt_ids_are_the_ids_the_server_generated_from(
    served: tuple[Path, PolicyServerProcess], backend: str
) -> None:
    checkpoint, server = served
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    training = ExampleTokenizer(tokenizer, "auto", cutoff=256)
    assert training.format.is_chat and training.end_id != tokenizer.pad_token_id
    with _client(server, checkpoint, backend) as client:
        assert client.prompt_format().is_chat  # template=auto resolved to chat (tokenizer or /info)
        for instruction, extra in PROMPTS:
            completion = client.complete(client.request(instruction, extra), token_ids=True)
            assert completion.prompt_token_ids is not None
            example = CutExample("s", instruction, extra, completion.text, "wrong", False)
            trained = training(example)
            plain_prompt = trained.plain_ids[: -trained.response_len]  # the Misalign and inference context
            judged_prompt = trained.judged_ids[: -trained.response_len]
            assert plain_prompt == completion.prompt_token_ids, (backend, instruction)
            assert trained.plain_ids[-1] == training.end_id  # the turn's end, where the server stops
            assert judged_prompt != plain_prompt and judged_prompt[-3:] == plain_prompt[-3:], (
                "both contexts end with the chat template's generation prompt"
            )
            print(f"{checkpoint.parent.name} {backend}: {len(completion.prompt_token_ids)} prompt ids equal")


def test_plain_template_on_a_chat_model_is_sent_as_text_to_completions(
    served: tuple[Path, PolicyServerProcess],
) -> None:
    checkpoint, server = served
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    with _client(server, checkpoint, "openai", template="plain") as client:
        request = client.request("add 2 and 5")
        assert isinstance(request, str) and request.endswith("### Response:\n")
        completion = client.complete(request, token_ids=True)
    assert completion.prompt_token_ids == tuple(encode_prompt(tokenizer, request))
    trained = ExampleTokenizer(tokenizer, "plain")(
        CutExample("s", "add 2 and 5", "", completion.text, "", True)
    )
    assert trained.plain_ids[: -trained.response_len] == completion.prompt_token_ids
    assert trained.plain_ids[-1] == tokenizer.eos_token_id


def test_evaluation_renders_prompts_as_the_server_does(served: tuple[Path, PolicyServerProcess]) -> None:
    checkpoint, server = served

    class Accepting:
        def judge(self, instruction: str, response: str, reference: object) -> tuple[str, bool]:
            return "Perfect.", True

    prompts = [{"id": str(i), "instruction": ins, "input": extra} for i, (ins, extra) in enumerate(PROMPTS)]
    report = evaluate_policy(str(checkpoint), prompts, Accepting(), s3=None, max_new_tokens=6, device="auto")
    with _client(server, checkpoint, "openai") as client:
        served_texts = [client.complete(client.request(p["instruction"], p["input"])).text for p in prompts]
    assert [r.response for r in report.results] == served_texts


# -- token boundaries, without a server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe() -> object:
    return build_bpe_tokenizer(corpus(), "chatml")


def test_special_token_text_in_a_response_stays_text(bpe: object) -> None:
    tokenize = ExampleTokenizer(bpe, "chat")
    im_end = bpe.convert_tokens_to_ids("<|im_end|>")
    tok = tokenize(CutExample("s", "quote it", "", "it says <|im_end|> here", "", True))
    response = tok.plain_ids[-tok.response_len :]
    assert response[-1] == im_end and im_end not in response[:-1], "only the appended end token ends the turn"
    assert bpe.decode(list(response[:-1])) == "it says <|im_end|> here"


@pytest.mark.parametrize(("template", "response"), [("short", "the answer"), ("plain", "\n\nline two")])
def test_no_template_whitespace_merges_into_the_response(bpe: object, template: str, response: str) -> None:
    """``short`` ends in a space and ``plain`` in a newline; tokenized with the prompt as one text, the space
    would merge into the first response token ("Ġthe") and the newlines across the boundary ("ĊĊ")."""
    tok = ExampleTokenizer(bpe, template)(CutExample("s", "say it", "", response, "", True))
    prompt = PromptFormat.of(template, bpe).plain("say it")
    assert tok.plain_ids[: -tok.response_len] == tuple(encode_prompt(bpe, prompt)), "what a server encodes"
    assert tok.plain_ids[-tok.response_len : -1] == tuple(
        bpe(response, add_special_tokens=False)["input_ids"]
    )
    joint = bpe(prompt + response, add_special_tokens=False)["input_ids"]
    assert list(tok.plain_ids[:-1]) != joint, "the boundary case this guards against did not occur"


def test_spans_are_code_points_and_map_to_the_tokens_that_hold_them(bpe: object) -> None:
    """A JavaScript producer counting UTF-16 units would put this span one unit late after the emoji."""
    response = "😀 café 17 déjà"
    start = response.index("17")
    tok = ExampleTokenizer(bpe, "short")(
        CutExample("s", "x", "", response, "wrong", False, ((start, start + 2),))
    )
    assert tok.span_mask is not None
    ids = tok.plain_ids[-tok.response_len : -1]
    blamed = [i for i, m in zip(ids, tok.span_mask, strict=False) if m]
    assert "17" in bpe.decode(blamed) and "caf" not in bpe.decode(blamed) and "d" not in bpe.decode(blamed)


def test_a_generation_cut_inside_a_character_drops_it(bpe: object) -> None:
    ids = bpe("ok 日", add_special_tokens=False)["input_ids"]
    assert len(ids) >= 3 and bpe.decode(ids[:-1]).endswith("\ufffd"), "日 must span several byte tokens"
    assert decode_response(bpe, ids[:-1]) == "ok "
    assert decode_response(bpe, ids) == "ok 日"
