"""``PolicyClient``: call the served policy through ``huggingface_hub``, safely and boundedly.

Two backends, chosen by ``PolicySettings.backend``:
* ``tgi`` — TGI's native route (``InferenceClient.text_generation`` with ``details=True``): exact finish
  reasons and token counts; served by TGI and by the embedded server. It is sent rendered text: a text
  template's, or for ``chat`` the tokenizer's chat template applied here (``PolicySettings.tokenizer``);
* ``openai`` — the OpenAI-compatible routes of TGI, vLLM, KServe and the embedded server: a text prompt goes
  to ``/v1/completions`` verbatim (so no server wraps an Alpaca prompt in a chat template), chat messages to
  ``/v1/chat/completions`` (``InferenceClient.chat_completion``), where the server applies its tokenizer's
  chat template exactly as training does.

What is sent for a prompt comes from ``cutalign.templates`` (``request``); ``template=auto`` resolves with the
configured tokenizer, or else with the embedded server's ``GET /info`` (``chat_template``).

Offline mode: ``HF_HUB_OFFLINE=1`` makes huggingface_hub's shared HTTP session refuse every request — its
request hook raises ``OfflineModeIsEnabled`` whatever the host. Offline mode is about the Hugging Face Hub,
and a policy server is an explicit URL, so the client installs (once per process, through the public
``set_client_factory``) the same session with a hook that applies huggingface_hub's own checks to Hub hosts
only: the Hub stays unreachable offline, loopback and any explicit endpoint stay reachable.

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
from urllib.parse import urlparse

import httpx2
from huggingface_hub import InferenceClient, constants, set_client_factory
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OverloadedError, TextGenerationError
from huggingface_hub.utils import get_session, hf_raise_for_status
from huggingface_hub.utils._http import hf_request_event_hook  # the hook the default session installs

from cutalign.config import PolicySettings
from cutalign.templates import PromptFormat, Request
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
    prompt_token_ids: tuple[int, ...] | None = None  # the prompt as the server tokenized it, when asked


HUB_HOSTS = ("huggingface.co", "hf.co")
_factory_lock = threading.Lock()
_factory_installed = False


def is_hub_url(url: str) -> bool:
    """Whether ``url`` is on the Hugging Face Hub (its configured endpoint or a huggingface.co host)."""
    host = (urlparse(str(url)).hostname or "").lower()
    hub = (urlparse(constants.ENDPOINT).hostname or "").lower()
    return host == hub or any(host == h or host.endswith("." + h) for h in HUB_HOSTS)


def _hub_only_hook(request: httpx2.Request) -> str | None:
    """huggingface_hub's request hook (offline refusal, request id, debug log) for Hub URLs; nothing else."""
    return hf_request_event_hook(request) if is_hub_url(str(request.url)) else None


