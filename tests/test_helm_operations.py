"""What a platform team expects of the chart, rendered with the real Helm binary: Strimzi resources and their
ACLs, CA trust, the release's compiled pipeline against the chart's values, operations (extra env and volumes,
PDBs, monitors and alerts on metrics the code exports, a helm test pod) and NetworkPolicies."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutalign.pipelines.compile import compile_pipeline
from cutalign.pipelines.wiring import PipelineWiring, config_keys
from helm_support import CHART, HELM, NAMESPACE, config_env, find, render

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = CHART / "ci" / "production-values.yaml"
KAFKA_CLIENTS = ("generator", "judge", "target-builder", "feedback", "pipeline")

pytestmark = pytest.mark.skipif(not HELM.exists(), reason=f"{HELM} is missing: run `make helm-tool` first")


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return render(CHART, "-f", str(PRODUCTION))


def containers(obj: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of a Deployment, Job, Pod or InferenceService."""
    pod = {
        "Deployment": lambda o: o["spec"]["template"]["spec"],
        "Job": lambda o: o["spec"]["template"]["spec"],
        "Pod": lambda o: o["spec"],
        "InferenceService": lambda o: o["spec"]["predictor"],
    }[obj["kind"]](obj)
    for c in pod["containers"]:
        yield pod, c


