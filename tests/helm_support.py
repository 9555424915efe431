"""Render the chart with the real Helm v3 binary (``make helm-tool``) and find objects in the output."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from cutalign.k8s.validate import load_manifests

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "cutalign"
HELM = ROOT / ".tools" / "helm" / "helm" / "helm"
NAMESPACE = "cutalign-test"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def render(chart: Path, *args: str, release: str = "rel") -> list[dict[str, Any]]:
    out = helm("template", release, str(chart), "--namespace", NAMESPACE, *args).stdout
    return load_manifests(out)


def find(objs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, (
        f"expected one {kind} *{name_suffix}, found {[m['metadata']['name'] for m in matches]}"
    )
    return matches[0]


def config_env(objs: list[dict[str, Any]], component: str = "pipeline") -> dict[str, str]:
    """The CUTALIGN_* data of one component's ConfigMap (``<fullname>-<component>-config``)."""
    return dict(find(objs, "ConfigMap", f"-{component}-config")["data"])


def all_config_env(objs: list[dict[str, Any]]) -> dict[str, str]:
    """Every component ConfigMap's data together (shared sections render identically in each)."""
    env: dict[str, str] = {}
    for obj in objs:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].endswith("-config"):
            for name, value in obj["data"].items():
                assert env.setdefault(name, value) == value or name == "CUTALIGN_KAFKA_SASL_USERNAME", name
    return env
