"""Stand-ins for the serving parts that cannot run here: vLLM's OpenAI server, TGI, a Kubernetes API server,
and a Kubernetes Service in front of whichever "pod" currently serves.

None of them runs a model. Each answers the way the real server does on the points cutalign relies on (read
from their source), over real HTTP on 127.0.0.1, so the real clients (httpx2, huggingface_hub's
InferenceClient, the official ``kubernetes`` client) talk to them unchanged:

* ``VLLMStandIn`` — vLLM's OpenAI server (``vllm serve MODEL --served-model-name NAME --enable-lora``):
  ``GET /v1/models`` lists the base card (``parent: null``, ``root`` = the model path) and one card per
  loaded adapter (``root`` = its path, ``parent`` = the base name); ``POST /v1/load_lora_adapter`` and
  ``/v1/unload_lora_adapter`` exist only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` (else 404), take
  ``{"lora_name", "lora_path"[, "load_inplace"]}`` / ``{"lora_name"[, "lora_int_id"]}`` and answer 200 with a
  plain-text ``Success: ...``, or an ``ErrorResponse`` (``{"error": {"message", "type", "param", "code"}}``):
  400 ``InvalidUserInput`` for a missing field or a name already loaded, 404 ``NotFoundError`` for a path
  with no adapter ("No adapter found") or an unknown name, 400 ``BadRequestError`` for a broken adapter
  (vllm ``entrypoints/openai/serving_models.py``, ``entrypoints/serve/lora/api_router.py``);
  ``/v1/completions`` and ``/v1/chat/completions`` answer for a listed model and 404 "The model `X` does not
  exist." otherwise; ``--api-key`` guards every ``/v1`` route (401). Completions name the model that
  answered; there is no policy hash on them (vLLM has none);
* ``TGIStandIn`` — text-generation-inference started as ``--model-id PATH``: ``GET /info`` reports
  ``model_id`` = that path and ``model_sha: null`` (a local directory has no Hub revision), ``POST
  /generate`` answers ``{"generated_text", "details"}``; it refuses to start on a path that does not exist;
* ``FakeKubernetesAPI`` — the API server for the objects promotion patches: GET and PATCH of an
  InferenceService (``application/merge-patch+json``, custom resources take no strategic merge: lists are
  replaced whole) and of a Deployment (strategic merge patch; maps merge as in a merge patch, which is all
  a promotion sends), ``metadata.resourceVersion`` as an optimistic-concurrency precondition (409
  ``Conflict``), ``metadata.generation`` bumped on every spec change, 404 ``NotFound`` Status objects. A
  test plays the controller: ``on_spec_change`` runs (in a thread) when a spec changes, and ``set_status``
  writes the status a controller would;
* ``ServiceStandIn`` — a Kubernetes Service: a stable URL forwarding to the current backend, so a rollout
  replaces the "pod" behind it while clients keep their URL.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Handler = Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]


class _StandInServer:
    """A ThreadingHTTPServer on 127.0.0.1 (free port) that hands every request to ``handle``."""

    def __init__(self, handle: Handler) -> None:
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, out_headers, payload = owner.handle(self.command, self.path, headers, body)
                self.send_response(status)
                for name, value in out_headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.handle = handle
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> _StandInServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json(status: int, body: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"content-type": "application/json"}, json.dumps(body).encode()


def _text(status: int, body: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"content-type": "text/plain; charset=utf-8"}, body.encode()


# -- vLLM --------------------------------------------------------------------------------------------------


class VLLMStandIn(_StandInServer):
    """vLLM's OpenAI server on ``model_path``, served as ``served_model_name`` (see the module docstring)."""

    def __init__(
        self,
        model_path: Path,
        served_model_name: str,
        *,
        runtime_lora_updating: bool = True,
        api_key: str | None = None,
        max_model_len: int = 512,
    ) -> None:
        if not (model_path / "config.json").is_file():
            raise RuntimeError(f"vLLM cannot start: {model_path} is not a model directory")
        self.base = (served_model_name, str(model_path))
        self.runtime_lora_updating = runtime_lora_updating
        self.api_key = api_key
        self.max_model_len = max_model_len
        self.adapters: dict[str, str] = {}  # lora_name -> lora_path, in load order
        self.requests: list[tuple[str, str]] = []  # (path, model) of every completion request
        self._lock = threading.Lock()
        super().__init__(self._route)

    def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        authorized = not self.api_key or headers.get("authorization") == f"Bearer {self.api_key}"
        if path.startswith("/v1") and not authorized:
            return _json(401, {"error": "Unauthorized"})
        if (method, path) == ("GET", "/health"):
            return 200, {}, b""
        if (method, path) == ("GET", "/v1/models"):
            return _json(200, {"object": "list", "data": self._cards()})
        lora_route = path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
        if method == "POST" and lora_route and self.runtime_lora_updating:
            try:
                request = json.loads(body or b"{}")
            except json.JSONDecodeError:
                return self._error(400, "BadRequestError", "invalid JSON body")
            return self._load(request) if path.endswith("/load_lora_adapter") else self._unload(request)
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            return self._complete(path, json.loads(body or b"{}"))
        return _json(404, {"detail": "Not Found"})  # FastAPI's answer for a route that is not registered

    def _cards(self) -> list[dict[str, Any]]:
        created = int(time.time())
        name, root = self.base
        cards = [self._card(name, root, None, created) | {"max_model_len": self.max_model_len}]
        with self._lock:
            cards += [self._card(n, p, name, created) for n, p in self.adapters.items()]
        return cards

    @staticmethod
    def _card(model_id: str, root: str, parent: str | None, created: int) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": root,
            "parent": parent,
            "max_model_len": None,
            "permission": [{"object": "model_permission"}],
        }

    @staticmethod
    def _error(code: int, kind: str, message: str) -> Any:
        return _json(code, {"error": {"message": message, "type": kind, "param": None, "code": code}})

    def _load(self, request: dict[str, Any]) -> Any:
        name, path = request.get("lora_name"), request.get("lora_path")
        if not name or not path:
            return self._error(400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.")
        with self._lock:
            if name in self.adapters and not request.get("load_inplace"):
                return self._error(
                    400, "InvalidUserInput", f"The lora adapter '{name}' has already been loaded."
                )
            adapter = Path(path)
            if not (adapter / "adapter_config.json").is_file():
                message = f"Loading lora {name} failed: No adapter found for {path}"
                return self._error(404, "NotFoundError", message)
            try:
                json.loads((adapter / "adapter_config.json").read_text())["r"]
            except (ValueError, KeyError) as e:
                return self._error(400, "BadRequestError", f"Loading lora {name} failed: {e!r}")
            self.adapters[name] = path
        return _text(200, f"Success: LoRA adapter '{name}' added successfully.")

    def _unload(self, request: dict[str, Any]) -> Any:
        name = request.get("lora_name")
        if not name:
            message = "'lora_name' needs to be provided to unload a LoRA adapter."
            return self._error(400, "InvalidUserInput", message)
        with self._lock:
            if name not in self.adapters:
                return self._error(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
            del self.adapters[name]
        return _text(200, f"Success: LoRA adapter '{name}' removed successfully.")

    def _complete(self, path: str, request: dict[str, Any]) -> Any:
        model = str(request.get("model") or "")
        with self._lock:
            known = model == self.base[0] or model in self.adapters
            self.requests.append((path, model))
        if not known:
            return self._error(404, "NotFoundError", f"The model `{model}` does not exist.")
        text = f"[{model}]"
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        common = {
            "id": "cmpl-standin",
            "created": int(time.time()),
            "model": model,
            "usage": usage,
            "system_fingerprint": None,
        }
        if path.endswith("/chat/completions"):
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "length", "logprobs": None}
            return _json(200, {**common, "object": "chat.completion", "choices": [choice]})
        choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
        return _json(200, {**common, "object": "text_completion", "choices": [choice]})


# -- TGI ---------------------------------------------------------------------------------------------------


class TGIStandIn(_StandInServer):
    """text-generation-inference started with ``--model-id model_id`` (a local directory)."""

    def __init__(self, model_id: str) -> None:
        if not Path(model_id).is_dir():
            raise RuntimeError(f"TGI cannot start: {model_id} is not a local model directory")
        self.model_id = model_id
        super().__init__(self._route)

    def info(self) -> dict[str, Any]:
        """TGI 3.x's ``/info`` (router ``Info``): ``model_sha`` is null for a local directory."""
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_pipeline_tag": None,
            "model_dtype": "torch.float16",
            "model_device_type": "cuda",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": 4096,
            "max_total_tokens": 6144,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": "3.3.4",
            "sha": None,
            "docker_label": None,
        }

    def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if (method, path) == ("GET", "/health"):
            return 200, {}, b""
        if (method, path) == ("GET", "/info"):
            return _json(200, self.info())
        if (method, path) in (("POST", "/generate"), ("POST", "/")):
            request = json.loads(body or b"{}")
            if not request.get("inputs"):
                error = "Input validation error: `inputs` cannot be empty"
                return _json(422, {"error": error, "error_type": "validation"})
            params = request.get("parameters") or {}
            out = {"generated_text": f"[{Path(self.model_id).name}]"}
            if params.get("details"):
                out["details"] = {
                    "finish_reason": "length",
                    "generated_tokens": 1,
                    "seed": None,
                    "prefill": [],
                    "tokens": [],
                }
            return _json(200, [out] if path == "/" else out)
        return _json(404, {"error": "Not Found"})


