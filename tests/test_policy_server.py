"""The embedded KServe policy server, started as a real subprocess on 127.0.0.1, called through
``huggingface_hub.InferenceClient`` on both backends (OpenAI chat route, TGI-native route): what it serves is
exactly what offline ``generate`` decodes, concurrent requests are batched, and client mistakes get a 400."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from huggingface_hub import InferenceClient

from cutalign.config import PolicySettings
from cutalign.policy.client import PolicyClient, PolicyRejected
from cutalign.policy.generation import SamplingParams, generate
from cutalign.policy.launcher import PolicyServerProcess, start_policy_server
from cutalign.policy.loading import LoadedPolicy, load_policy
from cutalign.policy.served import read_served
from cutalign.policy.version import dir_sha256
from policy_support import http_json, tiny_policy

torch.set_num_threads(1)

PROMPTS = [f"Q: what is {i} + {i * 3}?\nA: " for i in range(12)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("served") / "tiny-policy")


@pytest.fixture(scope="module")
def offline(checkpoint: Path) -> LoadedPolicy:
    return load_policy(str(checkpoint))


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[PolicyServerProcess]:
    with start_policy_server(
        checkpoint,
        torch_threads=1,
        max_batch_size=8,
        max_batch_wait_ms=20,
        policy_model_id="tiny",
        iteration=2,
    ) as process:
        yield process


def client(server: PolicyServerProcess, backend: str, **overrides: object) -> PolicyClient:
    return PolicyClient(PolicySettings(url=server.url, backend=backend, max_new_tokens=16, **overrides))


@pytest.mark.parametrize("backend", ["openai", "tgi"])
def test_both_backends_return_what_offline_generate_decodes(
    server: PolicyServerProcess, offline: LoadedPolicy, checkpoint: Path, backend: str
) -> None:
    expected = generate(offline.model, offline.tokenizer, PROMPTS[:3], SamplingParams(max_new_tokens=16))
    with client(server, backend, stop=["\n"]) as policy:
        for prompt, reference in zip(PROMPTS[:3], expected, strict=True):
            completion = policy.complete(prompt)
            full = reference.text
            cut = full.find("\n")
            assert completion.text == (full if cut < 0 else full[:cut])
            assert completion.finish_reason == ("length" if cut < 0 else "stop")
            assert completion.policy_sha256 == dir_sha256(checkpoint), "every response names its policy"
            assert completion.attempts == 1
            assert completion.params.backend == backend
            assert (completion.params.do_sample, completion.params.max_new_tokens) == (False, 16)
            assert list(completion.params.stop) == ["\n"]


@pytest.mark.parametrize("backend", ["openai", "tgi"])
def test_seeded_sampling_through_the_server_is_reproducible(
    server: PolicyServerProcess, backend: str
) -> None:
    with client(server, backend, do_sample=True, temperature=0.9, top_p=0.95) as policy:
        first, again, other = (policy.complete(PROMPTS[0], seed=s) for s in (7, 7, 8))
    assert first.text == again.text != other.text
    assert (first.params.seed, first.params.temperature) == (7, pytest.approx(0.9))


def test_served_version_names_model_sha_iteration_and_uri(
    server: PolicyServerProcess, checkpoint: Path
) -> None:
    for mode in ("embedded", "kserve"):  # KServe runs this same server as its predictor
        (served,) = read_served(PolicySettings(url=server.url, mode=mode)).models
        version = served.version
        assert (version.model_id, version.iteration, version.uri) == ("tiny", 2, str(checkpoint))
        assert version.checkpoint_sha256 == dir_sha256(checkpoint)


def test_inference_client_wire_formats_directly(server: PolicyServerProcess) -> None:
    raw = InferenceClient(model=server.url, provider="hf-inference")
    chat = raw.chat_completion(
        [{"role": "user", "content": PROMPTS[1]}], model="policy", max_tokens=5, temperature=0
    )
    assert chat.system_fingerprint.startswith("policy-sha256:")
    assert chat.usage.completion_tokens == 5 and chat.choices[0].finish_reason == "length"
    tgi = raw.text_generation(PROMPTS[1], max_new_tokens=5, details=True)
    assert tgi.generated_text == chat.choices[0].message.content
    assert (tgi.details.finish_reason, tgi.details.generated_tokens) == ("length", 5)
    prefixed = InferenceClient(base_url=f"{server.url}/openai/v1", provider="hf-inference")
    again = prefixed.chat_completion([{"role": "user", "content": PROMPTS[1]}], max_tokens=5, temperature=0)
    assert again.choices[0].message.content == tgi.generated_text, "KServe's /openai prefix serves the same"
    request = {"prompt": [PROMPTS[1], PROMPTS[2]], "max_tokens": 5, "temperature": 0}
    status, body = http_json("POST", f"{server.url}/v1/completions", request)
    assert status == 200 and body["choices"][0]["text"] == tgi.generated_text and len(body["choices"]) == 2


def test_kserve_v1_predict_serves_the_policy(server: PolicyServerProcess, offline: LoadedPolicy) -> None:
    request = {"instances": [{"prompt": PROMPTS[4], "parameters": {"max_new_tokens": 8}}]}
    status, body = http_json("POST", f"{server.url}/v1/models/policy:predict", request)
    assert status == 200
    expected = generate(offline.model, offline.tokenizer, [PROMPTS[4]], SamplingParams(max_new_tokens=8))[0]
    assert body["predictions"][0]["text"] == expected.text
    assert body["predictions"][0]["generated_tokens"] == 8
    assert body["policy"]["checkpoint_sha256"] == offline.version.checkpoint_sha256


def test_concurrent_requests_are_batched_and_answered_correctly(
    server: PolicyServerProcess, offline: LoadedPolicy
) -> None:
    def batch_stats() -> tuple[float, float]:
        status, text = http_json("GET", f"{server.url}/metrics")
        rows = float(re.search(r"^cutalign_policy_batch_rows_sum ([\d.e+]+)$", text, re.M).group(1))
        count = float(re.search(r"^cutalign_policy_batch_rows_count ([\d.e+]+)$", text, re.M).group(1))
        return rows, count

    rows_before, batches_before = batch_stats()
    with client(server, "openai", max_in_flight=12) as policy, ThreadPoolExecutor(12) as pool:
        completions = list(pool.map(policy.complete, PROMPTS))
    rows, batches = batch_stats()
    expected = generate(offline.model, offline.tokenizer, PROMPTS, SamplingParams(max_new_tokens=16))
    assert [c.text for c in completions] == [e.text for e in expected]
    assert rows - rows_before == len(PROMPTS)
    assert batches - batches_before < len(PROMPTS), "requests arriving together share batches"


@pytest.mark.parametrize(
    "route, body, message",
    [
        ("/v1/chat/completions", b"{not json", "request body is not valid JSON"),
        ("/v1/chat/completions", {"messages": []}, "messages: List should have at least 1 item"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "tools": []},
            "tools: Extra",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True}, "stream"),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "x"}]}, "no chat template"),
        ("/v1/completions", {"prompt": ""}, "non-empty"),
        ("/generate", {"inputs": "x", "parameters": {"top_k": 5}}, "parameters.top_k: Extra"),
        ("/generate", {"inputs": "y" * 600}, "exceeds the model's context of 512 tokens"),
        ("/", {"parameters": {}}, "inputs: Field required"),
        ("/v1/models/policy:predict", b"{not json", "Unrecognized request format"),
        ("/v1/models/policy:predict", {"instances": [{"prompt": ""}]}, "instances.0.prompt"),
        ("/v1/models/policy:predict", [1, 2], "expected a JSON object"),
    ],
)
def test_malformed_requests_get_400_naming_the_problem(
    server: PolicyServerProcess, route: str, body: object, message: str
) -> None:
    status, answer = http_json("POST", server.url + route, body)
    assert status == 400, answer
    assert message in str(answer)


def test_client_does_not_retry_a_rejected_request(server: PolicyServerProcess) -> None:
    slept: list[float] = []
    policy = PolicyClient(PolicySettings(url=server.url, backend="tgi", max_retries=3), sleep=slept.append)
    with pytest.raises(PolicyRejected, match="(?s)HTTP 400.*exceeds the model's context") as info:
        policy.complete("z" * 600)
    assert info.value.status == 400 and slept == [], "a 4xx is our fault: retrying cannot help"


def test_server_listens_on_loopback_only_unless_told_otherwise(server: PolicyServerProcess) -> None:
    """KServe binds 0.0.0.0 on its own; the server binds its ``host`` setting (default 127.0.0.1)."""
    port = int(server.url.rsplit(":", 1)[1])
    listening = {
        local
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for line in Path(table).read_text().splitlines()[1:]
        for local, state in [(line.split()[1], line.split()[3])]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port  # 0A: LISTEN
    }
    assert listening == {f"0100007F:{port:04X}"}, f"listening on {listening}, expected 127.0.0.1 only"
