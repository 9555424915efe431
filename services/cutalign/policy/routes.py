"""HTTP routes of the embedded policy server beyond KServe's v1/v2 protocols.

KServe 0.21's own OpenAI data plane (``kserve.protocol.rest.openai``) imports vLLM's request types at import
time, and vLLM cannot be installed beside torch 2.13 (``kserve[llm]`` pins torch 2.11). So the routes a policy
client needs are added here to KServe's FastAPI app, with the wire formats of the servers the project deploys:

* OpenAI-compatible: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (also under KServe's
  ``/openai`` prefix) — what ``InferenceClient.chat_completion`` calls on TGI, vLLM and KServe alike;
* TGI-native: ``POST /generate`` and ``POST /`` (``InferenceClient.text_generation``), ``GET /info``,
  ``GET /health``.

The admin routes (``/v1/policy/version``, ``/v1/policy/load``) are in ``admin.py``.

Finish reasons follow TGI (``eos_token``, ``stop_sequence``, ``length``) on every route, so clients can tell
an EOS from a stop sequence. Every response names the exact policy that produced it (``policy_sha256``; also
``system_fingerprint = "policy-sha256:<sha>"`` on chat). Streaming is not offered: requests are decoded in
batches, and a stream request gets a 400 rather than a fake stream.

Prompts: the completions and TGI routes continue the text they are sent, verbatim (the project's client
sends the ``plain``/``short`` templates' text there, so no Alpaca prompt is ever wrapped in a chat template);
the chat route renders its messages with ``cutalign.templates.render_chat`` — the tokenizer's chat template,
exactly as training renders the ``chat`` template. A model without a chat template takes exactly one ``user``
message whose content is used verbatim as the prompt. ``GET /info`` says whether the served tokenizer has a
chat template (``chat_template``), which is how a client's ``template=auto`` resolves.

Token ids, for checking that training and serving see the same tokens: vLLM's ``return_token_ids`` on the
OpenAI routes (``prompt_token_ids`` and each choice's ``token_ids``), TGI's ``decoder_input_details`` on its
routes (``details.prefill``: each prompt token's id, text and log-probability).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.routing import APIRouter
from kserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, Field

from cutalign.policy.batching import Generated
from cutalign.policy.generation import SamplingParams
from cutalign.policy.model import PolicyModel, json_body, parse_body, version_json
from cutalign.templates import has_chat_template, render_chat

TGI_FINISH = {"eos": "eos_token", "stop": "stop_sequence", "length": "length"}
FINGERPRINT_PREFIX = "policy-sha256:"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class OpenAIParameters(BaseModel):
    """The sampling fields of OpenAI requests that this server honours; any other field is a 400."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0)  # OpenAI semantics: 0 is greedy, anything else samples
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0)
    n: int = Field(default=1, ge=1, le=16)
    stream: Literal[False] = False
    return_token_ids: bool = False  # vLLM's extension: prompt_token_ids and each choice's token_ids


class ChatRequest(OpenAIParameters):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(OpenAIParameters):
    prompt: str | list[str]


class TGIParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool = False
    temperature: float | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(default=None, ge=0)
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: Literal[False] = False


class TGIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str = Field(min_length=1)
    parameters: TGIParameters = Field(default_factory=TGIParameters)
    stream: Literal[False] = False


