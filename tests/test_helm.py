"""The Helm chart, rendered and validated offline (no Kubernetes API server can run here).

``helm lint --strict`` and ``helm template`` run the real Helm v3 binary (``make helm-tool``) on the three CI
profiles; standard objects are validated with kubernetes-validate in strict mode, custom resources against the
CRD schemas cutalign ships (the CRD versions are asserted); values are checked against the service settings
they mirror, and the training-job template against the job ``cutalign.k8s`` builds in code.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from cutalign import config
from cutalign.judges.llm import ENV_PREFIX as JUDGE_LLM_PREFIX
from cutalign.k8s.pytorchjob import build_pytorchjob
from cutalign.k8s.trainjob import build_trainjob
from cutalign.k8s.validate import CrdCatalog, load_manifests, validate_manifests
from cutalign.pipelines.wiring import PipelineWiring
from helm_support import HELM, all_config_env, config_env, find, helm, render

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "cutalign"
PROFILES = ("minimal", "production", "kserve", "tgi")
NAMESPACE = "cutalign-test"  # helm_support renders into it
KUBE_VERSIONS = ("1.27", "1.37")  # the chart's minimum (Chart.yaml kubeVersion) and the newest schemas
# Settings sections that are not deployed by the chart: the embedded local platform only.
NOT_ON_A_CLUSTER = {"PLATFORM", "ONLINE"}  # the embedded platform; a laptop-driven run (cutalign run)
# Plain-str settings that are credentials all the same: the chart reads them from a Secret too.
FROM_SECRETS: set[tuple[str, str]] = set()
# Settings sections the chart renders only a part of (the LLM judge's endpoint is a PolicySettings).
PARTIAL_SECTIONS = {"JUDGE_LLM"}

pytestmark = pytest.mark.skipif(not HELM.exists(), reason=f"{HELM} is missing: run `make helm-tool` first")


@pytest.fixture(scope="session")
def chart() -> Path:
    return CHART


@pytest.fixture(scope="session")
def catalog() -> CrdCatalog:
    return CrdCatalog()


@pytest.fixture(scope="session")
def rendered(chart: Path) -> dict[str, list[dict[str, Any]]]:
    return {p: render(chart, "-f", str(chart / "ci" / f"{p}-values.yaml")) for p in PROFILES}


def job_templates(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    data = find(objs, "ConfigMap", "-trainer-jobs")["data"]
    return {key: load_manifests(text)[0] for key, text in data.items()}


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod the release creates: workloads, hook Jobs, KServe predictors, training templates."""
    for obj in objs:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in ("Deployment", "Job"):
            yield name, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "InferenceService":
            yield name, obj["spec"]["predictor"]
    for key, job in job_templates(objs).items():
        if job["kind"] == "PyTorchJob":
            for rtype, replica in job["spec"]["pytorchReplicaSpecs"].items():
                yield f"{key}:{rtype}", replica["template"]["spec"]


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_strict(chart: Path, profile: str) -> None:
    result = helm("lint", "--strict", str(chart), "-f", str(chart / "ci" / f"{profile}-values.yaml"))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_rendered_manifests_validate_strictly(
    rendered: dict[str, list[dict[str, Any]]], catalog: CrdCatalog, profile: str, kube_version: str
) -> None:
    """Standard objects with kubernetes-validate --strict; custom resources and job templates by CRD."""
    objs = rendered[profile] + list(job_templates(rendered[profile]).values())
    reports = validate_manifests(objs, catalog, kube_version)
    against = {r.kind: r.validated_against for r in reports}
    assert against["Deployment"] == f"Kubernetes {kube_version} (kubernetes-validate, strict)"
    assert against["PyTorchJob"].startswith("pytorchjobs.kubeflow.org v1 ")
    assert "controller-gen v0.16.5" in against["PyTorchJob"]
    assert against["TrainJob"].startswith("trainjobs.trainer.kubeflow.org v1alpha1 ")
    expected_crs = {
        "minimal": set(),
        "production": {
            "KafkaTopic": "kafkatopics.kafka.strimzi.io v1 ",
            "KafkaUser": "kafkausers.kafka.strimzi.io v1 ",
            "Tenant": "tenants.minio.min.io v2 ",
            "PodMonitor": "podmonitors.monitoring.coreos.com v1 ",
            "PrometheusRule": "prometheusrules.monitoring.coreos.com v1 ",
        },
        "kserve": {"InferenceService": "inferenceservices.serving.kserve.io v1beta1 "},
        "tgi": set(),
    }[profile]
    for kind, prefix in dict(expected_crs).items():
        assert against[kind].startswith(prefix), against[kind]
    if profile == "kserve":
        assert "controller-gen v0.19.0" in against["InferenceService"]


