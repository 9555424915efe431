"""PolicyClient failure policy, concurrency bound and offline mode. A real server cannot be made to answer
429/503 or to hang on demand, so these tests use a minimal real HTTP stub of the OpenAI completion routes that
fails as scripted (named ``stub`` below); the happy paths run against the real KServe server in
test_policy_server.py and test_chat_templates.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub import constants
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import get_session

from cutalign.config import PolicySettings
from cutalign.policy.client import PolicyClient, PolicyError, PolicyRejected, PolicyUnavailable
from cutalign.policy.launcher import free_port
from cutalign.policy.served import read_served

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
ANSWERS = {  # the OpenAI shapes, by route
    "/v1/chat/completions": {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "policy",
        "system_fingerprint": "tgi-2.4",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "eos_token"}
        ],
        "usage": USAGE,
    },
    "/v1/completions": {
        "id": "x",
        "object": "text_completion",
        "created": 0,
        "model": "policy",
        "choices": [{"index": 0, "text": "42", "finish_reason": "eos_token"}],
        "usage": USAGE,
    },
}


class Stub:
    """Answers POST /v1/chat/completions and /v1/completions with ``script(n)`` -> (status, delay_s) for the
    n-th request; ``paths`` records each request's path and ``bodies`` its JSON body."""

    def __init__(self, script: Callable[[int], tuple[int, float]]) -> None:
        self.script = script
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.paths: list[str] = []
        self.bodies: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with stub.lock:
                    stub.paths.append(self.path)
                    stub.bodies.append(body)
                    n = stub.requests
                    stub.requests += 1
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                status, delay = stub.script(n)
                time.sleep(delay)
                with stub.lock:
                    stub.in_flight -= 1
                body = json.dumps(ANSWERS[self.path] if status == 200 else {"error": f"scripted {status}"})
                body = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self) -> None:  # noqa: N802 - TGI's /info, which says nothing of chat templates
                body = json.dumps({"model_id": "stub", "model_sha": None}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Callable[[Callable[[int], tuple[int, float]]], Stub]]:
    started: list[Stub] = []

    def start(script: Callable[[int], tuple[int, float]]) -> Stub:
        started.append(Stub(script))
        return started[-1]

    yield start
    for s in started:
        s.close()


def settings(url: str, **overrides: object) -> PolicySettings:
    return PolicySettings(
        **{"url": url, "backend": "openai", "retry_backoff_s": 0.1, "retry_max_backoff_s": 0.3, **overrides}
    )


@pytest.mark.parametrize("status", [429, 500, 503])
def test_stub_429_and_5xx_are_retried_with_growing_jittered_backoff(stub: Callable, status: int) -> None:
    server = stub(lambda n: (status, 0.0) if n < 3 else (200, 0.0))
    slept: list[float] = []
    completion = PolicyClient(settings(server.url, max_retries=4), sleep=slept.append).complete("Q: ?\nA: ")
    assert (completion.text, completion.finish_reason, completion.attempts) == ("42", "eos", 4)
    assert completion.policy_sha256 is None, "a server that does not name its policy leaves it unknown"
    assert len(slept) == 3
    for attempt, delay in enumerate(slept):
        assert 0 <= delay <= min(0.3, 0.1 * 2**attempt), "full jitter under a doubling, capped bound"


def test_stub_4xx_is_not_retried(stub: Callable) -> None:
    server = stub(lambda n: (422, 0.0))
    slept: list[float] = []
    with pytest.raises(PolicyRejected, match="HTTP 422") as info:
        PolicyClient(settings(server.url, max_retries=4), sleep=slept.append).complete("x")
    assert (info.value.status, server.requests, slept) == (422, 1, [])


def test_stub_failing_through_every_retry_makes_the_policy_unavailable(stub: Callable) -> None:
    server = stub(lambda n: (503, 0.0))
    with pytest.raises(PolicyUnavailable, match="after 3 attempt") as info:
        PolicyClient(settings(server.url, max_retries=2), sleep=lambda s: None).complete("x")
    assert info.value.attempts == 3 and server.requests == 3


