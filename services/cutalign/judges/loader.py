"""Find and build a judge from configuration: an entry point name or a dotted path ``package.module:Class``.

Entry points (group ``cutalign.judges``) let an installed package offer judges by name; a dotted path needs
only the module to be importable. Only the requested judge's module is imported, so a judge with heavy or
optional dependencies (the LLM judge's HTTP client) costs nothing to a deployment that does not use it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from cutalign.config import JudgeSettings
from cutalign.errors import UserError
from cutalign.judges.base import Judge, judge_id_of
from cutalign.judges.guard import GamingGuard

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cutalign.judges"


class JudgeLoadError(UserError, ValueError):
    """The configured judge cannot be found or built; the message says how to fix the configuration."""


def load_judge_class(spec: str) -> type:
    """Resolve ``spec`` (entry point name or ``package.module:Class``) to a judge class; imports only it."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise JudgeLoadError(f"judge {spec!r} is not of the form 'package.module:ClassName'")
        obj = _import_attr(spec, module_name, attr)
    else:
        obj = _load_entry_point(spec)
    if not inspect.isclass(obj):
        raise JudgeLoadError(
            f"judge {spec!r} is a {type(obj).__name__}, not a class; point it at a judge class"
        )
    if not callable(getattr(obj, "judge", None)):
        raise JudgeLoadError(
            f"{obj.__module__}.{obj.__qualname__} (from {spec!r}) is not a judge: it has no "
            "`judge(self, instruction, response, reference)` method (see cutalign.judges.base)"
        )
    return obj


def load_judge(spec: str, options: Mapping[str, Any] | None = None) -> Judge:
    """Build the judge named by ``spec`` with keyword ``options``."""
    cls = load_judge_class(spec)
    opts = dict(options or {})
    try:
        inspect.signature(cls).bind(**opts)
    except TypeError as e:
        raise JudgeLoadError(
            f"judge {spec!r} does not accept options {sorted(opts)}: {e}; "
            f"its constructor is {cls.__qualname__}{inspect.signature(cls)}"
        ) from e
    judge: Judge = cls(**opts)
    log.info("loaded judge %s from %r with options %s", judge_id_of(judge), spec, sorted(opts))
    return judge


def parse_options(options_json: str) -> dict[str, Any]:
    """Parse ``JudgeSettings.options_json``: it must be a JSON object of keyword arguments."""
    try:
        options = json.loads(options_json)
    except json.JSONDecodeError as e:
        raise JudgeLoadError(f"judge options_json is not valid JSON ({e}): {options_json!r}") from e
    if not isinstance(options, dict):
        raise JudgeLoadError(f"judge options_json must be a JSON object, got {type(options).__name__}")
    return options


def judge_from_settings(settings: JudgeSettings) -> Judge:
    """The configured judge, wrapped in the gaming guard unless ``settings.guard`` is off."""
    judge = load_judge(settings.judge, parse_options(settings.options_json))
    if not settings.guard:
        log.warning("the gaming guard is off: degenerate responses can be judged positive")
        return judge
    return GamingGuard(judge, min_chars=settings.guard_min_chars, min_tokens=settings.guard_min_tokens)


def _import_attr(spec: str, module_name: str, attr: str) -> object:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise JudgeLoadError(
                f"cannot find module {module_name!r} for judge {spec!r}: install the package that provides "
                "it or add its directory to PYTHONPATH"
            ) from e
        raise JudgeLoadError(
            f"module {module_name!r} for judge {spec!r} was found but imports {e.name!r}, "
            "which is not installed"
        ) from e
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            classes = sorted(name for name, value in vars(module).items() if inspect.isclass(value))
            raise JudgeLoadError(
                f"module {module_name!r} has no {attr!r} (judge {spec!r}); classes there: {classes}"
            ) from e
    return obj


def _load_entry_point(name: str) -> object:
    found = entry_points(group=ENTRY_POINT_GROUP)
    matches = [ep for ep in found if ep.name == name]
    if not matches:
        raise JudgeLoadError(
            f"no judge named {name!r}: installed {ENTRY_POINT_GROUP} entry points are {sorted(found.names)}; "
            "or give a dotted path 'package.module:ClassName'"
        )
    entry_point = matches[0]
    try:
        return entry_point.load()
    except (ImportError, AttributeError) as e:
        raise JudgeLoadError(
            f"judge entry point {name!r} = {entry_point.value!r} cannot be loaded: {e}; "
            "reinstall the package that declares it"
        ) from e
