"""The LLM judge against a real KServe-served tiny model, with every request recorded on the wire.

The served model is a real ``transformers`` checkpoint whose weights are *set by hand* so its greedy output is
known: a one-layer Llama whose attention and MLP write nothing, so the next token depends only on the current
one (a bigram table). The prompt ends with the response, so the response's last character picks the judgment:
"!" -> ``PErfeCt.`` (the "Perfect" rule, case-insensitively; a bigram cannot spell "Perfect" with two
lowercase e's), "?" -> ``No.``, anything else -> end of text at once (an empty judgment). A recording proxy on
loopback sits between the judge and the policy server, so the prompt format is asserted on what was sent. The
model has no chat template, so these judges use ``template="auto"`` (resolved through the server's ``/info``
to the text prompt); the chat form of the prompt is checked without a server.
"""

from __future__ import annotations

import itertools
import json
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cutalign.config import JudgeSettings
from cutalign.judges.base import InvalidJudgment, Judgment, run_judge
from cutalign.judges.guard import GamingGuard
from cutalign.judges.llm import PAPER_SYSTEM_PROMPT, LLMJudge, quoted_spans, unusable_reason
from cutalign.judges.loader import judge_from_settings
from cutalign.modelinit import build_char_tokenizer
from cutalign.policy.client import Completion
from cutalign.policy.launcher import PolicyServerProcess, free_port, start_policy_server

torch.set_num_threads(1)

SCRIPT = {"!": "PErfeCt.", "?": "No."}  # last character of the prompt -> what the model says
PROMPT_LINES = ["### Instruction:", "### Response:"]  # the fixed lines of the paper's user template


def scripted_model(directory: Path) -> Path:
    """A checkpoint whose greedy continuation of a prompt is ``SCRIPT[prompt[-1]]`` (module docstring)."""
    tokenizer = build_char_tokenizer(string.printable, max_length=1024)
    vocab, hidden = len(tokenizer), 128
    assert vocab <= hidden, "one-hot embeddings need hidden >= vocab"
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    ids = {c: tokenizer.convert_tokens_to_ids(c) for c in "".join(SCRIPT) + "".join(SCRIPT.values())}
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab)
        for layer in model.model.layers:  # attention and MLP add nothing to the residual stream
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = model.lm_head.weight
        head.zero_()
        head[eos, :vocab] = 4.0  # by default: stop
        for first, said in SCRIPT.items():
            chain = [ids[c] for c in first + said] + [eos]
            for current, following in itertools.pairwise(chain):
                head[:, current] = 0.0
                head[following, current] = 4.0
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


class Recorder:
    """A loopback HTTP proxy to ``upstream`` that keeps (method, path, JSON body) of every POST (GETs, such as
    ``/info``, are forwarded and not kept)."""

    def __init__(self, upstream: str) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._forward(urllib.request.Request(upstream + self.path, method="GET"))

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                recorder.requests.append(("POST", self.path, json.loads(body)))
                forward = urllib.request.Request(
                    upstream + self.path,
                    data=body,
                    method="POST",
                    headers={"content-type": self.headers.get("content-type", "application/json")},
                )
                self._forward(forward)

            def _forward(self, forward: urllib.request.Request) -> None:
                try:
                    with urllib.request.urlopen(forward, timeout=30) as r:
                        status, payload = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, payload = e.code, e.read()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyServerProcess]:
    checkpoint = scripted_model(tmp_path_factory.mktemp("judge-model"))
    with start_policy_server(checkpoint, torch_threads=1, max_batch_size=8, max_batch_wait_ms=5) as server:
        yield server


@pytest.fixture
def recorder(policy_server: PolicyServerProcess) -> Iterator[Recorder]:
    proxy = Recorder(policy_server.url)
    yield proxy
    proxy.close()


def _paper_prompt(instruction: str, response: str) -> str:
    return f"{PAPER_SYSTEM_PROMPT}\n\n### Instruction: {instruction}\n\n### Response: {response}"


def test_paper_system_prompt_is_verbatim() -> None:
    assert PAPER_SYSTEM_PROMPT == (
        "Below is an instruction that describes a task and a potential response. Evaluate the response and "
        "provide valuable judgments to the response. If the response is perfect, please only reply with "
        "'perfect'. Otherwise, please indicate precisely what mistakes it has."
    )