@pytest.mark.parametrize("profile", PROFILES)
def test_job_templates_equal_the_jobs_built_in_code(
    rendered: dict[str, list[dict[str, Any]]], profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline builds jobs in code from the config ConfigMap: the template must be that job."""
    env = config_env(rendered[profile])
    _use_env(monkeypatch, env)
    launcher, s3, trainer = config.LauncherSettings(), config.S3Settings(), config.TrainerSettings()  # type: ignore[call-arg]
    for key, build in (("pytorchjob.yaml", build_pytorchjob), ("trainjob.yaml", build_trainjob)):
        template = job_templates(rendered[profile])[key]
        code = build(template["metadata"]["name"], [], launcher, s3, trainer)
        assert _normalized(template, monkeypatch) == _normalized(code, monkeypatch), f"{profile}: {key}"


def _use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("CUTALIGN_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _normalized(obj: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The job with each env list replaced by what it means: parsed settings plus the Secret references."""
    if isinstance(obj, list):
        return [_normalized(x, monkeypatch) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {k: _normalized(v, monkeypatch) for k, v in obj.items() if k != "env"}
    if "env" in obj:
        values = {e["name"]: e["value"] for e in obj["env"] if "value" in e}
        refs = {e["name"]: e["valueFrom"] for e in obj["env"] if "valueFrom" in e}
        with monkeypatch.context() as m:
            _use_env(m, values)
            parsed = (config.TrainerSettings().model_dump(), config.S3Settings().model_dump(mode="json"))  # type: ignore[call-arg]
        other = {k: v for k, v in values.items() if not k.startswith(("CUTALIGN_TRAINER_", "CUTALIGN_S3_"))}
        out["env"] = {"settings": parsed, "secrets": refs, "other": other, "names": sorted(values)}
    return out


def settings_sections() -> dict[str, type[BaseSettings]]:
    """Every settings class of config.py by its env section (``KAFKA``, ``POLICY_SERVER``, ...)."""
    sections = {}
    for obj in vars(config).values():
        if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings:
            prefix = str(obj.model_config.get("env_prefix", ""))
            sections[prefix.removeprefix("CUTALIGN_").rstrip("_")] = obj
    sections[JUDGE_LLM_PREFIX.removeprefix("CUTALIGN_").rstrip("_")] = config.PolicySettings
    return sections


def secret_fields(cls: type[BaseSettings]) -> set[str]:
    return {name for name, f in cls.model_fields.items() if SecretStr in _types(f.annotation)}


def _types(annotation: Any) -> set[Any]:
    args = getattr(annotation, "__args__", None)
    return {annotation} if args is None else {t for a in args for t in _types(a)}


def section_of(env_name: str) -> tuple[str, str]:
    """``CUTALIGN_POLICY_SERVER_DEVICE`` -> (``POLICY_SERVER``, ``device``): the longest matching section."""
    for section in sorted(settings_sections(), key=len, reverse=True):  # JUDGE_LLM before JUDGE
        if env_name.startswith(f"CUTALIGN_{section}_"):
            return section, env_name.removeprefix(f"CUTALIGN_{section}_").lower()
    raise AssertionError(f"{env_name} belongs to no settings section of config.py")


@pytest.mark.parametrize("profile", PROFILES)
def test_configmap_env_is_exactly_the_service_settings(
    rendered: dict[str, list[dict[str, Any]]], profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydantic-settings ignores unknown env vars, so a misnamed key would be lost silently: check each."""
    sections = settings_sections()
    env = all_config_env(rendered[profile])
    for name in env:
        section, field = section_of(name)
        assert field in sections[section].model_fields, f"{name}: no field {field!r} in {sections[section]}"
        assert field not in secret_fields(sections[section]), (
            f"{name} is a secret: it must come from a Secret"
        )
    _use_env(monkeypatch, env)
    for section in {section_of(name)[0] for name in env}:
        if section == "JUDGE_LLM":
            config.PolicySettings(_env_prefix=JUDGE_LLM_PREFIX)  # type: ignore[call-arg]
        else:
            sections[section]()  # every value parses (types, bounds, cross-field checks)


def test_values_mirror_every_settings_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Each non-secret field of each deployed section is a value (rendered in some profile, or null: the
    default); the model sync's section is rendered only where vLLM or TGI serves."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rendered_fields = {section_of(n) for docs in rendered.values() for n in all_config_env(docs)}
    missing = []
    for section, cls in settings_sections().items():
        if section in NOT_ON_A_CLUSTER | PARTIAL_SECTIONS:
            continue
        key = _camel(section.lower())
        assert key in values, (
            f"values.yaml has no `{key}` section for {cls.__name__} (or list it in NOT_ON_A_CLUSTER)"
        )
        nulls = {_snake(k) for k, v in values[key].items() if v is None}
        derived = {
            "LAUNCHER": {"crd_dir", "s3_ca_secret", "s3_ca_config_map"},  # shipped CRDs; from s3.tls
            "KAFKA": {"sasl_username", "ssl_ca_location"},  # per component; from kafka.tls
            "S3": {"ca_bundle"},  # from s3.tls
            "ITERATION": {"abort_file"},  # the embedded stack's alarm; a cluster's services restart instead
        }.get(section, set())
        for field in set(cls.model_fields) - secret_fields(cls) - nulls - derived:
            if (section, field) not in rendered_fields | FROM_SECRETS:
                missing.append(f"{key}.{_camel(field)}")
    assert not missing, f"values.yaml lacks these settings (add them with @param docs and schema): {missing}"


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() if len(part) > 1 else part.upper() for part in rest)


def _snake(camel: str) -> str:
    return re.sub(r"([A-Z])([A-Z][a-z])", r"\1_\2", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", camel)).lower()


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+)", text, flags=re.M))
    values = yaml.safe_load(text)

    def undocumented(node: Any, path: str) -> Iterator[str]:
        if path in documented:
            return
        if isinstance(node, dict) and node:
            for key, child in node.items():
                yield from undocumented(child, f"{path}.{key}" if path else key)
        else:
            yield path

    assert list(undocumented(values, "")) == []
    assert {p for p in documented if not _has_path(values, p)} == set(), "@param for keys that do not exist"


def test_schema_types_every_value_and_closes_every_object() -> None:
    """values.schema.json is complete: every key of values.yaml has a schema; objects take no extra keys."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def check(node: Any, sch: dict[str, Any], path: str) -> Iterator[str]:
        props = sch.get("properties")
        if props is None or not isinstance(node, dict) or path in OPEN_OBJECTS:
            return  # a leaf, or an open Kubernetes object (resources, securityContext, ...)
        if sch.get("additionalProperties") is not False:
            yield f"{path or '(root)'}: additionalProperties is not false"
        for key, child in node.items():
            if key not in props:
                yield f"{path}.{key}: no schema"
            else:
                yield from check(child, props[key], f"{path}.{key}" if path else key)

    assert list(check(values, schema, "")) == []


OPEN_OBJECTS = {
    "podSecurityContext",
    "containerSecurityContext",
}  # Kubernetes types, validated after rendering


def _has_path(values: dict[str, Any], path: str) -> bool:
    node: Any = values
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("kafka.bootstrapServer=broker:9092", "kafka: Additional property bootstrapServer is not allowed"),
        ("feedbak.enabled=false", "Additional property feedbak is not allowed"),
        ("s3.secretKey=hunter2", "s3: Additional property secretKey is not allowed"),  # no place for a secret
        ("policy.mode=sglang", "policy.mode"),
        ("launcher.gpusPerNode=-1", "launcher.gpusPerNode"),
    ],
)
def test_schema_rejects_bad_values(chart: Path, setting: str, error: str) -> None:
    result = helm("lint", "--strict", str(chart), "--set", setting, check=False)
    assert result.returncode != 0
    assert error in result.stdout + result.stderr


def test_validate_values_fails_once_with_every_error(chart: Path) -> None:
    result = helm(
        "template",
        "rel",
        str(chart),
        "--set",
        "kafka.securityProtocol=SASL_SSL",
        "--set",
        "launcher.gpusPerNode=2",
        "--set",
        "launcher.nprocPerNode=4",
        "--set",
        "images.judge.tag=latest",
        "--set",
        "modelSync.baseModelUri=",
        "--set",
        "feedback.ingress.enabled=true",
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.count("VALUES VALIDATION ERRORS") == 1
    for expected in (
        "kafka.existingSecret: securityProtocol SASL_SSL needs the Secret",
        "launcher.nprocPerNode (4) exceeds launcher.gpusPerNode (2)",
        "images.judge: pin the image",
        "modelSync.baseModelUri: policy.mode vllm serves the base model from S3",
        "feedback.ingress.host: set the host name",
    ):
        assert expected in result.stderr


@cache
def _secret_env_names() -> frozenset[str]:
    names = {"HF_TOKEN"} | {f"CUTALIGN_{section}_{field.upper()}" for section, field in FROM_SECRETS}
    for section, cls in settings_sections().items():
        names |= {f"CUTALIGN_{section}_{field.upper()}" for field in secret_fields(cls)}
    return frozenset(names)


@pytest.mark.parametrize("profile", PROFILES)
def test_no_secret_values_are_rendered(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    objs = rendered[profile] + list(job_templates(rendered[profile]).values())
    assert [o for o in objs if o["kind"] == "Secret"] == []
    for obj in objs:
        if obj["kind"] == "ConfigMap":
            assert not set(obj["data"]) & _secret_env_names(), obj["metadata"]["name"]
    secret_refs = 0
    for where, env in _env_lists(objs):
        for var in env:
            if var["name"] in _secret_env_names():
                assert "value" not in var and "secretKeyRef" in var["valueFrom"], f"{where}: {var['name']}"
                secret_refs += 1
    assert secret_refs >= 6  # S3 keys everywhere, feedback token and salt


def _env_lists(node: Any, where: str = "") -> Iterator[tuple[str, list[dict[str, Any]]]]:
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            yield where, node["env"]
        for key, child in node.items():
            yield from _env_lists(child, f"{where}.{key}" if where else str(node.get("kind", key)))
    elif isinstance(node, list):
        for item in node:
            yield from _env_lists(item, where)


@pytest.mark.parametrize("profile", PROFILES)
def test_pods_are_locked_down_and_pinned(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    for name, pod in pod_specs(rendered[profile]):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod.get("automountServiceAccountToken") is False, name
        for c in pod["containers"]:
            where = f"{name}/{c['name']}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert re.search(r"(:[\w.-]+|@sha256:[a-f0-9]{64})$", c["image"]) and not c["image"].endswith(
                ":latest"
            )
            assert "memory" in c["resources"]["requests"] and "memory" in c["resources"]["limits"], where


@pytest.mark.parametrize("profile", PROFILES)
def test_services_are_probed_and_roll_on_config_change(
    rendered: dict[str, list[dict[str, Any]]], profile: str
) -> None:
    for deployment in (o for o in rendered[profile] if o["kind"] == "Deployment"):
        template = deployment["spec"]["template"]
        server, *sidecars = template["spec"]["containers"]
        assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in server["ports"]
        for c in (server, *sidecars):  # a sidecar (the vLLM pods' model sync) is probed on its own port
            port = c["livenessProbe"]["httpGet"]["port"]
            assert port in {p["name"] for p in c["ports"]} and c["readinessProbe"]["httpGet"]["path"]
            if c.get("envFrom"):
                assert re.fullmatch(r"[a-f0-9]{64}", template["metadata"]["annotations"]["checksum/config"])


def test_each_component_rolls_only_when_its_own_settings_change(chart: Path) -> None:
    """One ConfigMap and checksum per component: a run-level knob rolls no service, a generator knob not the
    policy server, a shared Kafka setting every Kafka client."""

    def checksums(*args: str) -> dict[str, str]:
        objs = render(chart, "-f", str(chart / "ci" / "minimal-values.yaml"), *args)
        return {
            o["metadata"]["name"].removeprefix("rel-cutalign-"): o["spec"]["template"]["metadata"][
                "annotations"
            ]["checksum/config"]
            for o in objs
            if o["kind"] == "Deployment"
        }

    base = checksums()
    assert set(base) == {"generator", "judge", "target-builder", "feedback", "policy"}

    def rolled(*args: str) -> set[str]:
        return {name for name, value in checksums(*args).items() if value != base[name]}

    assert rolled("--set", "trainer.epochs=2", "--set", "iteration.minCount=5") == set()
    assert rolled("--set", "launcher.gpusPerNode=4") == set()
    assert rolled("--set", "generator.batchSize=8") == {"generator"}
    assert rolled("--set", "builder.shardMaxExamples=10") == {"target-builder"}
    assert rolled("--set", "kafka.bootstrapServers=other:9092") == {
        "generator",
        "judge",
        "target-builder",
        "feedback",
    }


@pytest.mark.parametrize("profile", PROFILES)
def test_entry_modules_of_rendered_containers_exist(
    rendered: dict[str, list[dict[str, Any]]], profile: str
) -> None:
    for name, pod in pod_specs(rendered[profile]):
        for c in pod["containers"]:
            command = c.get("command") or []
            if command[:2] == ["python", "-m"]:
                assert importlib.util.find_spec(command[2]) is not None, f"{name}: no module {command[2]}"
            elif command[:1] == ["torchrun"]:
                assert command[-1] == "/app/services/trainer/main.py"
                assert (ROOT / "services" / "trainer" / "main.py").is_file()


def test_production_schedules_gpus_and_strimzi_topics(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["production"]
    vllm = find(objs, "Deployment", "-policy")["spec"]["template"]["spec"]
    assert vllm["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert vllm["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "--enable-lora" in vllm["containers"][0]["args"]
    job = job_templates(objs)["pytorchjob.yaml"]["spec"]
    assert job["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1 and job["nprocPerNode"] == "8"
    topics = {t["spec"]["topicName"]: t for t in objs if t["kind"] == "KafkaTopic"}
    assert set(topics) == {
        "cutalign.prompts",
        "cutalign.samples",
        "cutalign.judgments",
        "cutalign.deadletter",
    }
    for topic in topics.values():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "prod"
        assert topic["metadata"]["namespace"] == "kafka"
        assert (topic["spec"]["partitions"], topic["spec"]["replicas"]) == (12, 3)
    env = config_env(objs, "generator")
    assert env["CUTALIGN_S3_ENDPOINT"] == f"minio.{NAMESPACE}.svc.cluster.local:443"  # the tenant's
    assert env["CUTALIGN_POLICY_BACKEND"] == "openai"


def test_kserve_profile_serves_policy_and_judge_as_inference_services(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["kserve"]
    policy = find(objs, "InferenceService", "-policy")
    predictor = policy["spec"]["predictor"]
    assert policy["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert predictor["containers"][0]["name"] == "kserve-container"
    assert predictor["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert predictor["labels"]["app.kubernetes.io/component"] == "policy"  # the NetworkPolicy selects it
    judge = find(objs, "InferenceService", "-judge-model")["spec"]["predictor"]["containers"][0]
    assert judge["command"] == ["python", "-m", "cutalign.judging.kserve_model"]
    env = config_env(objs, "generator")
    assert env["CUTALIGN_POLICY_URL"] == f"http://rel-cutalign-policy-predictor.{NAMESPACE}.svc.cluster.local"


def test_pipeline_upload_never_blocks_an_install_and_runs_may_submit_jobs(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["minimal"]
    job = find(objs, "Job", "")
    assert "helm.sh/hook" not in job["metadata"].get(
        "annotations", {}
    )  # a plain Job: KFP down fails no install
    assert re.fullmatch(r"rel-cutalign-pipeline-upload-[0-9a-f]{10}", job["metadata"]["name"])
    spec = job["spec"]
    assert spec["backoffLimit"] >= 3 and spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"  # no hang under Istio
    command = pod["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "cutalign.pipelines.upload"]
    assert "--wiring=/pipeline/wiring.json" in command
    wiring = PipelineWiring.model_validate_json(
        find(objs, "ConfigMap", "-pipeline-upload")["data"]["wiring.json"]
    )
    assert wiring.config_map == "rel-cutalign-pipeline-config"
    rules = find(objs, "Role", "-pipeline")["rules"]
    may = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    for resource in (("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs")):
        assert {"create", "get", "list", "watch", "delete"} <= may[resource]
    binding = find(objs, "RoleBinding", "-pipeline")
    assert binding["subjects"][0]["name"] == "rel-cutalign-pipeline"
    production = find(rendered["production"], "RoleBinding", "-pipeline")
    assert production["subjects"][0]["name"] == "default-editor"


def test_a_changed_pipeline_gets_a_new_upload_job(chart: Path) -> None:
    def upload_job(*args: str) -> str:
        objs = render(chart, "-f", str(chart / "ci" / "minimal-values.yaml"), *args)
        return str(find(objs, "Job", "")["metadata"]["name"])

    assert upload_job() == upload_job("--set", "generator.batchSize=8")  # the pipeline did not change
    assert upload_job() != upload_job("--set", "launcher.gpusPerNode=2")  # a Job's template is immutable


@pytest.mark.parametrize("profile", PROFILES)
def test_network_policies_cover_every_pod(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    objs = rendered[profile]
    deny = find(objs, "NetworkPolicy", "-default-deny")["spec"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    selector = deny["podSelector"]["matchLabels"]
    for name, pod_labels in _pod_labels(objs):
        assert selector.items() <= pod_labels.items(), f"{name} escapes the default-deny policy"
    trainer = find(objs, "NetworkPolicy", "-trainer")["spec"]
    template_labels = job_templates(objs)["pytorchjob.yaml"]["spec"]["pytorchReplicaSpecs"]["Master"][
        "template"
    ]
    assert trainer["podSelector"]["matchLabels"].items() <= template_labels["metadata"]["labels"].items()


def _pod_labels(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, str]]]:
    for obj in objs:
        if obj["kind"] == "Deployment":
            yield obj["metadata"]["name"], obj["spec"]["template"]["metadata"]["labels"]
        elif obj["kind"] == "InferenceService":
            yield obj["metadata"]["name"], obj["spec"]["predictor"]["labels"]


def test_rendered_env_names_are_json_safe(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """List/dict settings travel as JSON, which pydantic-settings decodes (tolerations, labels)."""
    env = config_env(rendered["production"])
    assert json.loads(env["CUTALIGN_LAUNCHER_TOLERATIONS"])[0]["key"] == "nvidia.com/gpu"
    assert json.loads(env["CUTALIGN_LAUNCHER_POD_LABELS"])["app.kubernetes.io/component"] == "trainer"


def test_chart_readme_parameter_table_is_generated_from_values() -> None:
    """`make chart-docs` writes it; a new or changed `## @param` without regenerating fails here."""
    from cutalign.k8s.chart_docs import main, parameter_table

    assert main([str(CHART), "--check"]) == 0, "stale chart README parameters: run `make chart-docs`"
    table = parameter_table((CHART / "values.yaml").read_text())
    assert "| `kafka.strimzi.users.enabled` |" in table and "### Kafka (`CUTALIGN_KAFKA_*`)" in table
    documented = re.findall(r"^\s*## @param (\S+)", (CHART / "values.yaml").read_text(), flags=re.M)
    assert table.count("\n| `") == len(documented)
