"""The policy as a ``kserve.Model``: load once, batch every request, hot-reload new versions.

KServe owns the HTTP server, health/readiness (``/v2/health/ready``, ``/v1/models/{name}``), ``/metrics`` and
the v1/v2 inference protocols; this class adds what a policy needs on top:

* ``predict`` (v1 protocol ``POST /v1/models/{name}:predict``) with
  ``{"instances": [{"prompt": "...", "parameters": {...}}]}`` — the other routes (OpenAI chat/completions,
  TGI generate) are in ``routes.py`` and call ``generate`` below, so every route decodes through one batcher;
* ``reload`` loads another checkpoint *beside* the served one (in a thread: serving continues) and swaps it in
  between batches; a failed load leaves the current policy serving;
* with ``watch_current``, a background task follows ``policy/current.json`` in S3 and reloads each new
  release, verifying the checkpoint against the sha256 the release was promoted with.

Client mistakes raise ``kserve.errors.InvalidInput`` (HTTP 400), never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import kserve
import urllib3
from fastapi import Request
from google.protobuf import json_format
from kserve.errors import InvalidInput
from minio.error import S3Error
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cutalign.config import PolicyServerSettings, S3Settings
from cutalign.policy.batching import Batcher, Generated
from cutalign.policy.generation import PromptTooLong, SamplingParams
from cutalign.policy.loading import LoadedPolicy, PolicyLoadError, load_policy
from cutalign.policy.version import describe
from cutalign.store import ArtifactStore, ChecksumMismatch, ObjectMissing
from cutalign.store.layout import CURRENT_POLICY_KEY
from cutalign.v1 import common_pb2, training_pb2

log = logging.getLogger(__name__)

RELOADS = Counter("cutalign_policy_reloads_total", "Policy hot reloads by outcome.", ["outcome"])
# what a checkpoint that cannot be served raises (the store's own failures are S3/urllib3 errors)
LOAD_FAILURES = (PolicyLoadError, ObjectMissing, ChecksumMismatch, FileNotFoundError)


class V1Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(default=None, ge=0)


class V1Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    parameters: V1Parameters = Field(default_factory=V1Parameters)


class V1Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[V1Instance] = Field(min_length=1, max_length=256)


def version_json(version: common_pb2.PolicyVersion) -> dict[str, Any]:
    return json_format.MessageToDict(
        version, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


async def json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from e


def parse_body(model_cls: type[BaseModel], payload: Any) -> Any:
    """Validate a request body; every problem becomes a 400 naming the offending field."""
    try:
        return model_cls.model_validate(payload)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()
        )
        raise InvalidInput(f"invalid request: {problems}") from e


class PolicyModel(kserve.Model):
    def __init__(self, name: str, settings: PolicyServerSettings, s3: S3Settings | None = None) -> None:
        super().__init__(name)
        self.settings = settings
        self.s3 = s3
        self.batcher: Batcher | None = None
        self.engine = settings.watch_current  # KServe then awaits start_engine() inside its event loop
        self._reload_lock: asyncio.Lock | None = None
        self._watcher: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    def load(self) -> bool:
        s = self.settings
        policy = load_policy(
            s.policy_uri,
            base_uri=s.base_model_uri,
            model_id=s.policy_model_id,
            iteration=s.iteration,
            expected_sha256=s.expected_sha256,
            s3=self.s3,
            device=s.device,
            dtype=s.dtype,
        )
        self.batcher = Batcher(policy, max_batch_size=s.max_batch_size, max_wait_ms=s.max_batch_wait_ms)
        self.ready = True
        return self.ready

    async def start_engine(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch_current(), name="policy-watch")
        self.ready = True

    def stop_engine(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.ready = False

    @property
    def policy(self) -> LoadedPolicy:
        if self.batcher is None:
            raise kserve.errors.ModelNotReady(self.name)
        return self.batcher.policy

    @property
    def version(self) -> common_pb2.PolicyVersion:
        return self.policy.version

    # -- generation ----------------------------------------------------------------------------------------

    def sampling(
        self,
        *,
        max_new_tokens: int | None,
        do_sample: bool,
        temperature: float,
        top_p: float,
        stop: list[str],
        seed: int | None,
    ) -> SamplingParams:
        try:
            return SamplingParams(
                max_new_tokens=max_new_tokens or self.settings.default_max_new_tokens,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                stop=tuple(stop),
                seed=seed,
            )
        except ValueError as e:
            raise InvalidInput(str(e)) from e

    async def generate(self, prompts: list[str], params: list[SamplingParams]) -> list[Generated]:
        """Decode each prompt through the shared batcher; a prompt that cannot fit is a 400."""
        if self.batcher is None:
            raise kserve.errors.ModelNotReady(self.name)
        batcher = self.batcher
        try:
            return list(
                await asyncio.gather(*(batcher.submit(p, sp) for p, sp in zip(prompts, params, strict=True)))
            )
        except PromptTooLong as e:
            raise InvalidInput(str(e)) from e

    async def predict(
        self,
        payload: dict[str, Any] | Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise InvalidInput("expected a JSON object {'instances': [{'prompt': ..., 'parameters': {...}}]}")
        request = parse_body(V1Request, payload)
        params = [self.sampling(**i.parameters.model_dump()) for i in request.instances]
        generated = await self.generate([i.prompt for i in request.instances], params)
        return {
            "predictions": [
                {
                    "text": g.result.text,
                    "finish_reason": g.result.finish_reason,
                    "generated_tokens": g.result.generated_tokens,
                    "prompt_tokens": g.result.prompt_tokens,
                    "policy_sha256": g.version.checkpoint_sha256,
                }
                for g in generated
            ],
            "policy": version_json(self.version),
        }

    # -- hot reload ----------------------------------------------------------------------------------------

    async def reload(
        self,
        uri: str,
        *,
        base_uri: str | None = None,
        model_id: str | None = None,
        iteration: int = 0,
        expected_sha256: str | None = None,
    ) -> tuple[common_pb2.PolicyVersion, common_pb2.PolicyVersion]:
        """Load ``uri`` beside the served policy, then swap it in. Returns (previous, new) versions."""
        if self.batcher is None:
            raise kserve.errors.ModelNotReady(self.name)
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:  # one load at a time: two would hold three models in memory
            try:
                policy = await asyncio.to_thread(
                    load_policy,
                    uri,
                    base_uri=base_uri,
                    model_id=model_id,
                    iteration=iteration,
                    expected_sha256=expected_sha256,
                    s3=self.s3,
                    device=self.settings.device,
                    dtype=self.settings.dtype,
                )
            except (*LOAD_FAILURES, S3Error, urllib3.exceptions.HTTPError) as e:
                RELOADS.labels("failed").inc()
                log.error("policy reload failed; still serving %s", describe(self.version), exc_info=e)
                raise
            previous = self.batcher.swap(policy)
            RELOADS.labels("swapped").inc()
            log.info("policy swapped: %s -> %s", describe(previous), describe(policy.version))
            return previous, policy.version

    async def _watch_current(self) -> None:
        """Follow ``policy/current.json``: reload whenever it names a checkpoint other than the served one."""
        if self.s3 is None:
            raise RuntimeError("watch_current needs S3 settings (CUTALIGN_S3_*)")
        store = ArtifactStore(self.s3)
        failed_sha256 = ""
        while True:
            try:
                release = await asyncio.to_thread(
                    store.get_manifest, CURRENT_POLICY_KEY, training_pb2.PolicyRelease
                )
            except ObjectMissing:
                release = None
            except (S3Error, urllib3.exceptions.HTTPError, ChecksumMismatch, json_format.ParseError):
                log.exception(
                    "reading %s failed; retrying in %.0fs", CURRENT_POLICY_KEY, self.settings.watch_interval_s
                )
                release = None
            wanted = release.version.checkpoint_sha256 if release is not None else ""
            if release is not None and wanted not in (self.version.checkpoint_sha256, failed_sha256):
                failed_sha256 = wanted  # cleared on success below; a broken release is not re-downloaded
                try:
                    await self.reload(
                        release.version.uri,
                        base_uri=release.base_model_uri or None,
                        model_id=release.version.model_id or None,
                        iteration=release.version.iteration,
                        expected_sha256=release.version.checkpoint_sha256,
                    )
                    failed_sha256 = ""
                except (*LOAD_FAILURES, S3Error, urllib3.exceptions.HTTPError):
                    pass  # logged and counted by reload(); keep serving until current.json changes
            await asyncio.sleep(self.settings.watch_interval_s)
