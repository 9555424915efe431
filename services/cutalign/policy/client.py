"""``PolicyClient``: call the served policy through ``huggingface_hub.InferenceClient``, safely and boundedly.

Two backends, chosen by ``PolicySettings.backend``:
* ``tgi`` — TGI's native route (``text_generation`` with ``details=True``): exact finish reasons and token
  counts; served by TGI and by the embedded server;
* ``openai`` — the OpenAI-compatible chat route (``chat_completion``): served by TGI, vLLM, KServe and the
  embedded server. The prompt is formatted by the project's template and sent as one ``user`` message; the
  serving checkpoint must then pass it through unchanged (the embedded server does when the tokenizer has no
  chat template; for vLLM/TGI give the checkpoint a pass-through template ``{{ messages[0]['content'] }}``).

Failure policy: 429, 5xx, timeouts and connection errors are retried ``max_retries`` times with full-jitter
exponential backoff (``retry_backoff_s`` doubling up to ``retry_max_backoff_s``), then ``PolicyUnavailable``;
any other 4xx is our request's fault and raises ``PolicyRejected`` at once. At most ``max_in_flight`` requests
are on the wire at any time, however many threads call; a thread waiting out a backoff does not hold a slot.

Every ``Completion`` carries the ``GenerationParams`` it was decoded with (recorded on each Sample) and, when
the server reports it, the sha256 of the policy that produced it, so a caller can verify every response.
What a server serves is read by ``policy.served`` (per serving mode); the version guard then sets
``served_model`` to the name the verified release is served under (vLLM: its release id).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx2
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OverloadedError, TextGenerationError

from cutalign.config import PolicySettings
from cutalign.v1 import common_pb2

log = logging.getLogger(__name__)

FINGERPRINT_PREFIX = "policy-sha256:"
# TGI's and OpenAI's finish reasons -> the Sample's vocabulary ("stop" from OpenAI servers may also mean EOS)
FINISH_REASONS = {"eos_token": "eos", "stop_sequence": "stop", "length": "length", "stop": "stop"}


class PolicyError(Exception):
    """A completion could not be obtained."""


class PolicyRejected(PolicyError):
    """The server refused the request (4xx other than 429): retrying the same request cannot succeed."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        super().__init__(f"policy server rejected the request (HTTP {status}): {detail}")


class PolicyUnavailable(PolicyError):
    """The server kept failing (429/5xx/timeouts/connection errors) through every retry."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        self.attempts = attempts
        super().__init__(
            f"policy server unavailable after {attempts} attempt(s): {type(last).__name__}: {last}"
        )


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "eos" | "stop" | "length"
    generated_tokens: int
    params: common_pb2.GenerationParams
    policy_sha256: str | None  # the policy that produced it, when the server says (None: it does not)
    attempts: int
    latency_s: float


def _status_of(error: BaseException) -> int | None:
    """HTTP status of an InferenceClient error (TGI-typed errors keep it on their cause)."""
    for e in (error, error.__cause__):
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            return int(e.response.status_code)
    return None


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, InferenceTimeoutError | httpx2.TransportError | OverloadedError):
        return True
    status = _status_of(error)
    return status is not None and (status == 429 or status >= 500)


class PolicyClient:
    def __init__(self, settings: PolicySettings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        self._url = settings.url.rstrip("/")
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self._client = InferenceClient(
            model=self._url, provider="hf-inference", token=token, timeout=settings.timeout_s
        )
        # the model name requests carry; the version guard sets it to what it verified (vLLM: the release id)
        self.served_model = settings.model_name
        self._slots = threading.BoundedSemaphore(settings.max_in_flight)
        self._pool = ThreadPoolExecutor(settings.max_in_flight, thread_name_prefix="policy-client")

    # -- parameters ----------------------------------------------------------------------------------------

    def generation_params(self, seed: int = 0) -> common_pb2.GenerationParams:
        s = self.settings
        return common_pb2.GenerationParams(
            do_sample=s.do_sample,
            temperature=s.temperature if s.do_sample else 0.0,
            top_p=s.top_p if s.do_sample else 1.0,
            max_new_tokens=s.max_new_tokens,
            stop=s.stop,
            seed=seed if s.do_sample else 0,
            template=s.template,
            n=s.n,
            backend=s.backend,
        )

    # -- calls ---------------------------------------------------------------------------------------------

    def complete(self, prompt: str, *, seed: int = 0) -> Completion:
        """One response to an already formatted prompt; raises ``PolicyRejected`` / ``PolicyUnavailable``."""
        params = self.generation_params(seed)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._slots:
                    text, reason, tokens, sha = self._call(prompt, params)
                return Completion(
                    text,
                    FINISH_REASONS.get(reason, reason),
                    tokens,
                    params,
                    sha,
                    attempt,
                    time.monotonic() - started,
                )
            except (HfHubHTTPError, TextGenerationError, InferenceTimeoutError, httpx2.TransportError) as e:
                if not is_retryable(e):
                    raise PolicyRejected(_status_of(e) or 400, str(e)) from e
                if attempt > self.settings.max_retries:
                    raise PolicyUnavailable(attempt, e) from e
                delay = random.uniform(
                    0,
                    min(
                        self.settings.retry_max_backoff_s, self.settings.retry_backoff_s * 2 ** (attempt - 1)
                    ),
                )
                log.warning("policy call failed (attempt %d), retrying in %.2fs: %s", attempt, delay, e)
                self._sleep(delay)

    def complete_many(self, prompts: Sequence[tuple[str, int]]) -> list[Completion | PolicyError]:
        """``complete`` for each (prompt, seed), ``max_in_flight`` at a time; failures come back in place."""

        def one(item: tuple[str, int]) -> Completion | PolicyError:
            try:
                return self.complete(item[0], seed=item[1])
            except PolicyError as e:
                return e

        return list(self._pool.map(one, prompts))

    def _call(self, prompt: str, params: common_pb2.GenerationParams) -> tuple[str, str, int, str | None]:
        sampled = params.do_sample
        stop = list(params.stop) or None
        if self.settings.backend == "tgi":
            out = self._client.text_generation(
                prompt,
                details=True,
                max_new_tokens=params.max_new_tokens,
                do_sample=sampled,
                temperature=params.temperature if sampled else None,
                top_p=params.top_p if sampled and params.top_p < 1 else None,
                seed=params.seed if sampled else None,
                stop=stop,
            )
            details = out.details
            if details is None:
                raise PolicyError(f"{self._url} answered without details: not a TGI-compatible server")
            return out.generated_text, str(details.finish_reason), int(details.generated_tokens), _sha_of(out)
        chat = self._client.chat_completion(
            [{"role": "user", "content": prompt}],
            model=self.served_model,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature if sampled else 0.0,
            top_p=params.top_p if sampled else None,
            seed=params.seed if sampled else None,
            stop=stop,
        )
        choice = chat.choices[0]
        fingerprint = chat.system_fingerprint or ""
        sha = _sha_of(chat) or (
            fingerprint.removeprefix(FINGERPRINT_PREFIX)
            if fingerprint.startswith(FINGERPRINT_PREFIX)
            else None
        )
        return choice.message.content or "", str(choice.finish_reason), int(chat.usage.completion_tokens), sha

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sha_of(output: Any) -> str | None:
    """The ``policy_sha256`` field the embedded server adds (kept by InferenceClient as an extra key)."""
    value = output.get("policy_sha256") if isinstance(output, dict) else None
    return str(value) if value else None