def deployment(objs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return find(objs, "Deployment", f"-{component}")


# -- Kafka the Strimzi way ---


def test_strimzi_v1_topics_are_kept_and_v1beta2_is_selectable(production: list[dict[str, Any]]) -> None:
    topics = [o for o in production if o["kind"] == "KafkaTopic"]
    assert len(topics) == 4
    for topic in topics:
        assert topic["apiVersion"] == "kafka.strimzi.io/v1"
        assert topic["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    tenant = find(production, "Tenant")
    assert tenant["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    old = render(CHART, "-f", str(PRODUCTION), "--set", "kafka.strimzi.apiVersion=kafka.strimzi.io/v1beta2")
    assert {o["apiVersion"] for o in old if o["kind"] in ("KafkaTopic", "KafkaUser")} == {
        "kafka.strimzi.io/v1beta2"
    }


def test_a_kafka_user_per_component_with_acls_for_exactly_its_topics_and_groups(
    production: list[dict[str, Any]],
) -> None:
    users = {
        o["metadata"]["name"].removeprefix("rel-cutalign-"): o for o in production if o["kind"] == "KafkaUser"
    }
    assert set(users) == set(KAFKA_CLIENTS)

    def grants(component: str) -> set[tuple[str, str, str, str]]:
        spec = users[component]["spec"]
        assert (
            spec["authentication"] == {"type": "scram-sha-512"} and spec["authorization"]["type"] == "simple"
        )
        return {
            (a["resource"]["type"], a["resource"]["name"], a["resource"]["patternType"], op)
            for a in spec["authorization"]["acls"]
            for op in a["operations"]
        }

    def topic(name: str, *ops: str) -> set[tuple[str, str, str, str]]:
        return {("topic", f"cutalign.{name}", "literal", op) for op in ops}

    assert grants("generator") == (
        topic("prompts", "Describe", "Read")
        | topic("samples", "Describe", "Write")
        | topic("deadletter", "Describe", "Write")
        | {("group", "cutalign-generator", "literal", "Read")}
    )
    assert grants("judge") == (
        topic("samples", "Describe", "Read")
        | topic("judgments", "Describe", "Write")
        | topic("deadletter", "Describe", "Write")
        | {("group", "cutalign-judge", "literal", "Read")}
    )
    assert grants("target-builder") == (
        topic("judgments", "Describe", "Read")
        | topic("deadletter", "Describe", "Write")
        | {("group", "cutalign-target-builder", "literal", "Read")}
    )
    assert grants("feedback") == topic("judgments", "Describe", "Write")
    assert grants("pipeline") == (
        topic("prompts", "Describe", "Write")
        | topic("deadletter", "Describe", "Read")
        | {("group", "cutalign-pipeline-deadletters-", "prefix", "Read")}
    )
    # the User Operator's Secrets get the reflector's annotations (to be copied into the release namespace)
    annotations = users["judge"]["spec"]["template"]["secret"]["metadata"]["annotations"]
    assert annotations["reflector.v1.k8s.emberstack.com/reflection-auto-namespaces"] == "cutalign"


def test_each_component_reads_its_password_the_way_strimzi_writes_it(
    production: list[dict[str, Any]],
) -> None:
    """A KafkaUser Secret has `password` and `sasl.jaas.config` but no user name: it is the user's name."""
    for component in ("generator", "judge", "target-builder", "feedback"):
        ((_, c),) = containers(deployment(production, component))
        env = {e["name"]: e for e in c["env"]}
        ref = env["CUTALIGN_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"rel-cutalign-{component}", "key": "password"}, component
        assert "CUTALIGN_KAFKA_SASL_USERNAME" not in env
        data = config_env(production, component)
        assert data["CUTALIGN_KAFKA_SASL_USERNAME"] == f"rel-cutalign-{component}"


def test_release_scoped_topic_names_reach_topics_acls_and_settings() -> None:
    objs = render(CHART, "-f", str(PRODUCTION), "--set", "kafka.releaseScopedTopics=true", release="blue")
    names = {t["spec"]["topicName"] for t in objs if t["kind"] == "KafkaTopic"}
    assert names == {f"blue-cutalign.cutalign.{t}" for t in ("prompts", "samples", "judgments", "deadletter")}
    assert config_env(objs, "generator")["CUTALIGN_KAFKA_TOPIC_PROMPTS"] == "blue-cutalign.cutalign.prompts"
    acl_topics = {
        a["resource"]["name"]
        for u in objs
        if u["kind"] == "KafkaUser"
        for a in u["spec"]["authorization"]["acls"]
        if a["resource"]["type"] == "topic"
    }
    assert acl_topics == names


# -- CA trust ---


def test_ca_bundles_are_mounted_where_the_settings_point(production: list[dict[str, Any]]) -> None:
    """Every pod whose settings name a CA file mounts the bundle (Strimzi's cluster CA, the cluster CA of the
    MinIO operator's auto-cert) in that file's directory."""
    checked = 0
    for obj in production:
        if obj["kind"] not in ("Deployment",) or obj["metadata"]["name"].endswith("-policy"):
            continue  # TGI reads its weights from a volume, not through cutalign's store client
        component = obj["metadata"]["name"].removeprefix("rel-cutalign-")
        env = config_env(production, component)
        ((pod, c),) = containers(obj)
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        for setting, source in (
            ("CUTALIGN_KAFKA_SSL_CA_LOCATION", {"secret": {"secretName": "prod-cluster-ca-cert"}}),
            ("CUTALIGN_S3_CA_BUNDLE", {"configMap": {"name": "kube-root-ca.crt"}}),
        ):
            if setting in env:
                directory, _, key = env[setting].rpartition("/")
                assert key == "ca.crt"
                volume = volumes[mounts[directory]]
                assert {k: v for k, v in volume.items() if k != "name"} == source, (component, setting)
                checked += 1
    assert checked == 7  # Kafka: generator, judge, builder, feedback; S3: generator, builder, feedback


# -- the release's pipeline against the chart's values ---


def test_the_compiled_pipeline_carries_the_charts_secrets_ca_and_resources(
    production: list[dict[str, Any]], tmp_path: Path
) -> None:
    """What the upload Job compiles: the IR's SASL, S3 (renamed keys), LLM token, CA and resources wiring
    and its run defaults are the production profile's values."""
    values = yaml.safe_load(PRODUCTION.read_text())
    wiring = PipelineWiring.model_validate_json(
        find(production, "ConfigMap", "-pipeline-upload")["data"]["wiring.json"]
    )
    path = compile_pipeline(tmp_path, wiring)
    spec, platform = yaml.safe_load_all(path.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    step_env = config_env(production)

    def secret_env(step: str) -> dict[str, tuple[str, str]]:
        return {
            e["envVar"]: (s["secretName"], e["secretKey"])
            for s in executors[f"exec-{step}"].get("secretAsEnv", [])
            for e in s["keyToEnv"]
        }

    s3 = values["s3"]
    assert secret_env("plan-iteration") == {
        "CUTALIGN_S3_ACCESS_KEY": (s3["existingSecret"], s3["accessKeyKey"]),  # CONSOLE_ACCESS_KEY: renamed
        "CUTALIGN_S3_SECRET_KEY": (s3["existingSecret"], s3["secretKeyKey"]),
    }
    assert secret_env("publish-prompts")["CUTALIGN_KAFKA_SASL_PASSWORD"] == (
        "rel-cutalign-pipeline",
        "password",
    )
    assert step_env["CUTALIGN_KAFKA_SASL_USERNAME"] == "rel-cutalign-pipeline"
    assert secret_env("evaluate-policy")["CUTALIGN_JUDGE_LLM_API_TOKEN"] == (
        values["judge"]["llm"]["existingSecret"],
        "api-token",
    )
    publish = executors["exec-publish-prompts"]
    assert {v["mountPath"]: v["secretName"] for v in publish["secretAsVolume"]} == {
        "/etc/cutalign/ca/kafka": values["kafka"]["tls"]["caSecret"]
    }
    assert {v["mountPath"]: v["configMapName"] for v in publish["configMapAsVolume"]} == {
        "/etc/cutalign/ca/s3": values["s3"]["tls"]["caConfigMap"]
    }
    assert step_env["CUTALIGN_KAFKA_SSL_CA_LOCATION"].startswith("/etc/cutalign/ca/kafka/")
    assert step_env["CUTALIGN_S3_CA_BUNDLE"].startswith("/etc/cutalign/ca/s3/")
    (config_map,) = publish["configMapAsEnv"]
    assert config_map["configMapName"] == "rel-cutalign-pipeline-config"
    assert set(step_env) <= set(config_keys()), "a setting of the steps' ConfigMap would never reach them"
    # evaluation on the training hardware: one GPU of the training nodes, their selector and tolerations
    launcher = values["launcher"]
    evaluate = spec["deploymentSpec"]["executors"]["exec-evaluate-policy"]["container"]["resources"]
    assert (
        evaluate["accelerator"]["resourceType"] == "nvidia.com/gpu"
        and evaluate["accelerator"]["resourceCount"] == "1"
    )
    assert (evaluate["resourceCpuRequest"], evaluate["resourceMemoryLimit"]) == (
        launcher["cpu"],
        launcher["memory"],
    )
    assert executors["exec-evaluate-policy"]["nodeSelector"]["labels"] == launcher["nodeSelector"]
    assert executors["exec-evaluate-policy"]["tolerations"] == launcher["tolerations"]
    train = spec["deploymentSpec"]["executors"]["exec-train-policy"]["container"]["resources"]
    assert "accelerator" not in train and train["resourceMemoryLimit"] == "1Gi"  # it submits the PyTorchJob
    # a UI run with every default does what the release is configured to do
    defaults = {n: p.get("defaultValue") for n, p in spec["root"]["inputDefinitions"]["parameters"].items()}
    run = values["pipeline"]["run"]
    assert {
        k: defaults[k] for k in ("launcher", "gpus", "eval_uri", "prompt_pool_uri", "prompts_per_iteration")
    } == {
        "launcher": "pytorchjob",
        "gpus": launcher["gpusPerNode"],
        "eval_uri": run["evalUri"],
        "prompt_pool_uri": run["promptPoolUri"],
        "prompts_per_iteration": run["promptsPerIteration"],
    }
    assert defaults["builder_url"] == f"http://rel-cutalign-target-builder.{NAMESPACE}.svc.cluster.local:8080"
    assert defaults["policy_admin_url"] == ""  # TGI loads weights only at start-up: nothing to hot-reload
    assert (defaults["iteration"], defaults["policy_uri"], defaults["base_policy_uri"]) == (
        0,
        "",
        run["basePolicyUri"],
    )
    for step in executors.values():  # the NetworkPolicies admit the task pods by these labels; no Istio hang
        assert step["podMetadata"]["labels"]["app.kubernetes.io/component"] == "pipeline"
        assert step["podMetadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}


def test_the_upload_job_keeps_the_recurring_run_of_the_online_loop(production: list[dict[str, Any]]) -> None:
    ((_, upload),) = containers(find(production, "Job"))
    values = yaml.safe_load(PRODUCTION.read_text())
    assert values["pipeline"]["recurring"]["enabled"] is True
    for arg in (
        "--schedule=0 0 */6 * * *",
        "--recurring-run-name=cutalign-online-loop",
        "--service-account=default-editor",
    ):
        assert arg in upload["command"]
    minimal = render(CHART, "-f", str(CHART / "ci" / "minimal-values.yaml"))
    ((_, upload),) = containers(find(minimal, "Job"))
    assert not [a for a in upload["command"] if a.startswith("--schedule")]


def test_kserve_profile_promotes_through_the_inference_service() -> None:
    """KServe serves what the InferenceService's storage URI names: the promote step patches it (no hot reload
    through the server's admin API), and training and evaluation get the profile's GPUs."""
    objs = render(CHART, "-f", str(CHART / "ci" / "kserve-values.yaml"))
    wiring = PipelineWiring.model_validate_json(
        find(objs, "ConfigMap", "-pipeline-upload")["data"]["wiring.json"]
    )
    assert wiring.defaults["policy_admin_url"] == ""
    steps = find(objs, "ConfigMap", "-pipeline-config")["data"]
    assert (
        steps["CUTALIGN_ITERATION_POLICY_RESOURCE"]
        == find(objs, "InferenceService", "-policy")["metadata"]["name"]
    )
    assert wiring.policy_admin is not None
    assert wiring.policy_admin.keys == {"admin-token": "CUTALIGN_ITERATION_POLICY_ADMIN_TOKEN"}
    assert wiring.builder_admin is not None
    assert wiring.builder_admin.keys == {"admin-token": "CUTALIGN_ITERATION_BUILDER_ADMIN_TOKEN"}
    assert (wiring.defaults["launcher"], wiring.defaults["gpus"], wiring.evaluate.gpus) == ("trainjob", 4, 1)
    cpu = render(CHART, "-f", str(CHART / "ci" / "minimal-values.yaml"))
    wiring = PipelineWiring.model_validate_json(
        find(cpu, "ConfigMap", "-pipeline-upload")["data"]["wiring.json"]
    )
    assert wiring.evaluate.gpus == 0  # CPU training: CPU evaluation


# -- operations ---


def test_extra_env_volumes_and_pod_metadata_per_component() -> None:
    objs = render(
        CHART,
        "-f",
        str(CHART / "ci" / "minimal-values.yaml"),
        "--set",
        "judge.extraEnv[0].name=HTTPS_PROXY",
        "--set",
        "judge.extraEnv[0].value=http://proxy:3128",
        "--set",
        "judge.extraEnvFrom[0].secretRef.name=judge-extra",
        "--set",
        "judge.extraVolumes[0].name=cache",
        "--set",
        "judge.extraVolumes[0].emptyDir.medium=Memory",
        "--set",
        "judge.extraVolumeMounts[0].name=cache",
        "--set",
        "judge.extraVolumeMounts[0].mountPath=/cache",
        "--set",
        "judge.podAnnotations.team=ml",
        "--set",
        "judge.podLabels.tier=judging",
    )
    judge = deployment(objs, "judge")
    ((pod, c),) = containers(judge)
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in c["env"]
    assert {"secretRef": {"name": "judge-extra"}} in c["envFrom"]
    assert {"name": "cache", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "cache", "mountPath": "/cache"} in c["volumeMounts"]
    meta = judge["spec"]["template"]["metadata"]
    assert meta["annotations"]["team"] == "ml" and meta["labels"]["tier"] == "judging"
    ((_, generator),) = containers(deployment(objs, "generator"))
    assert all(e["name"] != "HTTPS_PROXY" for e in generator["env"])  # per component


def test_the_vllm_pod_takes_the_same_per_component_additions() -> None:
    extras = {
        "policy.extraEnv[0].name": "HTTPS_PROXY",
        "policy.extraEnv[0].value": "http://proxy:3128",
        "policy.extraVolumes[0].name": "cache",
        "policy.extraVolumes[0].emptyDir.medium": "Memory",
        "policy.extraVolumeMounts[0].name": "cache",
        "policy.extraVolumeMounts[0].mountPath": "/cache",
        "policy.podAnnotations.team": "ml",
        "policy.podLabels.tier": "serving",
    }
    args = [a for key, value in extras.items() for a in ("--set", f"{key}={value}")]
    policy = deployment(render(CHART, "-f", str(PRODUCTION), *args), "policy")
    pod = policy["spec"]["template"]
    (vllm, sidecar) = pod["spec"]["containers"]
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in vllm["env"]
    assert {"name": "cache", "mountPath": "/cache"} in vllm["volumeMounts"]
    assert {"name": "cache", "emptyDir": {"medium": "Memory"}} in pod["spec"]["volumes"]
    assert pod["metadata"]["annotations"]["team"] == "ml" and pod["metadata"]["labels"]["tier"] == "serving"
    assert pod["metadata"]["annotations"]["checksum/config"]
    assert all(e["name"] != "HTTPS_PROXY" for e in sidecar["env"]), "the server's, not the model sync's"


def test_pod_disruption_budgets_select_each_service(production: list[dict[str, Any]]) -> None:
    pdbs = {
        o["metadata"]["name"].removeprefix("rel-cutalign-"): o
        for o in production
        if o["kind"] == "PodDisruptionBudget"
    }
    assert set(pdbs) == {"generator", "judge", "target-builder", "feedback", "policy"}
    for component, pdb in pdbs.items():
        labels = deployment(production, component)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["maxUnavailable"] == 1


def _exported_metrics() -> set[str]:
    """Every Prometheus metric name the services define (Counter/Gauge/Histogram literals in the code)."""
    names = set()
    for path in (ROOT / "services" / "cutalign").rglob("*.py"):
        names |= set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(cutalign_[a-z_]+)"', path.read_text()))
    return names


def _queried_metrics(text: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\b(cutalign_[a-z_]+)", text)} - {
        "cutalign_rules"
    }


def test_monitors_alerts_and_dashboard_use_metrics_the_services_export(
    production: list[dict[str, Any]],
) -> None:
    monitor = find(production, "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": port, "path": "/metrics", "interval": "30s"} for port in ("http", "sync")
    ]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rule = find(production, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "CutalignDeadLetterRate",
        "CutalignPolicyVersionRefusals",
        "CutalignServedReleaseMismatch",
        "CutalignBuilderLag",
        "CutalignFeedback5xx",
    }
    exported = _exported_metrics()
    queried = _queried_metrics(yaml.safe_dump(rule["spec"]))
    assert queried and queried <= exported, f"alerts on metrics nobody exports: {queried - exported}"
    dashboard = find(production, "ConfigMap", "-dashboard")["data"]["cutalign.json"]
    queried = _queried_metrics(dashboard)
    assert len(queried) >= 10 and queried <= exported, (
        f"panels on metrics nobody exports: {queried - exported}"
    )
    services = render(CHART, "-f", str(PRODUCTION), "--set", "metrics.serviceMonitor.enabled=true")
    assert find(services, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "http"
    for component in ("generator", "judge"):  # they had no Service to scrape through
        assert find(services, "Service", f"-{component}")["spec"]["ports"][0]["name"] == "http"


def test_helm_test_pod_checks_every_service_and_the_pipeline_version(
    production: list[dict[str, Any]],
) -> None:
    pod = find(production, "Pod", "-release-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = pod["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "cutalign.pipelines.release_check"]
    ready = {a.removeprefix("--ready=") for a in command if a.startswith("--ready=")}
    svc = f"{NAMESPACE}.svc.cluster.local"
    assert ready == {
        f"http://rel-cutalign-generator.{svc}:8080/readyz",
        f"http://rel-cutalign-judge.{svc}:8080/readyz",
        f"http://rel-cutalign-target-builder.{svc}:8080/readyz",
        f"http://rel-cutalign-feedback.{svc}:80/readyz",
        f"http://rel-cutalign-policy.{svc}:8080/health",  # vLLM
    }
    assert "--wiring=/pipeline/wiring.json" in command and "--pipeline=cutalign-online-iteration" in command
    services = {o["metadata"]["name"] for o in production if o["kind"] == "Service"}
    for url in ready:
        assert url.split("//")[1].split(".")[0] in services, url


def test_network_policies_admit_the_pipeline_tasks_and_the_judge_model() -> None:
    objs = render(CHART, "-f", str(CHART / "ci" / "kserve-values.yaml"))
    wiring = PipelineWiring.model_validate_json(
        find(objs, "ConfigMap", "-pipeline-upload")["data"]["wiring.json"]
    )
    task_peer = {"podSelector": {"matchLabels": wiring.pod_labels}}

    def peers(component: str) -> list[dict[str, Any]]:
        (rule,) = find(objs, "NetworkPolicy", f"-{component}")["spec"]["ingress"]
        return list(rule["from"])

    assert task_peer in peers("target-builder")  # seal
    assert task_peer in peers("policy")  # hot reload after promotion
    assert task_peer in peers("judge-model") and any(
        p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "judge"
        for p in peers("judge-model")
    )
    tests = find(objs, "NetworkPolicy", "-release-test")["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert tests["matchLabels"]["app.kubernetes.io/component"] == "release-test"