def _stops(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _openai_sampling(model: PolicyModel, r: OpenAIParameters, choice: int) -> SamplingParams:
    return model.sampling(
        max_new_tokens=r.max_tokens,
        do_sample=r.temperature > 0,
        temperature=r.temperature or 1.0,
        top_p=r.top_p,
        stop=_stops(r.stop),
        seed=None if r.seed is None else r.seed + choice,  # n choices from one seed must differ
    )


def _one_version(generated: list[Generated]) -> str:
    shas = {g.version.checkpoint_sha256 for g in generated}
    if len(shas) != 1:  # a hot reload landed between two rows of this request
        raise HTTPException(503, "the policy changed while this request was decoded; retry it")
    return shas.pop()


def chat_prompt(model: PolicyModel, messages: list[ChatMessage]) -> str:
    tokenizer = model.policy.tokenizer
    if has_chat_template(tokenizer):
        return render_chat(tokenizer, [m.model_dump() for m in messages])
    if len(messages) != 1 or messages[0].role != "user":
        raise InvalidInput(
            "this policy has no chat template: send exactly one 'user' message holding the formatted prompt"
        )
    return messages[0].content


def register_routes(app: FastAPI, model: PolicyModel) -> None:
    """Add the OpenAI and TGI routes for ``model`` to KServe's app (before KServe adds its own)."""
    openai = APIRouter()

    @openai.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> dict[str, Any]:
        r = parse_body(ChatRequest, await json_body(request))
        if not r.messages[-1].content:
            raise InvalidInput("the last message is empty")
        prompt = chat_prompt(model, r.messages)
        generated = await model.generate([prompt] * r.n, [_openai_sampling(model, r, i) for i in range(r.n)])
        sha = _one_version(generated)
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.name,
            "system_fingerprint": FINGERPRINT_PREFIX + sha,
            "policy_sha256": sha,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": g.result.text},
                    "finish_reason": TGI_FINISH[g.result.finish_reason],
                    "logprobs": None,
                    **({"token_ids": list(g.result.token_ids)} if r.return_token_ids else {}),
                }
                for i, g in enumerate(generated)
            ],
            "usage": _usage(generated),
        }
        if r.return_token_ids:
            body["prompt_token_ids"] = list(generated[0].result.prompt_ids)
        return body

    @openai.post("/v1/completions")
    async def completions(request: Request) -> dict[str, Any]:
        r = parse_body(CompletionRequest, await json_body(request))
        prompts = [r.prompt] if isinstance(r.prompt, str) else r.prompt
        if not prompts or any(not p for p in prompts):
            raise InvalidInput("prompt must be a non-empty string or a list of non-empty strings")
        rows = [(p, _openai_sampling(model, r, i)) for p in prompts for i in range(r.n)]
        generated = await model.generate([p for p, _ in rows], [sp for _, sp in rows])
        sha = _one_version(generated)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model.name,
            "system_fingerprint": FINGERPRINT_PREFIX + sha,
            "policy_sha256": sha,
            "choices": [
                {
                    "index": i,
                    "text": g.result.text,
                    "finish_reason": TGI_FINISH[g.result.finish_reason],
                    "logprobs": None,
                    **(
                        {"prompt_token_ids": list(g.result.prompt_ids), "token_ids": list(g.result.token_ids)}
                        if r.return_token_ids
                        else {}
                    ),
                }
                for i, g in enumerate(generated)
            ],
            "usage": _usage(generated),
        }

    app.include_router(openai)
    app.include_router(openai, prefix="/openai")  # KServe's OpenAI route prefix

    async def tgi_generate(request: Request) -> dict[str, Any]:
        r = parse_body(TGIRequest, await json_body(request))
        p = r.parameters
        # TGI samples when asked to, or when a warper (temperature/top_p) is set
        do_sample = p.do_sample or (p.temperature not in (None, 1.0)) or (p.top_p not in (None, 1.0))
        params = model.sampling(
            max_new_tokens=p.max_new_tokens,
            do_sample=do_sample,
            temperature=p.temperature or 1.0,
            top_p=p.top_p or 1.0,
            stop=p.stop,
            seed=p.seed,
        )
        params = dataclasses.replace(params, prompt_logprobs=p.decoder_input_details)
        g = (await model.generate([r.inputs], [params]))[0]
        out: dict[str, Any] = {"generated_text": g.result.text, "policy_sha256": g.version.checkpoint_sha256}
        if p.details:
            out["details"] = {
                "finish_reason": TGI_FINISH[g.result.finish_reason],
                "generated_tokens": g.result.generated_tokens,
                "seed": p.seed if do_sample else None,
                "prefill": _prefill(model, g) if p.decoder_input_details else [],
                "tokens": [],
            }
        return out

    @app.post("/generate")
    async def generate(request: Request) -> dict[str, Any]:
        return await tgi_generate(request)

    @app.post("/")
    async def compat_generate(request: Request) -> list[dict[str, Any]]:
        return [await tgi_generate(request)]  # TGI's root route answers with a list

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """TGI's ``/info`` shape (``model_id``, ``model_sha``), plus the full policy version."""
        policy = model.policy
        limit = getattr(policy.model.config, "max_position_embeddings", None)
        return {
            "model_id": policy.version.model_id,
            "model_sha": policy.version.checkpoint_sha256,
            "model_dtype": str(policy.model.dtype),
            "model_device_type": policy.model.device.type,
            "max_total_tokens": limit,
            "max_batch_size": model.settings.max_batch_size,
            "router": "cutalign-policy-server",
            "policy": version_json(policy.version),
            "chat_template": has_chat_template(policy.tokenizer),
        }

    @app.get("/health")
    async def health() -> dict[str, bool]:
        if not model.ready:
            raise HTTPException(503, "policy not loaded")
        return {"ready": True}


def _prefill(model: PolicyModel, g: Generated) -> list[dict[str, Any]]:
    """TGI's ``details.prefill``: every prompt token's id, text and log-probability (the first has none)."""
    tokenizer = model.policy.tokenizer
    scores = g.result.prompt_logprobs or (None,) * len(g.result.prompt_ids)
    return [
        {"id": token, "text": tokenizer.decode([token]), "logprob": score}
        for token, score in zip(g.result.prompt_ids, scores, strict=True)
    ]


def _usage(generated: list[Generated]) -> dict[str, int]:
    prompt = sum(g.result.prompt_tokens for g in generated)
    completion = sum(g.result.generated_tokens for g in generated)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
