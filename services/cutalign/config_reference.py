"""The configuration reference (every settings section, env var, default and description) as markdown.

The README embeds this table and a test fails when it drifts from the settings classes, so the documented
keys are always the real ones. ``cutalign config`` prints it.
"""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from cutalign import config

SECTIONS: list[type[BaseSettings]] = [
    config.KafkaSettings,
    config.S3Settings,
    config.PolicySettings,
    config.PolicyServerSettings,
    config.ModelSyncSettings,
    config.GeneratorSettings,
    config.JudgeSettings,
    config.BuilderSettings,
    config.FeedbackSettings,
    config.TrainerSettings,
    config.IterationSettings,
    config.OnlineSettings,
    config.LauncherSettings,
    config.PlatformSettings,
]


def _default(cls: type[BaseSettings], name: str) -> str:
    field = cls.model_fields[name]
    if field.annotation is SecretStr or "SecretStr" in str(field.annotation):
        return "*(secret)*"
    value = field.get_default(call_default_factory=True)
    text = "" if value is None else str(value)
    return f"`{text}`" if text else ""


def markdown() -> str:
    lines = []
    for cls in SECTIONS:
        prefix = cls.model_config.get("env_prefix", "")
        lines += [f"**{cls.__name__}** — {(cls.__doc__ or '').strip().splitlines()[0]}", ""]
        lines += ["| env var | default | description |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            description = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{prefix}{name.upper()}` | {_default(cls, name)} | {description} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
