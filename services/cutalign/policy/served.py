"""What a policy server says it serves, per serving mode: the only evidence the generator's guard accepts.

* ``embedded`` and ``kserve`` (cutalign's policy server, on its own or as KServe's predictor): ``GET /info``
  carries the full ``PolicyVersion``, with the sha256 of the files the server loaded and hashed itself;
* ``vllm``: ``GET /v1/models`` lists the base model and every loaded LoRA adapter by the id it is served
  under; the chart serves releases under their release id (``version.release_id``), which carries the
  sha256 the model sync verified before handing the files to vLLM. Each model is requested by that id;
* ``tgi``: ``GET /info`` reports ``model_id``, the path TGI was started on — ``/models/<release id>``,
  which the model sync fills — and ``model_sha``, which is null for a local directory and never trusted.

A served name that is not a release id (a Hub model id, a hand-started server) yields no version, so the
guard refuses it and says what it saw. HTTP failures are retried (429, 5xx, connection errors) with
tenacity, then raise ``PolicyUnavailable``; any other 4xx raises ``PolicyRejected``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from cutalign.config import PolicySettings
from cutalign.policy.client import PolicyRejected, PolicyUnavailable
from cutalign.policy.version import parse_release_id
from cutalign.v1 import common_pb2


@dataclass(frozen=True)
class ServedModel:
    version: common_pb2.PolicyVersion
    name: str  # the model name a request names to get this one (vLLM: its id)
    base: bool = True  # False for a LoRA adapter loaded over the base


@dataclass(frozen=True)
class Served:
    models: tuple[ServedModel, ...]
    observed: str  # what the server answered, for error messages

    def find(self, sha256: str) -> ServedModel | None:
        return next((m for m in self.models if m.version.checkpoint_sha256 == sha256), None)

    def base(self) -> ServedModel | None:
        return next((m for m in self.models if m.base), None)


def read_served(settings: PolicySettings, *, sleep: Any = None) -> Served:
    """Ask the server at ``settings.url`` what it serves, the way its ``settings.mode`` reports it."""
    url = settings.url.rstrip("/")
    if settings.mode == "vllm":
        return _vllm(url, _get_json(settings, f"{url}/v1/models", sleep))
    info = _get_json(settings, f"{url}/info", sleep)
    if settings.mode == "tgi":
        return _tgi(url, info)
    return _embedded(url, info, settings.model_name)


def _embedded(url: str, info: dict[str, Any], model_name: str) -> Served:
    policy = info.get("policy") if isinstance(info.get("policy"), dict) else {}
    assert isinstance(policy, dict)
    version = common_pb2.PolicyVersion(
        model_id=str(policy.get("model_id", "")),
        checkpoint_sha256=str(policy.get("checkpoint_sha256", "")),
        iteration=int(policy.get("iteration", 0)),
        uri=str(policy.get("uri", "")),
    )
    observed = f"GET {url}/info reports policy {policy or 'none'} (model_id={info.get('model_id')!r})"
    models = (ServedModel(version, model_name),) if version.checkpoint_sha256 else ()
    return Served(models, observed)


def _tgi(url: str, info: dict[str, Any]) -> Served:
    model_id = str(info.get("model_id") or "")
    observed = f"GET {url}/info reports model_id={model_id!r}, model_sha={info.get('model_sha')!r}"
    version = parse_release_id(model_id)
    if version is None:
        return Served((), observed + " (not a release directory of the model sync: unverifiable)")
    version.uri = model_id
    return Served((ServedModel(version, "tgi"),), observed)


def _vllm(url: str, listing: dict[str, Any]) -> Served:
    cards = [c for c in listing.get("data") or [] if isinstance(c, dict)]
    ids = [str(c.get("id")) for c in cards]
    models = []
    for card in cards:
        version = parse_release_id(str(card.get("id", "")))
        if version is not None:
            models.append(ServedModel(version, str(card["id"]), base=card.get("parent") is None))
    return Served(tuple(models), f"GET {url}/v1/models lists {ids}")


def _get_json(settings: PolicySettings, url: str, sleep: Any) -> dict[str, Any]:
    headers = (
        {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"} if settings.api_token else {}
    )
    retrying = Retrying(
        stop=stop_after_attempt(settings.max_retries + 1),
        wait=wait_random_exponential(multiplier=settings.retry_backoff_s, max=settings.retry_max_backoff_s),
        retry=retry_if_exception(_retryable),
        reraise=True,
        **({"sleep": sleep} if sleep is not None else {}),
    )
    try:
        response = retrying(_get, url, headers, settings.timeout_s)
    except (httpx2.TransportError, httpx2.HTTPStatusError) as e:
        if isinstance(e, httpx2.HTTPStatusError) and not _retryable(e):
            raise PolicyRejected(e.response.status_code, f"GET {url}: {e.response.text[:500]}") from e
        raise PolicyUnavailable(retrying.statistics.get("attempt_number", 1), e) from e
    answer = response.json()
    if not isinstance(answer, dict):
        raise PolicyRejected(
            response.status_code, f"GET {url} answered {type(answer).__name__}, not an object"
        )
    return answer


def _get(url: str, headers: dict[str, str], timeout_s: float) -> httpx2.Response:
    response = httpx2.get(url, headers=headers, timeout=timeout_s)
    response.raise_for_status()
    return response


def _retryable(error: BaseException) -> bool:
    if isinstance(error, httpx2.TransportError):
        return True
    if isinstance(error, httpx2.HTTPStatusError):
        return error.response.status_code == 429 or error.response.status_code >= 500
    return False
