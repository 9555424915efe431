"""The model sync of vLLM and TGI pods: ``python -m cutalign.policy.sync [--follow]``.

vLLM and TGI read weights from a directory; releases are ``s3://`` prefixes. The sync puts the promoted
release where the server reads it, and serves nothing it has not verified:

* **init container** (``python -m cutalign.policy.sync``): reads ``policy/current.json`` and downloads the
  full model the pod must start on into ``<models_dir>/<release id>/`` — the promoted release, or for a LoRA
  release its base, or before any release ``base_model_uri`` — checks the files hash to the release's
  sha256 (``version.policy_sha256``, as every Sample records it), and writes the id to
  ``<models_dir>/SERVED``. The server container starts on that directory (TGI ``--model-id``, vLLM's model
  and ``--served-model-name``), so what TGI's ``/info`` and vLLM's ``/v1/models`` report *is* the release id,
  with its sha256. A new pod of a rolling update syncs the release promoted at that moment;
* **sidecar of a vLLM pod with LoRA** (``--follow``): every ``interval_s`` it reads ``policy/current.json``;
  when the release is a LoRA adapter over the base this pod serves (the adapter's and the base's files hash
  to the release's combined sha256), it downloads the adapter into ``<models_dir>/adapters/<release id>/``
  and loads it with ``POST /v1/load_lora_adapter`` (``lora_name`` = the release id, ``lora_path`` = that
  directory; vLLM needs ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``): promoted without
  a restart.
  It keeps the newest ``keep_adapters`` loaded and unloads older ones (``/v1/unload_lora_adapter``). A full
  release, or an adapter over another base, is not loadable in place: the promotion rolls the Deployment
  out instead (``iteration.promote``), and the sidecar only logs it. Reconciling from what ``/v1/models``
  lists also reloads the adapter after a vLLM restart.

Each pod syncs for itself: a load through the Service would reach one replica only.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import httpx2
from prometheus_client import Gauge
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

from cutalign.config import ModelSyncSettings, S3Settings
from cutalign.policy.flags import add_settings_flags, settings_from_args
from cutalign.policy.promotion import current_release
from cutalign.policy.version import describe, parse_release_id, policy_sha256, policy_version, release_id
from cutalign.store import ArtifactStore, parse_s3_uri
from cutalign.store.layout import served_key
from cutalign.v1 import training_pb2

log = logging.getLogger(__name__)

POD_MISMATCH = Gauge(
    "cutalign_model_sync_release_mismatch",
    "1 while this pod does not serve the release in policy/current.json (until its rollout or load), else 0.",
)
SERVED_MARKER = "SERVED"  # <models_dir>/SERVED: the release id of the directory the server starts on
ADAPTERS_DIR = "adapters"


class SyncError(RuntimeError):
    """The pod cannot be given a verified model to serve."""


# -- the full model a pod starts on (init container) ---------------------------------------------------------


def sync_base(settings: ModelSyncSettings, store: ArtifactStore) -> str:
    """Download and verify the full model this pod must serve; write ``SERVED``; return its release id."""
    release = current_release(store)
    if release is None:
        if not settings.base_model_uri:
            raise SyncError(
                "no release is promoted yet (policy/current.json) and no base model is configured: set "
                "CUTALIGN_MODEL_SYNC_BASE_MODEL_URI to the s3:// prefix to serve first"
            )
        uri, expected = settings.base_model_uri, None
    elif release.base_model_uri:  # a LoRA release: the pod starts on its base, the sidecar loads the adapter
        uri, expected = release.base_model_uri, None
    else:
        uri, expected = release.version.uri, release.version
    models = Path(settings.models_dir)
    incoming = _fetch(uri, models / f".incoming-{uuid.uuid4().hex}", store)
    found = policy_version(incoming, model_id=_tail(uri), iteration=0, uri=uri)
    if expected is not None and found.checkpoint_sha256 != expected.checkpoint_sha256:
        shutil.rmtree(incoming)
        raise SyncError(
            f"{uri} hashes to {found.checkpoint_sha256}, but its release says "
            f"{expected.checkpoint_sha256}: refusing a modified checkpoint — re-export and re-promote it"
        )
    name = release_id(expected or found)
    target = models / name
    if target.exists():
        shutil.rmtree(incoming)  # the same release, synced by an earlier run of this pod
    else:
        incoming.rename(target)
    (models / SERVED_MARKER).write_text(name)
    log.info("serving %s from %s", describe(expected or found), target)
    return name


def _fetch(uri: str, dest: Path, store: ArtifactStore) -> Path:
    """Copy the checkpoint at ``uri`` (an ``s3://`` prefix, or a directory) into ``dest``."""
    if uri.startswith("s3://"):
        bucket, prefix = parse_s3_uri(uri)
        return ArtifactStore(store.settings, bucket=bucket).download_dir(prefix.rstrip("/") + "/", dest)
    shutil.copytree(Path(uri.removeprefix("file://")), dest)
    return dest


def _tail(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] or "base"


# -- LoRA adapters loaded into a running vLLM (sidecar) ------------------------------------------------------


class VLLMAdapters:
    """vLLM's OpenAI server: the adapters it lists, and its runtime load/unload routes."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s

    def wait_ready(self, timeout_s: float) -> None:
        for attempt in Retrying(
            stop=stop_after_delay(timeout_s), wait=wait_exponential(max=10), reraise=True
        ):
            with attempt:
                httpx2.get(f"{self.url}/health", timeout=5).raise_for_status()

    def loaded(self) -> list[str]:
        """Ids of the loaded LoRA adapters (model cards with a parent)."""
        cards = self._call("GET", "/v1/models").json().get("data") or []
        return [str(c["id"]) for c in cards if c.get("parent") is not None]

    def load(self, name: str, path: Path) -> None:
        self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    def unload(self, name: str) -> None:
        self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx2.Response:
        for attempt in Retrying(
            stop=stop_after_attempt(4),
            wait=wait_exponential(max=10),
            retry=retry_if_exception(_transient),
            reraise=True,
        ):
            with attempt:
                response = httpx2.request(
                    method, self.url + path, json=body, headers=self.headers, timeout=self.timeout_s
                )
                if response.status_code >= 400:
                    raise SyncError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
                return response
        raise AssertionError("unreachable: Retrying returns or raises")


def _transient(error: BaseException) -> bool:
    return isinstance(error, httpx2.TransportError)


def sync_adapter(
    release: training_pb2.PolicyRelease, base_dir: Path, models: Path, store: ArtifactStore
) -> Path | None:
    """The adapter of ``release`` under ``models/adapters/``, if it applies to ``base_dir``; else None."""
    name = release_id(release.version)
    target = models / ADAPTERS_DIR / name
    if target.exists():
        return target
    incoming = _fetch(release.version.uri, models / ADAPTERS_DIR / f".incoming-{uuid.uuid4().hex}", store)
    combined = policy_sha256(incoming, base_dir)
    if combined != release.version.checkpoint_sha256:
        shutil.rmtree(incoming)
        log.warning(
            "release %s is not this adapter over the served base %s (combined sha256 %s): it is served "
            "after the rollout its promotion starts, not loaded in place",
            describe(release.version),
            base_dir.name,
            combined[:12],
        )
        return None
    incoming.rename(target)
    return target


class Acknowledged:
    """This pod's report of what it serves (``policy/served/<pod>.json``), refreshed every interval: a
    promotion counts only fresh reports, so a pod that is gone stops counting (its name: the hostname)."""

    def __init__(self, store: ArtifactStore, pod: str | None = None) -> None:
        self.store, self.pod = store, pod or socket.gethostname()

    def report(self, release: str) -> None:
        body = {"pod": self.pod, "release": release, "at_ms": int(time.time() * 1000)}
        self.store.put_bytes(served_key(self.pod), json.dumps(body).encode(), "application/json")


def reconcile(
    settings: ModelSyncSettings,
    store: ArtifactStore,
    vllm: VLLMAdapters,
    refused: set[str],
    ack: Acknowledged | None = None,
) -> str | None:
    """Make vLLM serve the promoted LoRA release (if it can); returns the adapter id it serves, if any.

    With ``ack``, what the pod serves is reported to the store once it does: the promotion waits for it.
    """
    models = Path(settings.models_dir)
    base = (models / SERVED_MARKER).read_text().strip()
    release = current_release(store)
    wanted = release_id(release.version) if release is not None and release.base_model_uri else None
    loaded = vllm.loaded()
    if release is not None and wanted is not None and wanted not in loaded and wanted not in refused:
        path = sync_adapter(release, models / base, models, store)
        if path is None:
            refused.add(wanted)  # not re-downloaded every interval; a new promotion changes `wanted`
        else:
            vllm.load(wanted, path)
            loaded.append(wanted)
            log.info("loaded LoRA release %s into %s", describe(release.version), vllm.url)
    elif release is not None and wanted is None and release_id(release.version) != base:
        log.info("release %s is a full model: served by the rollout, not here", describe(release.version))
    _unload_older(loaded, keep=settings.keep_adapters, current=wanted, vllm=vllm, models=models)
    serves = (
        wanted in loaded if wanted is not None else release is None or release_id(release.version) == base
    )
    POD_MISMATCH.set(0 if serves else 1)
    if ack is not None and serves and release is not None:
        ack.report(release_id(release.version))
    return wanted if wanted in loaded else None


def _unload_older(
    loaded: list[str], *, keep: int, current: str | None, vllm: VLLMAdapters, models: Path
) -> None:
    def iteration(name: str) -> int:
        version = parse_release_id(name)
        return version.iteration if version is not None else -1

    ordered = sorted(loaded, key=lambda n: (n == current, iteration(n)), reverse=True)
    for name in ordered[keep:]:
        vllm.unload(name)
        shutil.rmtree(models / ADAPTERS_DIR / name, ignore_errors=True)
        log.info("unloaded superseded LoRA adapter %s", name)


def follow(settings: ModelSyncSettings, store: ArtifactStore, stop: threading.Event) -> None:
    """Reconcile every ``interval_s`` until ``stop``; health and metrics on ``http_port``."""
    from cutalign.observability import HealthServer

    vllm = VLLMAdapters(
        settings.server_url, settings.api_key.get_secret_value() if settings.api_key else None
    )
    health = HealthServer(settings.http_port).start()
    try:
        vllm.wait_ready(timeout_s=3600)  # vLLM loads its base model first: minutes on a large one
        refused: set[str] = set()
        ack = Acknowledged(store)
        while not stop.is_set():
            try:
                reconcile(settings, store, vllm, refused, ack)
            except (SyncError, httpx2.HTTPError, OSError) as e:
                log.error("model sync failed; retrying in %.0fs: %s", settings.interval_s, e)
            stop.wait(settings.interval_s)
    finally:
        health.stop()


# -- entry point ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cutalign.policy.sync",
        description="Put the promoted policy release where this pod's vLLM/TGI reads it, verified.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="keep running: load each promoted LoRA release into this pod's vLLM (sidecar)",
    )
    add_settings_flags(parser, ModelSyncSettings)
    return parser


def main(argv: list[str] | None = None) -> None:
    from cutalign.observability import configure_logging

    args = build_parser().parse_args(argv)
    settings = settings_from_args(ModelSyncSettings, args)
    configure_logging("model-sync")
    store = ArtifactStore(S3Settings())
    if not args.follow:
        sync_base(settings, store)
        return
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    follow(settings, store, stop)


if __name__ == "__main__":
    main()