@pytest.mark.parametrize("backend", ["openai", "tgi"])
def test_paper_prompt_on_the_wire_and_the_perfect_rule(recorder: Recorder, backend: str) -> None:
    judge = LLMJudge(url=recorder.url, backend=backend, max_new_tokens=12, template="auto")
    try:
        positive = judge.judge("Greet the user.", "Hello there!", None)
        negative = judge.judge("Is water wet?", "Why?", None)
    finally:
        judge.close()
    assert positive == Judgment("PErfeCt.", True, [], judge.id)
    assert negative == Judgment("No.", False, [], judge.id)

    (m1, path1, body1), (_, path2, body2) = recorder.requests
    assert m1 == "POST"
    if backend == "openai":  # a text prompt goes to the completions route, never into a chat template
        assert path1 == path2 == "/v1/completions"
        assert body1["prompt"] == _paper_prompt("Greet the user.", "Hello there!")
        assert body2["prompt"] == _paper_prompt("Is water wet?", "Why?")
        assert body1["temperature"] == 0.0 and body1["max_tokens"] == 12, "judging decodes greedily"
    else:
        assert path1 == path2 == "/"
        assert body1["inputs"] == _paper_prompt("Greet the user.", "Hello there!")
        assert body2["inputs"] == _paper_prompt("Is water wet?", "Why?")
        assert body1["parameters"]["do_sample"] is False and body1["parameters"]["max_new_tokens"] == 12


def test_deployed_llm_judge_is_guarded_so_a_degenerate_response_is_never_positive(recorder: Recorder) -> None:
    settings = JudgeSettings(
        judge="llm", options_json=json.dumps({"url": recorder.url, "max_new_tokens": 12, "template": "auto"})
    )
    judge = judge_from_settings(settings)
    assert isinstance(judge, GamingGuard) and isinstance(judge.inner, LLMJudge)
    vetoed = run_judge(judge, "Greet the user.", "!", None)
    assert recorder.requests[-1][2]["prompt"].endswith("### Response: !")
    assert not vetoed.positive, "the model said PErfeCt. to a lone '!'; the guard must veto it"
    assert vetoed.text == "The response is only punctuation; it should answer the instruction."
    assert vetoed.error_spans == [(0, 1)]
    assert run_judge(judge, "Greet the user.", "Hi!", None).positive
    judge.inner.close()


def test_prompt_and_rule_are_configurable_and_reference_reaches_the_prompt(recorder: Recorder) -> None:
    judge = LLMJudge(
        url=recorder.url,
        max_new_tokens=12,
        template="auto",
        system_prompt="",
        user_template="Q: {instruction}\nfacts: {reference}\nA: {response}",
        positive_pattern=r"^no\.$",
    )
    result = judge.judge("Any mistakes?", "None?", {"b": 1, "a": "x"})
    judge.close()
    assert result.positive and result.text == "No.", "the configured rule decides polarity"
    assert recorder.requests[-1][2]["prompt"] == 'Q: Any mistakes?\nfacts: {"a": "x", "b": 1}\nA: None?'
    assert result.judge_id != LLMJudge(url=recorder.url).id, (
        "a different prompt or rule is a different judge id"
    )


