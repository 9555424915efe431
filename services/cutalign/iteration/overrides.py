"""Settings for a pipeline step: the environment (the chart's ConfigMap), then the step's parameters on top.

A pipeline exposes the parameters people tune per run (λ, α, LoRA rank, ...) and takes any other field of a
settings section as a JSON object, so no setting needs a pipeline change to be reachable. A key given both
ways is an error rather than a silent precedence rule, and so is an unknown key (the sections forbid extras).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def settings_with(cls: type[S], params: Mapping[str, Any], overrides_json: str = "{}") -> S:
    """``cls`` from the environment, with ``params`` and the JSON object ``overrides_json`` applied on top."""
    try:
        overrides = json.loads(overrides_json or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cls.__name__} overrides are not valid JSON ({e}): {overrides_json!r}") from e
    if not isinstance(overrides, dict):
        raise ValueError(f"{cls.__name__} overrides must be a JSON object, got {type(overrides).__name__}")
    if both := sorted(set(params) & set(overrides)):
        raise ValueError(f"{both} given both as parameters and in the {cls.__name__} overrides; keep one")
    try:
        return cls(**{**overrides, **params})
    except ValidationError as e:
        raise ValueError(f"invalid {cls.__name__} for this step: {e}") from e
