"""The production profile's policy pod (vLLM with runtime LoRA), run here from what Helm renders.

``ci/production-values.yaml`` is rendered by the real Helm; the policy Deployment's pod is then run the way a
node runs it: its init container (the model sync) as a local process with the command and environment the
kubelet would give it (its ConfigMap, the operator's Secrets, its emptyDir ``models`` volume shared with the
other containers), then the vLLM server on what the sync put there, then the model-sync sidecar, and beside
the pod the rendered generator Deployment. A LoRA release promoted to S3 must reach the running server
through the sidecar without a restart, and the generator's version guard must follow it.

Stand-ins, named as such: **vLLM** cannot run here (no GPU, no binary): ``VLLMStandIn`` answers like
vLLM's OpenAI server on the path and served name the rendered ``vllm serve`` line is started with (the line is
run by the shell with ``vllm`` replaced by ``echo`` to read them), with ``--api-key`` and runtime LoRA
updating as the rendered environment sets them. Kafka SASL_SSL and S3 TLS are rewritten to the local
plain-TCP broker and store after the cluster-side resolution (``release_support``).
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutalign.config import IterationSettings, ModelSyncSettings, PolicySettings
from cutalign.generator.guard import VersionGuard
from cutalign.iteration.promote import publish_release
from cutalign.platform import LocalPlatform
from cutalign.policy.client import PolicyClient
from cutalign.policy.launcher import free_port
from cutalign.policy.sync import SERVED_MARKER
from cutalign.policy.version import dir_sha256, release_id
from cutalign.store import ArtifactStore
from helm_support import CHART, HELM, find, render
from policy_support import tiny_adapter, tiny_policy
from release_support import (
    LocalRelease,
    base_env,
    container_env,
    installed_cluster,
    local_command,
    local_rewrites,
    mounted_paths,
    release_topics,
)
from serving_standins import VLLMStandIn

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HELM.exists(), reason=f"{HELM} is missing: run `make helm-tool` first"),
]


@dataclass
class PolicyPod:
    """The policy pod as it runs here (the resolved env of each container, the stand-in, the sidecar process,
    its models volume) with the generator beside it, and the store and base model the release serves."""

    store: ArtifactStore
    base_dir: Path
    work: Path
    env: dict[str, dict[str, str]]
    vllm: VLLMStandIn
    models: Path
    sidecar: subprocess.Popen[bytes]
    sidecar_url: str
    services: LocalRelease


def containers(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in (*spec.get("initContainers", []), *spec["containers"])}


def served_argv(container: dict[str, Any], models_mount: str, models: Path) -> list[str]:
    """What ``vllm`` is started with: the rendered ``sh -c`` line (``$$`` is Kubernetes' escape of ``$``)
    run by the shell with the binary replaced by ``echo`` and the models mount by its local directory."""
    assert container["command"] == ["/bin/sh", "-c"]
    script, *rest = container["args"]
    script = script.replace("$$", "$").replace("exec vllm", "exec echo").replace(models_mount, str(models))
    out = subprocess.run(["/bin/sh", "-c", script, *rest], capture_output=True, text=True, check=True)
    return out.stdout.split()


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout_s:.0f}s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def pod(platform: LocalPlatform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyPod]:
    work = tmp_path_factory.mktemp("vllm-pod")
    name = f"t-vllm-{uuid.uuid4().hex[:8]}"
    store = ArtifactStore(platform.s3.model_copy(update={"bucket": name}))
    store.ensure_bucket()
    base_dir = tiny_policy(work / "base")
    store.upload_dir("models/base/", base_dir)
    topics = release_topics(platform, name, partitions=1)
    overlay = {
        "s3": {"bucket": name},
        "kafka": {**topics, "sessionTimeoutMs": 6000, "heartbeatIntervalMs": 2000},
        "modelSync": {"baseModelUri": store.uri("models/base/"), "intervalS": 0.2},
        "generator": {"groupId": f"{name}-generator", "pollTimeoutS": 0.2},
    }
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    objs = render(CHART, "-f", str(CHART / "ci" / "production-values.yaml"), "-f", str(work / "overlay.yaml"))
    cluster = installed_cluster(objs, platform, work)
    spec = find(objs, "Deployment", "-policy")["spec"]["template"]["spec"]  # the vLLM pod
    parts = containers(spec)
    pod_dir = work / "pod"
    env = {n: container_env(c, cluster) for n, c in parts.items()}
    mounts = {n: mounted_paths(spec, c, cluster, pod_dir) for n, c in parts.items()}
    (models_mount,) = [m["mountPath"] for m in parts["vllm"]["volumeMounts"] if m["name"] == "models"]
    models = mounts["vllm"][models_mount]

    def process_env(container: str, **extra: str) -> dict[str, str]:
        rewrites = local_rewrites(platform)
        rewrites.mounts.update(mounts[container])
        rewrites.env.update(extra)
        return {**base_env(), **rewrites.apply(env[container])}

    init = parts["model-sync-init"]
    result = subprocess.run(
        local_command(init["command"]), env=process_env("model-sync-init"), capture_output=True, text=True
    )
    assert result.returncode == 0, f"the init container failed, the pod would not start:\n{result.stderr}"

    argv = served_argv(parts["vllm"], models_mount, models)
    assert argv[0] == "serve" and argv[2] == "--served-model-name"
    vllm_env = env["vllm"]
    runtime_lora = vllm_env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING") == "True"
    with VLLMStandIn(
        Path(argv[1]), argv[3], runtime_lora_updating=runtime_lora, api_key=vllm_env["VLLM_API_KEY"]
    ) as vllm:
        port = free_port()
        sidecar = subprocess.Popen(
            local_command(parts["model-sync"]["command"]),
            env=process_env(
                "model-sync", CUTALIGN_MODEL_SYNC_SERVER_URL=vllm.url, CUTALIGN_MODEL_SYNC_HTTP_PORT=str(port)
            ),
            stdout=(work / "model-sync.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        services = LocalRelease(objs, cluster, work)
        try:
            services.start("rel-cutalign-generator", lambda p: local_rewrites(platform, vllm.url))
            services.wait_ready()
            yield PolicyPod(
                store, base_dir, work, env, vllm, models, sidecar, f"http://127.0.0.1:{port}", services
            )
        finally:
            services.close()
            sidecar.terminate()
            sidecar.wait(20)


def test_the_pod_starts_on_the_base_model_the_sync_verified(pod: PolicyPod) -> None:
    served = (pod.models / SERVED_MARKER).read_text()
    assert pod.vllm.base == (served, str(pod.models / served)), "vllm serve /models/<release> as <release>"
    assert dir_sha256(pod.models / served) == dir_sha256(pod.base_dir)
    # the generator and the sidecar reach vLLM with its --api-key, from the same Secret
    generator = pod.services.resolved["rel-cutalign-generator"]
    assert generator["CUTALIGN_POLICY_API_TOKEN"] == pod.env["vllm"]["VLLM_API_KEY"]
    assert pod.env["model-sync"]["CUTALIGN_MODEL_SYNC_API_KEY"] == pod.env["vllm"]["VLLM_API_KEY"]
    wait_for(lambda: _ok(f"{pod.sidecar_url}/readyz"), 60, "the sidecar is not ready")
    assert pod.sidecar.poll() is None
    pod.services.check_running()


def test_a_promoted_lora_release_is_loaded_by_the_rendered_sidecar_and_the_guard_follows(
    pod: PolicyPod,
) -> None:
    store = pod.store
    adapter = tiny_adapter(pod.work / "adapter1", pod.base_dir, seed=1)
    store.upload_dir("iterations/0001/adapter/", adapter)
    store.upload_dir("iterations/0001/model/", pod.base_dir)  # the merged export beside it (not served)
    promoted = publish_release(
        store,
        iteration=1,
        model_uri=store.uri("iterations/0001/model"),
        trained_from=store.uri("models/base/"),
        eval_metrics={"eval/accuracy": 0.5},
        manifest_key="iterations/0001/manifest.json",
        settings=IterationSettings(model_id="tiny"),
        policy=PolicySettings(mode="vllm", lora_adapters=True),
        sync=ModelSyncSettings(base_model_uri=store.uri("models/base/")),
        kube=None,
    )
    name = release_id(promoted.version)
    wait_for(lambda: name in pod.vllm.adapters, 60, f"{name} was not loaded into vLLM")
    assert pod.vllm.adapters[name] == str(pod.models / "adapters" / name)
    assert pod.sidecar.poll() is None, "loaded in place: nothing restarted"
    token = pod.env["vllm"]["VLLM_API_KEY"]
    client = PolicyClient(PolicySettings(url=pod.vllm.url, mode="vllm", backend="openai", api_token=token))
    assert VersionGuard(client, None, store).check().checkpoint_sha256 == promoted.version.checkpoint_sha256
    pod.services.check_running()


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= response.status < 300
    except OSError:
        return False
