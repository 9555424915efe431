"""The package graph: every import of `cutalign` goes to a package at the same layer or below, and packages
form no cycle — so a service never depends on a driver, a driver never on a command, and the demo is just one
task the same loop runs.

Layers, bottom up (a package may import its own layer and those below):

0. foundations: errors, wire schemas, settings and their reference, templates, observability
1. clients and files: the bus, the store, tiny-model building, content checks
2. libraries: the local platform, the trainer, the policy (serving, client, loading), judges, Kubernetes
3. services: target builder, generator, judge service, feedback ingestion
4. one online iteration (cutalign.iteration)
5. what builds on an iteration: judgment reading, task families, the KFP pipeline
6. drivers of many iterations: through the services (online), in-process comparisons (experiment)
7. the demo
8. the command line
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "services" / "cutalign"
LAYERS = [
    {"errors", "v1", "config", "config_reference", "templates", "observability", "admin_token"},
    {"bus", "store", "modelinit", "checks"},
    {"platform", "cut", "policy", "judges", "k8s"},
    {"builder", "generator", "judging", "feedback"},
    {"iteration"},
    {"reading", "tasks", "pipelines"},
    {"online", "experiment"},
    {"demo"},
    {"cli"},
]
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}


def imports() -> dict[str, set[tuple[str, str]]]:
    """Package -> {(imported package, importing file)}: module-level and deferred imports alike."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "v1" or relative.name == "__main__.py" and len(relative.parts) == 1:
            continue
        own = relative.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            )
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "cutalign" and len(parts) > 1 and parts[1] != own:
                    found[own].add((parts[1], str(relative)))
    return found


def test_every_package_has_a_layer() -> None:
    packages = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    packages -= {"__init__", "__pycache__", "py.typed"}
    assert packages <= set(LAYER), (
        f"place {sorted(packages - set(LAYER))} in a layer of tests/test_layering.py"
    )


def test_imports_go_down_or_sideways_never_up() -> None:
    upward = sorted(
        f"{where} imports cutalign.{target} (layer {LAYER[target]} > {LAYER[package]})"
        for package, edges in imports().items()
        for target, where in edges
        if LAYER.get(target, -1) > LAYER[package]
    )
    assert not upward, "\n".join(upward)


def test_packages_form_no_cycle() -> None:
    graph = {package: {target for target, _ in edges} for package, edges in imports().items()}
    for a, b in itertools.permutations(graph, 2):
        assert not (_reaches(graph, a, b) and _reaches(graph, b, a)), (
            f"cutalign.{a} and cutalign.{b} import each other"
        )


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False
