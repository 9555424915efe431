"""A rendered Helm release run as local processes: render -> Deployments -> containers -> subprocesses.

No Kubernetes API server can run here, so this does the part of one that matters for the wiring: each
rendered container's command, args and environment are resolved the way the kubelet resolves them — ``env``
values, ``valueFrom`` Secret and ConfigMap keys, ``envFrom`` ConfigMaps and Secrets, ConfigMap/Secret volumes
written to files — from the *rendered* ConfigMaps and from the Secrets an operator would have created by
following the chart README (given by the test). A reference to a Secret or key that does not exist fails, as
the pod would. Only then are the cluster's endpoints rewritten to the local platform (``Rewrites``): broker
and store addresses (plain TCP: the local broker has no SASL/TLS), listening ports, and mount paths to the
files written here. The same resolution serves the pipeline's task pods (``task_environment``, from the
compiled IR's kfp-kubernetes config) and training pods (``tests/kube_standin.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cutalign.bus import provision_topics
from cutalign.config import KafkaSettings
from cutalign.platform import LocalPlatform
from cutalign.policy.launcher import free_port
from tls_support import make_ca_and_server_cert

ROOT = Path(__file__).resolve().parents[1]
Secrets = Mapping[str, Mapping[str, str]]  # Secret name -> key -> value (what `kubectl create secret` made)
KAFKA_USERS = ("generator", "judge", "target-builder", "feedback", "pipeline")  # Strimzi users of production


class MissingReference(KeyError):
    """A pod references a Secret or ConfigMap (key) that the installation does not have."""


@dataclass
class Cluster:
    """What the API server would hold: the rendered ConfigMaps, the operator's Secrets (and ConfigMaps)."""

    config_maps: dict[str, dict[str, str]]
    secrets: Secrets
    files_dir: Path

    @classmethod
    def of(
        cls, objs: list[dict[str, Any]], secrets: Secrets, files_dir: Path, config_maps: Secrets | None = None
    ) -> Cluster:
        maps = {o["metadata"]["name"]: dict(o.get("data") or {}) for o in objs if o["kind"] == "ConfigMap"}
        return cls({**maps, **{k: dict(v) for k, v in (config_maps or {}).items()}}, secrets, files_dir)

    def key(self, kind: str, name: str, key: str, optional: bool = False) -> str | None:
        source = self.secrets if kind == "secret" else self.config_maps
        if name not in source or key not in source[name]:
            if optional:
                return None
            raise MissingReference(f"{kind} {name!r} has no key {key!r}: the pod would not start")
        return source[name][key]

    def all_keys(self, kind: str, name: str) -> Mapping[str, str]:
        source = self.secrets if kind == "secret" else self.config_maps
        if name not in source:
            raise MissingReference(f"{kind} {name!r} does not exist: the pod would not start")
        return source[name]

    def write_volume(self, kind: str, name: str) -> Path:
        """The files of a Secret/ConfigMap volume, as the kubelet projects them."""
        directory = self.files_dir / f"{kind}-{name}"
        directory.mkdir(parents=True, exist_ok=True)
        for key, value in self.all_keys(kind, name).items():
            (directory / key).write_text(value)
        return directory


def container_env(container: dict[str, Any], cluster: Cluster) -> dict[str, str]:
    """The environment the kubelet gives ``container``: envFrom first, then env (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = (
            ("configMap", source["configMapRef"])
            if "configMapRef" in source
            else ("secret", source["secretRef"])
        )
        try:
            env.update(cluster.all_keys(kind, ref["name"]))
        except MissingReference:
            if not ref.get("optional"):
                raise
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        kind, ref = (
            ("secret", source["secretKeyRef"])
            if "secretKeyRef" in source
            else ("configMap", source["configMapKeyRef"])
        )
        value = cluster.key(kind, ref["name"], ref["key"], ref.get("optional", False))
        if value is not None:
            env[var["name"]] = value
    return env


def mounted_paths(
    pod: dict[str, Any], container: dict[str, Any], cluster: Cluster, pod_dir: Path | None = None
) -> dict[str, Path]:
    """Mount path -> local directory for the container's Secret and ConfigMap volumes, and with ``pod_dir``
    its emptyDir volumes too (``pod_dir/<volume>``: one directory the pod's containers share, as on a
    node)."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    paths = {}
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise MissingReference(f"volume {mount['name']!r} is mounted but not defined: the pod is invalid")
        volume = volumes[mount["name"]]
        if "secret" in volume:
            paths[mount["mountPath"]] = cluster.write_volume("secret", volume["secret"]["secretName"])
        elif "configMap" in volume:
            paths[mount["mountPath"]] = cluster.write_volume("configMap", volume["configMap"]["name"])
        elif "emptyDir" in volume and pod_dir is not None:
            paths[mount["mountPath"]] = pod_dir / mount["name"]
            paths[mount["mountPath"]].mkdir(parents=True, exist_ok=True)
    return paths


