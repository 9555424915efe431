"""The service Dockerfiles, parsed and checked; no Docker engine exists here, so no image is built.

Each ``services/<name>/Dockerfile`` must be multi-stage on a pinned base image, run as a non-root user, carry
no secret, install the one ``cutalign`` package with torch pinned to pyproject's version from a per-variant
index (build arg ``TORCH_VARIANT``), copy only files that exist, and start an entry point that exists: a
module of the package (``importlib.util.find_spec``) or the trainer script. The thin
``services/<name>/main.py`` of each service must call the same module.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# service directory -> what its container runs (a module of the package, or the trainer's torchrun script)
SERVICES = {
    "policy-server": "cutalign.policy.server",
    "generator": "cutalign.generator.service",
    "judge": "cutalign.judging.service",
    "target-builder": "cutalign.builder.service",
    "feedback": "cutalign.feedback.app",
    "trainer": "/app/services/trainer/main.py",
}
SECRET_LIKE = re.compile(r"(?i)(secret|passw|token|api_?key|access_?key|salt|credential)")
PINNED_BASE = re.compile(r"^[\w./-]+(:\d+\.\d+\.\d+[\w.-]*|@sha256:[a-f0-9]{64})$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile (continuations joined, comments dropped), each with its stage index."""
    text = re.sub(r"\\\n", " ", path.read_text())
    instructions, stage = [], -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    return dict(
        i.args.split("=", 1) for i in instructions if i.keyword == "ARG" and i.stage == -1 and "=" in i.args
    )


@pytest.fixture(params=sorted(SERVICES))
def service(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def dockerfile(service: str) -> list[Instruction]:
    path = ROOT / "services" / service / "Dockerfile"
    assert path.is_file(), f"{path} is missing"
    return parse(path)


def test_image_is_multistage_on_a_pinned_base_not_built_here(service: str) -> None:
    """No Docker engine exists here: the base image reference is checked, not pulled."""
    instructions = dockerfile(service)
    args = global_args(instructions)
    bases = [i.args.split()[0] for i in instructions if i.keyword == "FROM"]
    assert len(bases) >= 2, "multi-stage: a build stage and a slim runtime stage"
    for base in bases:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert PINNED_BASE.match(resolved), (
            f"{service}: base {resolved!r} is not pinned (exact tag or digest)"
        )
    final = [i for i in instructions if i.stage == len(bases) - 1]
    assert any(i.keyword == "COPY" and i.args.startswith("--from=build") for i in final), (
        "runtime copies the venv"
    )


def test_image_runs_as_non_root(service: str) -> None:
    instructions = dockerfile(service)
    final_stage = max(i.stage for i in instructions)
    users = [i.args for i in instructions if i.keyword == "USER" and i.stage == final_stage]
    assert users, f"{service}: the runtime stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) >= 1000), users[-1]
    assert int(user) == 10001, "the chart's securityContext runs as 10001"


def test_image_bakes_in_no_secret(service: str) -> None:
    for i in dockerfile(service):
        if i.keyword in ("ENV", "ARG"):
            names = re.findall(r"(\w+)=", i.args) or [i.args.split()[0]]
            assert not [n for n in names if SECRET_LIKE.search(n)], f"{service}: {i.keyword} {i.args}"
        if i.keyword == "COPY":
            assert not SECRET_LIKE.search(i.args), f"{service}: COPY {i.args}"


def test_image_installs_the_package_with_pinned_torch_variant(service: str) -> None:
    instructions = dockerfile(service)
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert any(i.keyword == "ARG" and i.args.startswith("TORCH_VARIANT=") for i in instructions)
    assert "https://download.pytorch.org/whl/${TORCH_VARIANT}" in runs
    assert "startswith('torch==')" in runs, "torch is installed at pyproject's pinned version"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.fullmatch(r"torch==\d+\.\d+\.\d+", d) for d in deps), "pyproject must pin torch exactly"
    assert "pip install ." in runs


def test_copied_files_exist(service: str) -> None:
    """`docker build` fails on a COPY source that does not exist (build context: the repository root)."""
    ignore = (ROOT / ".dockerignore").read_text().split()
    for i in dockerfile(service):
        if i.keyword != "COPY" or i.args.startswith("--from"):
            continue
        *sources, _ = i.args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{service}: COPY {source} does not exist in the repository"
            top = source.split("/")[0]
            assert f"!{top}" in ignore or f"!{top}/" in ignore, f".dockerignore excludes {source}"


def test_entry_point_exists(service: str) -> None:
    entrypoint = json.loads(next(i.args for i in dockerfile(service) if i.keyword == "ENTRYPOINT"))
    expected = SERVICES[service]
    if expected.startswith("/app/"):
        assert entrypoint == ["python", expected]
        script = ROOT / expected.removeprefix("/app/")
        assert script.is_file(), f"{script} is missing"
        copies = [i.args for i in dockerfile(service) if i.keyword == "COPY"]
        assert f"{expected.removeprefix('/app/')} {expected}" in copies, "the script is copied into the image"
    else:
        assert entrypoint == ["python", "-m", expected]
        assert importlib.util.find_spec(expected) is not None, (
            f"{service}: module {expected} does not exist yet"
        )


def test_thin_main_calls_the_same_entry(service: str) -> None:
    main = ROOT / "services" / service / "main.py"
    assert main.is_file(), f"{main} is missing"
    expected = SERVICES[service]
    if not expected.startswith("/app/"):
        assert f"from {expected} import main" in main.read_text()
