"""argparse flags derived from a settings class, for the policy entry points that run as container commands.

One flag per field (``--policy_uri``, the field's own name), its help the field's description and its
default the field's value from the environment (``CUTALIGN_<SECTION>_*``), so flags, environment variables
and Helm values share one name. A flag left unset falls back to the environment; secrets never show in
``--help``.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, TypeVar

from pydantic import SecretStr
from pydantic_settings import BaseSettings

_S = TypeVar("_S", bound=BaseSettings)


def _strtobool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def _flag_type(annotation: Any) -> dict[str, Any]:
    """argparse ``type``/``choices``/``nargs`` for a field annotation (``X | None`` accepts X)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": list(typing.get_args(annotation))}
    if annotation is bool:
        return {"type": _strtobool}
    if annotation in (int, float):
        return {"type": annotation}
    if typing.get_origin(annotation) is list:
        return {"type": str, "nargs": "+"}
    return {"type": str}


def add_settings_flags(parser: argparse.ArgumentParser, settings_cls: type[BaseSettings]) -> None:
    from_env = settings_cls()  # values from the environment
    for name, field in settings_cls.model_fields.items():
        default = getattr(from_env, name)
        if isinstance(default, SecretStr) or default == []:
            default = None  # never print a secret in --help; an unset flag falls back to the environment
        parser.add_argument(
            f"--{name}", default=default, help=field.description, **_flag_type(field.annotation)
        )


def settings_from_args(settings_cls: type[_S], args: argparse.Namespace) -> _S:
    """Flags win; a flag left unset (None) falls back to its environment variable."""
    given = {name: getattr(args, name) for name in settings_cls.model_fields}
    return settings_cls(**{name: value for name, value in given.items() if value is not None})