@dataclass
class Rewrites:
    """Cluster endpoints -> the local platform (applied after the cluster-side resolution)."""

    env: dict[str, str | None]  # None removes the variable (e.g. a CA for a plain-TCP local endpoint)
    mounts: dict[str, Path] = field(default_factory=dict)

    def apply(self, env: dict[str, str]) -> dict[str, str]:
        out = dict(env)
        for name, value in self.env.items():
            if value is None:
                out.pop(name, None)
            elif name in out:
                out[name] = value
        for name, value in list(out.items()):
            for mount, local in self.mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    out[name] = str(local) + value[len(mount) :]
        return out


def local_command(command: list[str]) -> list[str]:
    """The image's interpreter and layout mapped to this checkout: ``python`` -> this interpreter,
    ``torchrun`` -> ``python -m torch.distributed.run``, ``/app/...`` -> the repository."""
    head = {"python": [sys.executable], "torchrun": [sys.executable, "-m", "torch.distributed.run"]}
    out = list(head.get(command[0], [command[0]]))
    out += [str(ROOT / a.removeprefix("/app/")) if a.startswith("/app/") else a for a in command[1:]]
    return out


@dataclass
class Service:
    """One rendered Deployment's container running as a local process."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    ready_path: str
    log: Path

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}{self.ready_path}", timeout=2) as response:
                return 200 <= response.status < 300
        except OSError:
            return False

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


class LocalRelease:
    """Starts the rendered Deployments as processes (``start``) and stops them (``close``)."""

    def __init__(self, objs: list[dict[str, Any]], cluster: Cluster, work_dir: Path) -> None:
        self.deployments = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
        self.cluster = cluster
        self.work_dir = work_dir
        self.services: dict[str, Service] = {}
        self.resolved: dict[str, dict[str, str]] = {}  # the env as the cluster would give it, before rewrites

    def start(
        self,
        name: str,
        rewrites: Callable[[int], Rewrites],
        *,
        extra_args: Callable[[int], list[str]] = lambda p: [],
    ) -> Service:
        """Start Deployment ``name``; ``rewrites(port)`` gives the local rewrites for its listening port."""
        deployment = self.deployments[name]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = container_env(container, self.cluster)
        self.resolved[name] = dict(env)
        port = free_port()
        (container_port,) = [p["containerPort"] for p in container["ports"]]
        ports = {k: str(port) for k, v in env.items() if k.endswith("_PORT") and v == str(container_port)}
        local = rewrites(port)
        local.mounts.update(mounted_paths(pod, container, self.cluster))
        command = local_command(container["command"] + container.get("args", [])) + extra_args(port)
        log = self.work_dir / f"{name}.log"
        process = subprocess.Popen(
            command,
            env={**base_env(), **local.apply({**env, **ports})},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=self.work_dir,
        )
        ready = container["readinessProbe"]["httpGet"]["path"]
        service = Service(name, process, f"http://127.0.0.1:{port}", ready, log)
        self.services[name] = service
        return service

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        pending = dict(self.services)
        while pending:
            for name, service in list(pending.items()):
                if service.process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({service.process.returncode}):\n{service.log_tail()}")
                if service.ready():
                    del pending[name]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout_s:.0f}s: {sorted(pending)}")
            time.sleep(0.3)

    def check_running(self) -> None:
        for name, service in self.services.items():
            if service.process.poll() is not None:
                raise RuntimeError(f"{name} exited ({service.process.returncode}):\n{service.log_tail()}")

    def close(self) -> None:
        for service in self.services.values():
            if service.process.poll() is None:
                service.process.terminate()
        for service in self.services.values():
            try:
                service.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()


def task_environment(
    platform_spec: dict[str, Any], cluster: Cluster
) -> Iterator[tuple[str, dict[str, str], dict[str, Path]]]:
    """Per task of a compiled pipeline: the env and mounts its pod gets from its kfp-kubernetes config."""
    for executor, config in platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        env: dict[str, str] = {}
        for kind, field_name in (("configMap", "configMap"), ("secret", "secret")):
            for source in config.get(f"{field_name}AsEnv", []):
                for pair in source["keyToEnv"]:
                    name, key = source[f"{field_name}Name"], pair[f"{field_name}Key"]
                    value = cluster.key(kind, name, key, source.get("optional", False))
                    if value is not None:
                        env[pair["envVar"]] = value
        mounts = {
            v["mountPath"]: cluster.write_volume("secret", v["secretName"])
            for v in config.get("secretAsVolume", [])
        }
        mounts |= {
            v["mountPath"]: cluster.write_volume("configMap", v["configMapName"])
            for v in config.get("configMapAsVolume", [])
        }
        yield executor, env, mounts


def base_env() -> dict[str, str]:
    """What every local process inherits that an image would have (PATH, Python, no tokenizer threads)."""
    keep = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR", "LANG", "TOKENIZERS_PARALLELISM")
    return {k: v for k, v in os.environ.items() if k in keep} | {"OMP_NUM_THREADS": "1", "HOME": "/tmp"}


def installed_secrets(platform: LocalPlatform, ca_pem: str) -> dict[str, dict[str, str]]:
    """The Secrets the chart README has an operator create (Strimzi's and MinIO's as they write them)."""
    access, secret = platform.s3.credentials()
    kafka_users = {
        f"rel-cutalign-{c}": {
            "password": f"scram-{c}",
            "sasl.jaas.config": f"... username=rel-cutalign-{c} ...",
        }
        for c in KAFKA_USERS
    }
    return {
        "cutalign-minio-user": {"CONSOLE_ACCESS_KEY": access, "CONSOLE_SECRET_KEY": secret},
        "prod-cluster-ca-cert": {"ca.crt": ca_pem},
        "cutalign-feedback": {"token": "e2e-feedback-token", "user-hash-salt": "e2e-salt-" + "x" * 32},
        "cutalign-judge-llm": {"api-token": "e2e-llm-token"},
        "cutalign-policy-admin": {"admin-token": "e2e-admin-token"},
        "cutalign-policy-api": {"api-token": "e2e-policy-api-token"},
        "cutalign-builder": {"admin-token": "e2e-builder-token"},
        **kafka_users,
    }


def installed_cluster(objs: list[dict[str, Any]], platform: LocalPlatform, work_dir: Path) -> Cluster:
    """The API server's view of an install that followed the chart README: the rendered ConfigMaps, the
    operator's Secrets (``installed_secrets``, with a private CA) and the cluster's ``kube-root-ca.crt``."""
    ca_pem = make_ca_and_server_cert(work_dir)[0].read_text()
    return Cluster.of(
        objs,
        installed_secrets(platform, ca_pem),
        work_dir / "volumes",
        config_maps={"kube-root-ca.crt": {"ca.crt": ca_pem}},
    )


def local_rewrites(platform: LocalPlatform, policy_url: str = "") -> Rewrites:
    """The cluster's endpoints -> the local platform: plain TCP (the local broker and store have no TLS)."""
    return Rewrites(
        {
            "CUTALIGN_KAFKA_BOOTSTRAP_SERVERS": platform.kafka_settings.bootstrap_servers,
            "CUTALIGN_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "CUTALIGN_KAFKA_SSL_CA_LOCATION": None,
            "CUTALIGN_S3_ENDPOINT": platform.s3.endpoint,
            "CUTALIGN_S3_SECURE": "false",
            "CUTALIGN_S3_CA_BUNDLE": None,
            "CUTALIGN_FEEDBACK_HOST": "127.0.0.1",
            **({"CUTALIGN_POLICY_URL": policy_url} if policy_url else {}),
        }
    )


def release_topics(platform: LocalPlatform, name: str, partitions: int) -> dict[str, str]:
    """Topics of a test release (``<name>.prompts`` ...), created on the local broker; returns the chart's
    ``kafka.topic*`` values naming them."""
    kinds = ("prompts", "samples", "judgments", "deadletter")
    kafka = platform.kafka_settings.model_copy(update={f"topic_{t}": f"{name}.{t}" for t in kinds})
    provision_topics(KafkaSettings(**{**kafka.model_dump(), "partitions": partitions}))
    return {f"topic{t.title()}": f"{name}.{t}" for t in kinds}