def test_an_empty_judgment_is_an_error_not_a_judgment(recorder: Recorder) -> None:
    judge = LLMJudge(url=recorder.url, max_new_tokens=12, template="auto")
    with pytest.raises(InvalidJudgment, match="empty judgment"):
        judge.judge("Greet the user.", "Hello.", None)  # "." -> end of text at once
    judge.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"user_template": "{instruction} {answer}"}, "unknown fields ['answer']"),
        ({"user_template": "{instruction} only"}, "must contain ['response']"),
        ({"positive_pattern": "(perfect"}, "not a valid regex"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        LLMJudge(url="http://127.0.0.1:1", **options)


@pytest.mark.parametrize(
    ("judgment", "response", "blamed"),
    [
        ('The response says "17" but should say 16.', "15 17 18", ["17"]),
        ("It writes 'Pariss' instead of 'Paris'.", "The capital is Pariss.", ["Pariss"]),
        ("The word “Pariss” is misspelled.", "The capital is Pariss.", ["Pariss"]),
        ("It's wrong: `x = 1` assigns.", "Use x = 1 to compare.", ["x = 1"]),
        ('The quote "PARIS" differs in case only.', "It is paris.", ["paris"]),
        ('It ends with "done." but means "finished".', "We are done", ["done"]),
        ('"1" appears twice, which is ambiguous.', "1 and 1", []),
        ('It says "17" where 175 is also wrong.', "175 17", ["17"]),
        ('The instruction asks for "a poem".', "Roses are red.", []),
        ("It's fine except the judge's own apostrophes.", "It is fine.", []),
    ],
)
def test_quoted_text_is_located_in_the_response(judgment: str, response: str, blamed: list[str]) -> None:
    spans = quoted_spans(judgment, response)
    assert [response[s:e] for s, e in spans] == blamed


def test_kserve_judge_serves_the_llm_judge_and_rejects_malformed_requests(
    recorder: Recorder, tmp_path: Path
) -> None:
    port = free_port()
    options = json.dumps({"url": recorder.url, "max_new_tokens": 12, "template": "auto"})
    log_path = tmp_path / "kserve-judge.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cutalign.judging.kserve_model",
                "--http_port",
                str(port),
                "--judge",
                "llm",
                "--options_json",
                options,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while _call("GET", f"{base}/v1/models/judge")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        status, body = _call(
            "POST",
            f"{base}/v1/models/judge:predict",
            {
                "instances": [
                    {"instruction": "Greet the user.", "response": "Hello there!"},
                    {"instruction": "Greet the user.", "response": "!"},
                ]
            },
        )
        assert status == 200, body
        assert [p["text"] for p in body["predictions"]] == [
            "PErfeCt.",
            "The response is only punctuation; it should answer the instruction.",
        ]
        assert [p["positive"] for p in body["predictions"]] == [True, False]
        status, body = _call(
            "POST",
            f"{base}/v2/models/judge/infer",
            {
                "inputs": [
                    {"name": "instruction", "datatype": "BYTES", "shape": [1], "data": ["Is water wet?"]},
                    {"name": "response", "datatype": "BYTES", "shape": [1], "data": ["Why?"]},
                ]
            },
        )
        assert status == 200, body
        outputs = {o["name"]: o["data"] for o in body["outputs"]}
        assert outputs["text"] == ["No."] and outputs["positive"] == [False]
        assert outputs["error_spans"] == ["[]"] and outputs["judge_id"][0].startswith("llm:policy:")

        for bad in (
            b'{"instances": ',
            {"instances": [{"instruction": "x"}]},
            {"instances": "x"},
            {"instances": [{"instruction": 1, "response": "y"}]},
        ):
            status, body = _call("POST", f"{base}/v1/models/judge:predict", bad)
            assert status == 400, (bad, body)
            assert body["error"]
        status, body = _call(
            "POST",
            f"{base}/v2/models/judge/infer",
            {
                "inputs": [
                    {"name": "instruction", "datatype": "INT32", "shape": [1], "data": [1]},
                ]
            },
        )
        assert status == 400 and "BYTES" in body["error"]
        status, body = _call(
            "POST",
            f"{base}/v1/models/judge:predict",
            {"instances": [{"instruction": "Greet.", "response": "Hello."}]},
        )
        assert status == 500 and body["error"].startswith("judge_failed: InvalidJudgment: "), body
    finally:
        proc.terminate()
        proc.wait(30)


def _call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except (urllib.error.URLError, ConnectionError):
        return 0, None


def test_a_chat_judge_sends_the_system_and_user_parts_as_messages() -> None:
    judge = LLMJudge(url="http://127.0.0.1:1")  # the default template is chat: no server needed to render
    assert judge.prompt("Greet the user.", "Hi!", None) == [
        {"role": "system", "content": PAPER_SYSTEM_PROMPT},
        {"role": "user", "content": "### Instruction: Greet the user.\n\n### Response: Hi!"},
    ]
    judge.close()


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "empty"),
        ("  ...  ", "empty"),
        ("I'm sorry, but I can't help with that.", "refusal"),
        ("As an AI language model, I do not judge.", "refusal"),
        ("“Sorry — cannot evaluate this.”", "refusal"),
        ("### Response: 15 17 18", "repeats the judging prompt"),
        ("purple banana skyline", "refers to neither"),
        ("The response says 17 where 16 belongs.", None),
        ("Missing the last step.", None),
        ("No.", None),
        ("Paris is not the answer; Lyon is.", None),
        ("Lyon.", None),  # names a word of the instruction: a terse critique, still about the task
    ],
)
def test_unusable_replies_are_named(reply: str, reason: str | None) -> None:
    found = unusable_reason(
        reply, "Which city is the capital of Lyon's region?", "15 17 18 Paris", PROMPT_LINES
    )
    assert (found is None) if reason is None else (found is not None and reason in found), found


def test_an_unusable_reply_is_an_error_not_a_judgment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in transport: the client returns a canned completion (a real model cannot be made to refuse)."""
    judge = LLMJudge(url="http://127.0.0.1:1")
    canned = Completion(
        "I cannot evaluate this response.", "eos", 7, judge.client.generation_params(), None, 1, 0.0
    )
    monkeypatch.setattr(judge.client, "complete", lambda prompt, **kw: canned)
    with pytest.raises(InvalidJudgment, match="no usable judgment: it is a refusal"):
        judge.judge("Greet the user.", "Hi!", None)
    judge.close()
