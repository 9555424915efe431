"""The KFP v2 pipeline compiles to the IR we mean: components, parameters, artifact types, gate, exit handler,
and the cluster wiring (ConfigMap env, Secrets, CA bundles, resources, placement) of each task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutalign.config import LauncherSettings, Toleration, TrainerSettings
from cutalign.pipelines.compile import FILENAME, compile_pipeline
from cutalign.pipelines.driver import parse_params
from cutalign.pipelines.online_iteration import PIPELINE_NAME
from cutalign.pipelines.wiring import (
    IMAGE,
    MountedBundle,
    PipelineWiring,
    SecretEnv,
    TaskResources,
    config_keys,
)

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    "plan-iteration",
    "publish-prompts",
    "wait-for-judging",
    "seal-iteration",
    "train-policy",
    "evaluate-policy",
    "promote-policy",
    "release-training-jobs",
]
RUN_ID = "{{$.pipeline_job_uuid}}"


def load_ir(path: Path) -> dict[str, Any]:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2  # the pipeline spec, then the kubernetes platform spec
    return {"spec": docs[0], "platform": docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]}


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return load_ir(compile_pipeline(tmp_path_factory.mktemp("compiled")))


def tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of every DAG (root, exit handler, condition), by name."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return {name: task for dag in dags for name, task in dag["tasks"].items()}


def test_every_step_is_a_component_on_the_project_image_without_runtime_installs(ir: dict[str, Any]) -> None:
    spec = ir["spec"]
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{s}" for s in STEPS}
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == IMAGE
        assert "pip install" not in " ".join(container["command"])  # kfp and cutalign come with the image


def test_the_image_is_the_charts_pinned_trainer_image() -> None:
    values = yaml.safe_load((ROOT / "charts/cutalign/values.yaml").read_text())
    trainer = values["images"]["trainer"]
    assert f"{trainer['repository']}:{trainer['tag']}" == IMAGE


def test_parameters_default_to_the_next_iteration_on_the_cluster(ir: dict[str, Any]) -> None:
    params = ir["spec"]["root"]["inputDefinitions"]["parameters"]
    defaults = {name: p.get("defaultValue") for name, p in params.items()}
    # 'next' mode: a run with every default (a recurring run) derives iteration, prompts and policy
    assert {n: defaults[n] for n in ("iteration", "prompts_uri", "policy_uri", "prompt_pool_uri")} == {
        "iteration": 0,
        "prompts_uri": "",
        "policy_uri": "",
        "prompt_pool_uri": "",
    }
    expected = {
        "threshold": "NUMBER_DOUBLE",
        "unlikelihood_weight": "NUMBER_DOUBLE",
        "objective": "STRING",
        "lora": "BOOLEAN",
        "lora_r": "NUMBER_INTEGER",
        "lora_alpha": "NUMBER_INTEGER",
        "learning_rate": "NUMBER_DOUBLE",
        "gpus": "NUMBER_INTEGER",
        "launcher": "STRING",
        "builder_url": "STRING",
        "policy_admin_url": "STRING",
        "gate_tolerance": "NUMBER_DOUBLE",
        "iteration": "NUMBER_INTEGER",
        "prompts_per_iteration": "NUMBER_INTEGER",
    }
    assert {n: params[n]["parameterType"] for n in expected} == expected
    # the training defaults are the trainer's and launcher's own (one source of truth for λ, α, LoRA, lr)
    trainer = TrainerSettings()
    for name in (
        "threshold",
        "unlikelihood_weight",
        "objective",
        "lora",
        "lora_r",
        "lora_alpha",
        "learning_rate",
    ):
        assert defaults[name] == getattr(trainer, name), name
    assert (defaults["launcher"], defaults["gpus"]) == ("pytorchjob", LauncherSettings().gpus_per_node)


def test_artifacts_have_the_kfp_types(ir: dict[str, Any]) -> None:
    components = ir["spec"]["components"]

    def artifact(component: str, direction: str, name: str) -> str:
        defs = components[f"comp-{component}"][direction]["artifacts"]
        return str(defs[name]["artifactType"]["schemaTitle"])

    assert artifact("seal-iteration", "outputDefinitions", "manifest") == "system.Dataset"
    assert artifact("train-policy", "inputDefinitions", "manifest") == "system.Dataset"
    assert artifact("train-policy", "outputDefinitions", "model") == "system.Model"
    assert artifact("evaluate-policy", "inputDefinitions", "model") == "system.Model"
    assert artifact("evaluate-policy", "outputDefinitions", "metrics") == "system.Metrics"
    assert artifact("promote-policy", "inputDefinitions", "metrics") == "system.Metrics"
    outputs = components["comp-evaluate-policy"]["outputDefinitions"]["parameters"]
    assert {n: p["parameterType"] for n, p in outputs.items()} == {"Output": "BOOLEAN"}  # the verdict


def test_every_step_runs_on_the_planned_iteration_and_promotion_only_inside_the_gate(
    ir: dict[str, Any],
) -> None:
    all_tasks = tasks(ir["spec"])
    for step in ("publish-prompts", "wait-for-judging", "seal-iteration", "train-policy", "evaluate-policy"):
        source = all_tasks[step]["inputs"]["parameters"]["iteration"]["taskOutputParameter"]
        assert source == {"outputParameterKey": "iteration", "producerTask": "plan-iteration"}, step
    (condition,) = [t for t in all_tasks.values() if t.get("triggerPolicy", {}).get("condition")]
    trigger = condition["triggerPolicy"]["condition"]
    assert "evaluate-policy-Output" in trigger and trigger.endswith("== true")
    inner = ir["spec"]["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"promote-policy"}
    assert "wait-for-judging" in all_tasks["seal-iteration"]["dependentTasks"]


def test_an_exit_handler_releases_the_runs_training_jobs_and_jobs_carry_the_run_id(
    ir: dict[str, Any],
) -> None:
    root = ir["spec"]["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "release-training-jobs"}
    release = root["release-training-jobs"]
    assert release["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # also after a failure
    inputs = release["inputs"]["parameters"]
    assert inputs["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert inputs["attempt"]["runtimeValue"]["constant"] == RUN_ID
    train = tasks(ir["spec"])["train-policy"]["inputs"]["parameters"]
    assert train["attempt"]["runtimeValue"]["constant"] == RUN_ID


def test_tasks_are_uncached_and_read_settings_from_the_release_on_a_cluster(ir: dict[str, Any]) -> None:
    for name, task in tasks(ir["spec"]).items():
        if "componentRef" in task and name in STEPS:
            assert task["cachingOptions"] == {}, name  # enableCache false is the proto default: empty
    executors = ir["platform"]
    assert set(executors) == {f"exec-{s}" for s in STEPS}
    for name, executor in executors.items():
        (config_map,) = executor["configMapAsEnv"]
        assert config_map["optional"] is True and config_map["configMapName"] == "cutalign-pipeline-config"
        assert [k["envVar"] for k in config_map["keyToEnv"]] == config_keys()
        secrets = {e["envVar"] for s in executor.get("secretAsEnv", []) for e in s["keyToEnv"]}
        expected = (
            set()
            if name == "exec-release-training-jobs"
            else {"CUTALIGN_S3_ACCESS_KEY", "CUTALIGN_S3_SECRET_KEY"}
        )
        assert secrets == expected, name
    assert "CUTALIGN_KAFKA_SASL_PASSWORD" not in {k for k in config_keys()}  # secrets never from a ConfigMap
    assert {"CUTALIGN_KAFKA_SSL_CA_LOCATION", "CUTALIGN_S3_CA_BUNDLE", "CUTALIGN_LAUNCHER_NAMESPACE"} <= set(
        config_keys()
    )


def test_the_wiring_reaches_each_task(tmp_path: Path) -> None:
    """Secrets (renamed keys), CA bundles, resources, placement and defaults, each where it is used."""
    gpu_toleration = Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    wiring = PipelineWiring(
        image="registry.example.com/cutalign@sha256:" + "a" * 64,
        image_pull_secrets=["regcred"],
        config_map="rel-pipeline-config",
        s3=SecretEnv(
            secret="minio-user", keys={"AK": "CUTALIGN_S3_ACCESS_KEY", "SK": "CUTALIGN_S3_SECRET_KEY"}
        ),
        kafka=SecretEnv(secret="rel-pipeline", keys={"password": "CUTALIGN_KAFKA_SASL_PASSWORD"}),
        judge=SecretEnv(secret="llm", keys={"token": "CUTALIGN_JUDGE_LLM_API_TOKEN"}),
        policy_admin=SecretEnv(secret="admin", keys={"admin-token": "CUTALIGN_ITERATION_POLICY_ADMIN_TOKEN"}),
        kafka_ca=MountedBundle(
            kind="secret", name="prod-cluster-ca-cert", mount_path="/etc/cutalign/ca/kafka"
        ),
        s3_ca=MountedBundle(kind="configMap", name="kube-root-ca.crt", mount_path="/etc/cutalign/ca/s3"),
        pod_labels={"app.kubernetes.io/component": "pipeline"},
        pod_annotations={"sidecar.istio.io/inject": "false"},
        evaluate=TaskResources(
            cpu="8", memory="64Gi", gpus=1, node_selector={"pool": "h100"}, tolerations=[gpu_toleration]
        ),
        defaults={"launcher": "trainjob", "gpus": 8, "builder_url": "http://rel-target-builder:8080"},
    )
    ir = load_ir(compile_pipeline(tmp_path, wiring))
    params = ir["spec"]["root"]["inputDefinitions"]["parameters"]
    assert (params["launcher"]["defaultValue"], params["gpus"]["defaultValue"]) == ("trainjob", 8)
    assert params["builder_url"]["defaultValue"] == "http://rel-target-builder:8080"
    executors = ir["platform"]

    def secrets(step: str) -> dict[str, tuple[str, str]]:
        return {
            e["envVar"]: (s["secretName"], e["secretKey"])
            for s in executors[f"exec-{step}"].get("secretAsEnv", [])
            for e in s["keyToEnv"]
        }

    def mounts(step: str) -> dict[str, str]:
        e = executors[f"exec-{step}"]
        found = {v["mountPath"]: v["secretName"] for v in e.get("secretAsVolume", [])}
        return found | {v["mountPath"]: v["configMapName"] for v in e.get("configMapAsVolume", [])}

    s3 = {"CUTALIGN_S3_ACCESS_KEY": ("minio-user", "AK"), "CUTALIGN_S3_SECRET_KEY": ("minio-user", "SK")}
    sasl = {"CUTALIGN_KAFKA_SASL_PASSWORD": ("rel-pipeline", "password")}
    for step in ("publish-prompts", "wait-for-judging"):
        assert secrets(step) == s3 | sasl, step
        assert mounts(step) == {
            "/etc/cutalign/ca/kafka": "prod-cluster-ca-cert",
            "/etc/cutalign/ca/s3": "kube-root-ca.crt",
        }
    assert secrets("evaluate-policy") == s3 | {"CUTALIGN_JUDGE_LLM_API_TOKEN": ("llm", "token")}
    assert secrets("promote-policy") == s3 | {
        "CUTALIGN_ITERATION_POLICY_ADMIN_TOKEN": ("admin", "admin-token")
    }
    for step in ("plan-iteration", "seal-iteration", "train-policy"):
        assert secrets(step) == s3 and mounts(step) == {"/etc/cutalign/ca/s3": "kube-root-ca.crt"}, step
    for step in STEPS:
        e = executors[f"exec-{step}"]
        assert e["podMetadata"]["labels"] == {"app.kubernetes.io/component": "pipeline"}
        assert e["podMetadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        assert [s["secretName"] for s in e["imagePullSecret"]] == ["regcred"]
    evaluate = executors["exec-evaluate-policy"]
    assert evaluate["nodeSelector"]["labels"] == {"pool": "h100"}
    assert evaluate["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
    ]
    resources = ir["spec"]["deploymentSpec"]["executors"]["exec-evaluate-policy"]["container"]["resources"]
    assert (
        resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        and resources["accelerator"]["resourceCount"] == "1"
    )
    assert (resources["resourceCpuRequest"], resources["resourceMemoryLimit"]) == ("8", "64Gi")
    assert (
        "accelerator"
        not in ir["spec"]["deploymentSpec"]["executors"]["exec-train-policy"]["container"]["resources"]
    )


def test_compilation_is_byte_for_byte_reproducible_and_the_committed_copy_is_fresh(tmp_path: Path) -> None:
    outs = []
    for n in range(2):  # separate interpreters: no state (hash seeds, ids) carries over
        out = tmp_path / str(n)
        subprocess.run(
            [sys.executable, "-m", "cutalign.pipelines.compile", "--out", str(out)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        outs.append((out / FILENAME).read_bytes())
    assert outs[0] == outs[1]
    assert (ROOT / "services/cutalign/pipelines/compiled" / FILENAME).read_bytes() == outs[0], (
        "run `make pipelines`"
    )


def test_driver_parameters_are_typed_like_the_pipeline() -> None:
    assert parse_params(["lora_r=8", "lora=false", "threshold=1.2", "launcher=pytorchjob"]) == {
        "lora_r": 8,
        "lora": False,
        "threshold": 1.2,
        "launcher": "pytorchjob",
    }
    with pytest.raises(ValueError, match="not a valid NUMBER_INTEGER"):
        parse_params(["lora_r=eight"])
    with pytest.raises(ValueError, match="NAME one of"):
        parse_params(["lamda=1.2"])
