"""The chart's serving modes, rendered by the real Helm v3 and validated offline: every mode renders and
validates strictly, vLLM is the production default, and each mode's pods are wired the way its promotion
needs (model sync, rolling updates, runtime LoRA, KServe's storage URI, the promoter's permissions).

The vLLM and TGI containers start through ``/bin/sh -c`` on the directory the model sync names in
``SERVED``; that command line is run here, as Kubernetes would hand it to the shell (``$$`` -> ``$``), with
the server binary replaced by ``echo``, to check what the server is really started with.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutalign.k8s.validate import CrdCatalog, load_manifests, validate_manifests

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "cutalign"
HELM = ROOT / ".tools" / "helm" / "helm" / "helm"
REQUIRED = (
    "s3.endpoint=minio:9000",
    "modelSync.baseModelUri=s3://cutalign/models/base/",
    "policyServer.policyUri=s3://cutalign/models/base/",
    "pipeline.upload.enabled=false",
    "judge.llm.url=http://judge-llm:8000",
)
MODES = {
    "vllm": (),
    "vllm-merged": ("policy.mode=vllm", "policy.loraAdapters=false"),
    "tgi": ("policy.mode=tgi",),
    "kserve": ("policy.mode=kserve", "policy.gpus=0", "policyServer.device=cpu"),
    "embedded": ("policy.mode=embedded", "policy.gpus=0"),
}

pytestmark = pytest.mark.skipif(not HELM.exists(), reason=f"{HELM} is missing: run `make helm-tool` first")


def render(*values: str) -> list[dict[str, Any]]:
    args = [str(HELM), "template", "rel", str(CHART), "--namespace", "ns"]
    for value in (*REQUIRED, *values):
        args += ["--set", value]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return load_manifests(result.stdout)


def one(objs: list[dict[str, Any]], kind: str, name: str = "rel-cutalign-policy") -> dict[str, Any]:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def config(objs: list[dict[str, Any]], component: str) -> dict[str, str]:
    """The settings one component's pods read (its own ConfigMap)."""
    return dict(one(objs, "ConfigMap", f"rel-cutalign-{component}-config")["data"])


@pytest.fixture(scope="module")
def modes() -> dict[str, list[dict[str, Any]]]:
    return {mode: render(*values) for mode, values in MODES.items()}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("kube_version", ["1.27", "1.37"])
def test_every_mode_renders_and_validates_strictly(
    modes: dict[str, list[dict[str, Any]]], mode: str, kube_version: str
) -> None:
    reports = validate_manifests(modes[mode], CrdCatalog(), kube_version)
    kinds = {r.kind for r in reports}
    assert ("InferenceService" in kinds) == (mode == "kserve")
    assert config(modes[mode], "generator")["CUTALIGN_POLICY_MODE"] == mode.split("-")[0]


def test_vllm_is_the_production_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    production = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
    assert values["policy"]["mode"] == production["policy"]["mode"] == "vllm"