def allow_explicit_endpoints_offline() -> None:
    """Let huggingface_hub's shared session reach explicit (non-Hub) URLs in offline mode; see the module doc.

    The session is huggingface_hub's default one (``default_client_factory``) with the hook narrowed to Hub
    hosts. Installed once per process; it replaces any other client factory.
    """
    global _factory_installed
    with _factory_lock:
        if _factory_installed:
            return
        set_client_factory(
            lambda: httpx2.Client(
                event_hooks={"request": [_hub_only_hook]}, follow_redirects=True, timeout=None
            )
        )
        _factory_installed = True


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
        allow_explicit_endpoints_offline()
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = InferenceClient(
            model=self._url, provider="hf-inference", token=token, timeout=settings.timeout_s
        )
        # the model name requests carry; the version guard sets it to what it verified (vLLM: the release id)
        self.served_model = settings.model_name
        self._slots = threading.BoundedSemaphore(settings.max_in_flight)
        self._pool = ThreadPoolExecutor(settings.max_in_flight, thread_name_prefix="policy-client")
        self._tokenizer: Any = None
        self._server_chat_template: bool | None = None  # from GET /info, when the server says
        self._format: PromptFormat | None = None

    # -- prompts -------------------------------------------------------------------------------------------

    def prompt_format(self) -> PromptFormat:
        """How this client renders prompts: ``template``, with ``auto`` resolved (see the module doc)."""
        name = self.settings.template
        tokenizer = self._load_tokenizer()
        if name == "auto" and tokenizer is None:
            if self._server_chat_template is None:
                self._read_server_chat_template()
            if self._server_chat_template is None:
                raise PolicyError(
                    f"template 'auto' cannot be resolved: {self._url} does not say whether its tokenizer has "
                    "a chat template (TGI and vLLM do not); set CUTALIGN_POLICY_TOKENIZER to the policy's "
                    "tokenizer, or CUTALIGN_POLICY_TEMPLATE to chat, plain or short"
                )
            name = "chat" if self._server_chat_template else "plain"
        fmt = PromptFormat.of(name, tokenizer)
        if fmt.is_chat and self.settings.backend == "tgi" and tokenizer is None:
            raise PolicyError(
                "the 'chat' template on the tgi backend renders the chat template here: set "
                "CUTALIGN_POLICY_TOKENIZER to the policy's tokenizer (a model directory or hub id)"
            )
        self._format = fmt
        return fmt

    def request(self, instruction: str, input: str = "") -> Request:
        """What this client sends for a prompt: completion text, or chat messages (the openai backend)."""
        fmt = self.prompt_format()
        if fmt.is_chat and self.settings.backend == "tgi":
            return fmt.plain(instruction, input)  # TGI's native route continues rendered text
        return fmt.request(instruction, input)

    def _load_tokenizer(self) -> Any:
        if self._tokenizer is None and self.settings.tokenizer:
            from transformers import AutoTokenizer  # deferred: only clients that render chat need it

            self._tokenizer = AutoTokenizer.from_pretrained(self.settings.tokenizer)
        return self._tokenizer

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
            template=self._format.name if self._format is not None else s.template,
            n=s.n,
            backend=s.backend,
        )

    # -- calls ---------------------------------------------------------------------------------------------

    def complete(self, prompt: Request, *, seed: int = 0, token_ids: bool = False) -> Completion:
        """One response to a prompt — rendered text, or chat messages (``request`` makes either); raises
        ``PolicyRejected`` / ``PolicyUnavailable``. ``token_ids`` asks the server for the prompt's token ids
        (vLLM's ``return_token_ids``, TGI's ``decoder_input_details``)."""
        params = self.generation_params(seed)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._slots:
                    text, reason, tokens, sha, prompt_ids = self._call(prompt, params, token_ids)
                return Completion(
                    text,
                    FINISH_REASONS.get(reason, reason),
                    tokens,
                    params,
                    sha,
                    attempt,
                    time.monotonic() - started,
                    prompt_ids,
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

    def complete_many(self, prompts: Sequence[tuple[Request, int]]) -> list[Completion | PolicyError]:
        """``complete`` for each (prompt, seed), ``max_in_flight`` at a time; failures come back in place."""

        def one(item: tuple[Request, int]) -> Completion | PolicyError:
            try:
                return self.complete(item[0], seed=item[1])
            except PolicyError as e:
                return e

        return list(self._pool.map(one, prompts))

    def _call(
        self, prompt: Request, params: common_pb2.GenerationParams, token_ids: bool
    ) -> tuple[str, str, int, str | None, tuple[int, ...] | None]:
        """(text, finish reason, generated tokens, policy sha256, prompt token ids) of one request."""
        sampled = params.do_sample
        stop = list(params.stop) or None
        if self.settings.backend == "tgi":
            if not isinstance(prompt, str):
                raise PolicyError("the tgi backend sends text: render chat messages first (request())")
            out = self._client.text_generation(
                prompt,
                details=True,
                decoder_input_details=token_ids or None,
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
            prefill = tuple(int(t.id) for t in details.prefill) if token_ids else None
            return (
                out.generated_text,
                str(details.finish_reason),
                int(details.generated_tokens),
                _sha_of(out),
                prefill,
            )
        openai: dict[str, Any] = {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if sampled else 0.0,
            "top_p": params.top_p if sampled else None,
            "seed": params.seed if sampled else None,
            "stop": stop,
        }
        if isinstance(prompt, str):
            return self._text_completion(prompt, openai, token_ids)
        chat = self._client.chat_completion(  # type: ignore[call-overload]  # openai holds its keywords
            list(prompt),
            model=self.served_model,
            extra_body={"return_token_ids": True} if token_ids else None,
            **openai,
        )
        choice = chat.choices[0]
        ids = chat.get("prompt_token_ids") if token_ids else None
        return (
            choice.message.content or "",
            str(choice.finish_reason),
            int(chat.usage.completion_tokens),
            _sha_of(chat) or _fingerprint_sha(chat.system_fingerprint),
            tuple(ids) if ids is not None else None,
        )

    def _text_completion(
        self, prompt: str, openai: dict[str, Any], token_ids: bool
    ) -> tuple[str, str, int, str | None, tuple[int, ...] | None]:
        """``POST /v1/completions`` (InferenceClient has no text-completion call) on huggingface_hub's
        session, with its error types, so retries and offline handling are those of the other routes."""
        body = {
            "model": self.served_model,
            "prompt": prompt,
            **{k: v for k, v in openai.items() if v is not None},
        }
        if token_ids:
            body["return_token_ids"] = True
        try:
            response = get_session().post(
                f"{self._url}/v1/completions",
                json=body,
                headers=self._headers,
                timeout=self.settings.timeout_s,
            )
        except httpx2.TimeoutException as e:
            raise InferenceTimeoutError(f"Inference call timed out: {self._url}/v1/completions") from e
        hf_raise_for_status(response)
        out = response.json()
        try:
            choice = out["choices"][0]
            ids = choice.get("prompt_token_ids") if token_ids else None
            return (
                str(choice.get("text") or ""),
                str(choice.get("finish_reason")),
                int(out["usage"]["completion_tokens"]),
                _sha_of(out) or _fingerprint_sha(out.get("system_fingerprint")),
                tuple(ids) if ids is not None else None,
            )
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise PolicyError(
                f"{self._url}/v1/completions answered an unexpected body: {str(out)[:200]}"
            ) from e

    # -- the server's tokenizer -----------------------------------------------------------------------------

    def _read_server_chat_template(self) -> None:
        """Whether the server's tokenizer has a chat template, from ``GET /info`` when it says (the embedded
        server does; TGI and vLLM do not). What the server *serves* is read by ``cutalign.policy.served``."""
        attempt = 0
        while True:
            attempt += 1
            try:
                info = self._client.get_endpoint_info()
                break
            except (HfHubHTTPError, httpx2.TransportError) as e:
                if not is_retryable(e):
                    raise PolicyRejected(_status_of(e) or 400, f"GET {self._url}/info: {e}") from e
                if attempt > self.settings.max_retries:
                    raise PolicyUnavailable(attempt, e) from e
                self._sleep(random.uniform(0, self.settings.retry_backoff_s * 2 ** (attempt - 1)))
        chat = info.get("chat_template")
        self._server_chat_template = chat if isinstance(chat, bool) else None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fingerprint_sha(fingerprint: str | None) -> str | None:
    """The policy sha256 in the embedded server's OpenAI ``system_fingerprint`` (``policy-sha256:<sha>``)."""
    if fingerprint and fingerprint.startswith(FINGERPRINT_PREFIX):
        return fingerprint.removeprefix(FINGERPRINT_PREFIX)
    return None


def _sha_of(output: Any) -> str | None:
    """The ``policy_sha256`` field the embedded server adds (kept by InferenceClient as an extra key)."""
    value = output.get("policy_sha256") if isinstance(output, dict) else None
    return str(value) if value else None