def test_stub_timeouts_are_retried(stub: Callable) -> None:
    server = stub(lambda n: (200, 1.0 if n == 0 else 0.0))
    completion = PolicyClient(
        settings(server.url, timeout_s=0.3, max_retries=1), sleep=lambda s: None
    ).complete("x")
    assert completion.attempts == 2 and completion.text == "42"


def test_connection_refused_is_retried_then_unavailable() -> None:
    slept: list[float] = []
    client = PolicyClient(settings(f"http://127.0.0.1:{free_port()}", max_retries=2), sleep=slept.append)
    with pytest.raises(PolicyUnavailable, match="ConnectError"):
        client.complete("x")
    assert len(slept) == 2
    with pytest.raises(PolicyUnavailable):
        read_served(settings(f"http://127.0.0.1:{free_port()}", max_retries=1), sleep=lambda s: None)


def test_stub_sees_at_most_max_in_flight_requests(stub: Callable) -> None:
    server = stub(lambda n: (200, 0.05))
    with PolicyClient(settings(server.url, max_in_flight=3)) as client:
        results = client.complete_many([(f"p{i}", 0) for i in range(15)])
        with ThreadPoolExecutor(8) as pool:  # more caller threads than slots: the wire is still bounded
            more = list(pool.map(lambda i: client.complete(f"q{i}"), range(8)))
    assert all(r.text == "42" for r in [*results, *more])
    assert server.max_in_flight == 3


def test_generation_params_record_how_each_response_was_decoded() -> None:
    greedy = PolicyClient(PolicySettings(max_new_tokens=9, temperature=0.5, stop=["###"])).generation_params(
        seed=5
    )
    assert (greedy.do_sample, greedy.temperature, greedy.top_p, greedy.seed) == (False, 0.0, 1.0, 0)
    assert (greedy.max_new_tokens, list(greedy.stop), greedy.template, greedy.backend) == (
        9,
        ["###"],
        "auto",  # not resolved yet: no prompt was rendered
        "openai",
    )
    sampled = PolicyClient(PolicySettings(do_sample=True, temperature=0.5, top_p=0.9, n=2)).generation_params(
        5
    )
    assert (sampled.do_sample, sampled.temperature, sampled.seed, sampled.n) == (True, 0.5, 5, 2)
    assert sampled.top_p == pytest.approx(0.9)
    with pytest.raises(ValueError, match="policy.n > 1 needs policy.do_sample=true"):
        PolicySettings(n=2)


def test_text_prompts_go_to_completions_and_chat_messages_to_the_chat_route(stub: Callable) -> None:
    server = stub(lambda n: (200, 0.0))
    client = PolicyClient(settings(server.url, template="short"))
    assert client.request("2+2?") == "Q: 2+2?\nA: "
    client.complete(client.request("2+2?"))
    client.complete([{"role": "user", "content": "2+2?"}])
    assert server.paths == ["/v1/completions", "/v1/chat/completions"]
    assert server.bodies[0]["prompt"] == "Q: 2+2?\nA: " and "messages" not in server.bodies[0]
    assert server.bodies[1]["messages"] == [{"role": "user", "content": "2+2?"}]
    assert PolicyClient(settings(server.url, template="chat")).request("2+2?") == [
        {"role": "user", "content": "2+2?"}
    ]
    with pytest.raises(PolicyError, match="set CUTALIGN_POLICY_TOKENIZER"):
        PolicyClient(settings(server.url, template="chat", backend="tgi")).request("2+2?")
    with pytest.raises(PolicyError, match="template 'auto' cannot be resolved"):  # TGI's /info is silent
        PolicyClient(settings(server.url)).request("2+2?")


def test_offline_mode_blocks_the_hub_but_not_an_explicit_url(
    stub: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF_HUB_OFFLINE=1 is read into huggingface_hub.constants at import; set the same flag here."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    server = stub(lambda n: (200, 0.0))
    client = PolicyClient(settings(server.url, template="plain"))
    assert client.complete("x").text == "42"
    assert client.complete([{"role": "user", "content": "x"}]).text == "42"
    with pytest.raises(OfflineModeIsEnabled):
        get_session().get(f"{constants.ENDPOINT}/api/models/gpt2")