def _shell(container: dict[str, Any], binary: str, models: Path) -> list[str]:
    """What the server is started with: its ``sh -c`` line run with ``binary`` replaced by ``echo``."""
    assert container["command"] == ["/bin/sh", "-c"]
    script, *rest = container["args"]
    script = script.replace("$$", "$").replace(f"exec {binary}", "exec echo").replace("/models", str(models))
    out = subprocess.run(["/bin/sh", "-c", script, *rest], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_vllm_starts_on_the_synced_release_and_loads_lora_releases_at_runtime(
    modes: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    pod = one(modes["vllm"], "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["python", "-m", "cutalign.policy.sync"]
    vllm, sidecar = pod["containers"]
    assert sidecar["command"] == ["python", "-m", "cutalign.policy.sync", "--follow"]
    assert sidecar["readinessProbe"]["httpGet"]["port"] == "sync"
    (tmp_path / "SERVED").write_text("cutalign-policy-i0003-" + "a" * 64)
    argv = _shell(vllm, "vllm", tmp_path)
    served = f"{tmp_path}/cutalign-policy-i0003-{'a' * 64}"
    assert argv[:4] == ["serve", served, "--served-model-name", served.rsplit("/", 1)[1]]
    assert {"--enable-lora", "--max-loras=2", "--max-lora-rank=16", "--port", "8080"} <= set(argv)
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert [m for m in vllm["volumeMounts"] if m["name"] == "models"][0]["readOnly"] is True

    merged = one(modes["vllm-merged"], "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in merged["containers"]] == ["vllm"], "no sidecar without runtime LoRA"
    assert "--enable-lora" not in _shell(merged["containers"][0], "vllm", tmp_path)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in {e["name"] for e in merged["containers"][0]["env"]}


@pytest.mark.parametrize("mode", ["vllm", "tgi"])
def test_gpu_servers_roll_instead_of_recreating(modes: dict[str, list[dict[str, Any]]], mode: str) -> None:
    deployment = one(modes[mode], "Deployment")
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    steps = config(modes[mode], "pipeline")
    assert steps["CUTALIGN_ITERATION_POLICY_RESOURCE"] == deployment["metadata"]["name"]
    assert steps["CUTALIGN_ITERATION_POLICY_NAMESPACE"] == "ns"
    assert config(modes[mode], "policy")["CUTALIGN_MODEL_SYNC_BASE_MODEL_URI"] == "s3://cutalign/models/base/"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"], "a settings change of the policy pod rolls it"


def test_both_rollout_limits_at_zero_fail_with_the_reason() -> None:
    args = [str(HELM), "template", "rel", str(CHART)]
    for value in (*REQUIRED, "policy.rollout.maxSurge=0", "policy.rollout.maxUnavailable=0"):
        args += ["--set", value]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "maxSurge and maxUnavailable cannot both be 0" in result.stderr


def test_tgi_starts_on_the_synced_release(modes: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    pod = one(modes["tgi"], "Deployment")["spec"]["template"]["spec"]
    assert [c["command"] for c in pod["initContainers"]] == [["python", "-m", "cutalign.policy.sync"]]
    (tgi,) = pod["containers"]
    (tmp_path / "SERVED").write_text("r1")
    argv = _shell(tgi, "text-generation-launcher", tmp_path)
    assert argv[:2] == ["--model-id", f"{tmp_path}/r1"], "/info's model_id names the release"


def test_kserve_serves_the_storage_uri_without_in_pod_reloads(modes: dict[str, list[dict[str, Any]]]) -> None:
    isvc = one(modes["kserve"], "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    (container,) = isvc["spec"]["predictor"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["STORAGE_URI"] == "s3://cutalign/models/base/"
    assert env["CUTALIGN_POLICY_SERVER_POLICY_URI"] == "/mnt/models"
    assert env["CUTALIGN_POLICY_SERVER_WATCH_CURRENT"] == "false", "the release changes through KServe only"


def test_embedded_server_binds_the_pod_ip_and_takes_its_admin_token_from_a_secret() -> None:
    objs = render(*MODES["embedded"], "policyServer.existingSecret=policy-admin")
    env = config(objs, "policy")
    assert env["CUTALIGN_POLICY_SERVER_HOST"] == "0.0.0.0"
    assert "CUTALIGN_POLICY_SERVER_ADMIN_TOKEN" not in env
    steps = config(objs, "pipeline")
    assert "CUTALIGN_ITERATION_POLICY_ADMIN_URL" not in steps, "promotion: the server follows current.json"
    (container,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    (token,) = [e for e in container["env"] if e["name"] == "CUTALIGN_POLICY_SERVER_ADMIN_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "policy-admin", "key": "admin-token"}


@pytest.mark.parametrize(
    "mode, kind", [("vllm", "Deployment"), ("tgi", "Deployment"), ("kserve", "InferenceService")]
)
def test_the_promote_step_may_patch_the_policy_and_nothing_else(
    modes: dict[str, list[dict[str, Any]]], mode: str, kind: str
) -> None:
    objs = modes[mode]
    role = one(objs, "Role", "rel-cutalign-policy-promoter")
    (rule,) = role["rules"]
    assert rule["resourceNames"] == [one(objs, kind)["metadata"]["name"]]
    assert rule["verbs"] == ["get", "patch"]
    binding = one(objs, "RoleBinding", "rel-cutalign-policy-promoter")
    assert binding["subjects"][0]["name"] == "rel-cutalign-pipeline"
    assert not [o for o in modes["embedded"] if o["metadata"]["name"] == "rel-cutalign-policy-promoter"]
