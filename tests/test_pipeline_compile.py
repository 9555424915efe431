"""The KFP v2 pipeline compiles to the IR we mean: components, parameters, artifact types, gate, image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutalign.config import TrainerSettings
from cutalign.pipelines.compile import FILENAME, compile_pipeline
from cutalign.pipelines.driver import parse_params
from cutalign.pipelines.online_iteration import CONFIG_KEYS, IMAGE, PIPELINE_NAME

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    "publish-prompts",
    "wait-for-judging",
    "seal-iteration",
    "train-policy",
    "evaluate-policy",
    "promote-policy",
]


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = compile_pipeline(tmp_path_factory.mktemp("compiled"))
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2  # the pipeline spec, then the kubernetes platform spec
    return {"spec": docs[0], "platform": docs[1]}


def test_every_step_is_a_component_on_the_project_image_without_runtime_installs(ir: dict[str, Any]) -> None:
    spec = ir["spec"]
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    assert {f"comp-{s}" for s in STEPS} <= set(spec["components"])
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


def test_parameters_and_defaults(ir: dict[str, Any]) -> None:
    params = ir["spec"]["root"]["inputDefinitions"]["parameters"]
    types = {name: p["parameterType"] for name, p in params.items()}
    assert {n: types[n] for n in ("iteration", "prompts_uri", "eval_uri", "policy_uri")} == {
        "iteration": "NUMBER_INTEGER",
        "prompts_uri": "STRING",
        "eval_uri": "STRING",
        "policy_uri": "STRING",
    }
    for required in ("iteration", "prompts_uri", "eval_uri", "policy_uri"):
        assert "defaultValue" not in params[required] and not params[required].get("isOptional")
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
    }
    assert {n: types[n] for n in expected} == expected
    # the training defaults are the trainer's own defaults (one source of truth for λ, α, LoRA, lr)
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
        assert params[name]["defaultValue"] == getattr(trainer, name), name
    assert params["launcher"]["defaultValue"] == "local"


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


def test_promotion_runs_only_inside_the_gate_condition(ir: dict[str, Any]) -> None:
    root_tasks = ir["spec"]["root"]["dag"]["tasks"]
    assert "promote-policy" not in root_tasks
    (condition_name,) = [n for n, t in root_tasks.items() if t.get("triggerPolicy")]
    trigger = root_tasks[condition_name]["triggerPolicy"]["condition"]
    assert "evaluate-policy-Output" in trigger and trigger.endswith("== true")
    assert "evaluate-policy" in root_tasks[condition_name]["dependentTasks"]
    inner = ir["spec"]["components"][root_tasks[condition_name]["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"promote-policy"}
    assert root_tasks["seal-iteration"]["dependentTasks"] == ["wait-for-judging"]


def test_tasks_are_uncached_and_read_settings_from_the_release_on_a_cluster(ir: dict[str, Any]) -> None:
    for task in ir["spec"]["root"]["dag"]["tasks"].values():
        if "componentRef" in task and not task.get("triggerPolicy"):
            assert task["cachingOptions"] == {}, (
                task
            )  # enableCache false is the proto default: an empty message
    executors = ir["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{s}" for s in STEPS}
    for config in executors.values():
        (config_map,) = config["configMapAsEnv"]
        assert config_map["optional"] is True
        assert [k["envVar"] for k in config_map["keyToEnv"]] == CONFIG_KEYS
        (secret,) = config["secretAsEnv"]
        assert {k["envVar"] for k in secret["keyToEnv"]} == {
            "CUTALIGN_S3_ACCESS_KEY",
            "CUTALIGN_S3_SECRET_KEY",
        }


def test_compilation_is_byte_for_byte_reproducible_and_the_committed_copies_are_fresh(tmp_path: Path) -> None:
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
    assert (ROOT / "services/cutalign/pipelines/compiled" / FILENAME).read_bytes() == outs[0], "run `make pipelines`"
    assert (ROOT / "charts/cutalign/files" / FILENAME).read_bytes() == outs[0], "run `make pipelines`"


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