# -- Kubernetes --------------------------------------------------------------------------------------------


_RESOURCES = {  # URL path segment -> (apiVersion, kind, accepted PATCH content types)
    "apis/apps/v1/deployments": (
        "apps/v1",
        "Deployment",
        ("application/strategic-merge-patch+json", "application/merge-patch+json"),
    ),
    "apis/serving.kserve.io/v1beta1/inferenceservices": (
        "serving.kserve.io/v1beta1",
        "InferenceService",
        ("application/merge-patch+json", "application/json-patch+json"),
    ),
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, ``null`` deletes, anything else (lists included) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeKubernetesAPI(_StandInServer):
    """The Kubernetes API server for Deployments and InferenceServices (see the module docstring)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (resource, ns, name) -> object
        self.on_spec_change: Callable[[dict[str, Any]], None] | None = None
        self.patches: list[tuple[str, dict[str, Any]]] = []  # (content type, body) of every PATCH
        self._version = 100
        self._lock = threading.Lock()
        super().__init__(self._route)

    def add(self, obj: dict[str, Any]) -> None:
        key = (obj["apiVersion"], obj["kind"])
        resource = next(r for r, (api, kind, _) in _RESOURCES.items() if (api, kind) == key)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        with self._lock:
            self._version += 1
            meta.update(resourceVersion=str(self._version), generation=1, uid=f"uid-{self._version}")
            self.objects[(resource, meta["namespace"], meta["name"])] = obj

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        resource = next(r for r, (_, k, _) in _RESOURCES.items() if k == kind)
        with self._lock:
            return copy.deepcopy(self.objects[(resource, namespace, name)])

    def set_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """What the object's controller writes (observedGeneration, conditions, replica counts)."""
        resource = next(r for r, (_, k, _) in _RESOURCES.items() if k == kind)
        with self._lock:
            obj = self.objects[(resource, namespace, name)]
            obj["status"] = copy.deepcopy(status)
            self._version += 1
            obj["metadata"]["resourceVersion"] = str(self._version)

    def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        parts = path.split("?")[0].strip("/").split("/")
        # /apis/<group>/<version>/namespaces/<ns>/<plural>/<name>
        if len(parts) != 7 or parts[3] != "namespaces":
            return self._status(404, "NotFound", f"the server could not find the requested resource ({path})")
        resource = "/".join([*parts[:3], parts[5]])
        namespace, name = parts[4], parts[6]
        if resource not in _RESOURCES:
            return self._status(404, "NotFound", "the server could not find the requested resource")
        with self._lock:
            obj = self.objects.get((resource, namespace, name))
            if obj is None:
                plural_group = f"{parts[5]}.{parts[1]}" if parts[1] != "apps" else f"{parts[5]}.apps"
                return self._status(404, "NotFound", f'{plural_group} "{name}" not found')
            if method == "GET":
                return _json(200, obj)
            if method != "PATCH":
                return self._status(405, "MethodNotAllowed", f"{method} is not supported here")
            content_type = headers.get("content-type", "")
            accepted = _RESOURCES[resource][2]
            if content_type not in accepted:
                message = (
                    "the body of the request was in an unknown format - accepted media types include: "
                    + ", ".join(accepted)
                )
                return self._status(415, "UnsupportedMediaType", message)
            if content_type == "application/json-patch+json":
                return self._status(422, "Invalid", "this fake implements merge patches only")
            patch = json.loads(body)
            self.patches.append((content_type, patch))
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
                message = (
                    f'Operation cannot be fulfilled on {parts[5]} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again"
                )
                return self._status(409, "Conflict", message)
            patched = merge_patch(obj, {**patch, "status": None})
            patched["status"] = obj.get("status")
            spec_changed = patched.get("spec") != obj.get("spec")
            if patched != obj:
                self._version += 1
                patched["metadata"]["resourceVersion"] = str(self._version)
            if spec_changed:
                patched["metadata"]["generation"] = int(obj["metadata"]["generation"]) + 1
            self.objects[(resource, namespace, name)] = patched
            answer = copy.deepcopy(patched)
        if spec_changed and self.on_spec_change is not None:
            threading.Thread(target=self.on_spec_change, args=(copy.deepcopy(answer),), daemon=True).start()
        return _json(200, answer)

    @staticmethod
    def _status(code: int, reason: str, message: str) -> Any:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        return _json(code, {**status, "message": message, "reason": reason, "code": code})

    def client(self) -> Any:
        """An official ``kubernetes`` ApiClient talking to this fake."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)


class ServiceStandIn(_StandInServer):
    """A Kubernetes Service: a stable URL in front of whichever backend (pod) serves now."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        super().__init__(self._forward)

    def retarget(self, backend: str) -> None:
        self.backend = backend

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        keep = {k: v for k, v in headers.items() if k in ("content-type", "authorization", "accept")}
        request = urllib.request.Request(self.backend + path, data=body or None, headers=keep, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                content_type = response.headers.get("content-type", "")
                return response.status, {"content-type": content_type}, response.read()
        except urllib.error.HTTPError as e:
            return e.code, {"content-type": e.headers.get("content-type", "")}, e.read()
        except urllib.error.URLError as e:
            return _json(503, {"error": f"no endpoints available: {e}"})
