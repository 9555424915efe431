"""Command-line flags derived from the settings classes: one default and one help text per knob.

Every knob is declared once, as a field of a settings class in :mod:`cutalign.config` (type, default,
validation, description). :func:`settings_flags` turns the fields of one or more classes into typer options —
``micro_batch_size`` becomes ``--micro-batch-size``, a ``bool`` becomes ``--x/--no-x``, a ``Literal`` a
choice, a ``list[str]`` a repeatable option, anything structured (dicts, lists of objects) a JSON value — and
hands the command one validated settings instance per class.

Precedence is the settings' own: a flag given on the command line beats the ``CUTALIGN_*`` environment, which
beats the field's default. Flags left at their default are not passed on, so the environment still configures
what the command line does not mention. Secret fields never become flags (command lines show up in ``ps``).
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import typer
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from cutalign.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
_CONTEXT = "flags_context__"  # the parameter typer fills with the click context (where each value came from)


@dataclass(frozen=True)
class Flags:
    """The flags of one settings class, delivered to the command's parameter ``dest`` as an instance.

    ``only``/``skip`` choose fields (a driver that sets a field itself, such as ``max_steps``, skips it);
    ``prefix`` names the flags ``--<prefix><field>`` unless the field already starts with the prefix's word
    (``JudgeSettings.judge`` with prefix ``judge-`` stays ``--judge``, ``options_json`` becomes
    ``--judge-options-json``). ``preset`` replaces some defaults with a command's named preset (the demo's
    sizes): those values are shown as the defaults and used unless the flag is given.
    """

    settings: type[BaseModel]
    dest: str
    only: Sequence[str] | None = None
    skip: Sequence[str] = ()
    prefix: str = ""
    preset: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> list[tuple[str, FieldInfo]]:
        names = self.only if self.only is not None else list(self.settings.model_fields)
        unknown = [n for n in [*names, *self.skip] if n not in self.settings.model_fields]
        if unknown:
            raise TypeError(f"{self.settings.__name__} has no fields {unknown}")
        return [
            (name, self.settings.model_fields[name])
            for name in names
            if name not in self.skip and not _is_secret(self.settings.model_fields[name])
        ]

    def flag(self, name: str) -> str:
        word = self.prefix.rstrip("-_")
        stem = name if not self.prefix or name == word or name.startswith(word + "_") else self.prefix + name
        return "--" + stem.replace("_", "-")

    def param(self, name: str) -> str:
        return f"{self.dest}__{name}"


def settings_flags(*groups: Flags) -> Callable[[F], F]:
    """Decorate a typer command: add the groups' flags, call it with one settings instance per group."""

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name not in {g.dest for g in groups}]
        derived = [_parameter(group, name, info) for group in groups for name, info in group.fields()]
        taken = [p.name for p in own]
        flags = [f for g in groups for f in (g.flag(n) for n, _ in g.fields())]
        clashes = {f for f in flags if flags.count(f) > 1 or f.removeprefix("--").replace("-", "_") in taken}
        if clashes:
            raise TypeError(f"{command.__name__}: flags {sorted(clashes)} are defined twice")

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            source = kwargs.pop(_CONTEXT).get_parameter_source
            for group in groups:
                given = {}
                for name, _ in group.fields():
                    value = kwargs.pop(group.param(name))
                    if source(group.param(name)).name == "COMMANDLINE":
                        given[name] = value
                    elif name in group.preset:
                        given[name] = group.preset[name]
                kwargs[group.dest] = build(group.settings, given)
            return command(**kwargs)

        context = inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        parameters = [*own, *derived, context]
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {}  # typer reads the Annotated types from the signature
        return typing.cast(F, wrapper)

    return decorate


def build(settings: type[BaseModel], values: Mapping[str, Any]) -> Any:
    """``settings(**values)``, a validation error as a short user error naming the flags."""
    try:
        return settings(**values)
    except ValidationError as e:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}"
            if err["loc"]
            else err["msg"]
            for err in e.errors()
        )
        raise UserError(f"invalid {settings.__name__}: {problems}") from e


def _is_secret(info: FieldInfo) -> bool:
    return SecretStr in _members(info.annotation)


def _members(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _parameter(group: Flags, name: str, info: FieldInfo) -> inspect.Parameter:
    """The typer parameter of one field: its type mapped to a click type, its default, its description."""
    members = [m for m in _members(info.annotation) if m is not type(None)]
    kind = members[0] if len(members) == 1 else str
    default = group.preset.get(
        name, None if info.is_required() else info.get_default(call_default_factory=True)
    )
    help_text = info.description or ""
    decl = group.flag(name)
    annotation: Any
    extra: dict[str, Any] = {}
    if kind is bool:
        stem = decl.removeprefix("--")
        decl, annotation = f"--{stem}/--no-{stem}", bool
    elif get_origin(kind) is Literal or kind in (int, float, str):
        annotation = kind
    elif get_origin(kind) is list and get_args(kind) in ((str,), (int,), (float,)):
        annotation = kind
        default = default or None  # click wants None, not [], for "not given"
    else:  # structured values (dicts, lists of objects) travel as JSON, parsed by the settings
        annotation = str
        extra["metavar"] = "JSON"
        extra["callback"] = _json_value
        default = json.dumps(_plain(default)) if default not in (None, {}, []) else None
        help_text += " (JSON)"
    if info.is_required():
        help_text += " [required]"
    option = typer.Option(decl, help=help_text, show_default=default is not None, **extra)
    return inspect.Parameter(
        group.param(name),
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation | None if default is None else annotation, option],
    )


def _json_value(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"not valid JSON ({e})") from e


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
