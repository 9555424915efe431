"""Typed settings: env prefixes, cross-field checks, secrets that never show, a README with the real keys."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from cutalign.config import KafkaSettings, MissingCredentials, S3Settings, TrainerSettings
from cutalign.config_reference import markdown
from cutalign.store import ArtifactStore

README = Path(__file__).resolve().parents[1] / "README.md"


def test_sections_read_their_own_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTALIGN_KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9093,kafka-1:9093")
    monkeypatch.setenv("CUTALIGN_TRAINER_THRESHOLD", "1.2")
    assert KafkaSettings().bootstrap_servers == "kafka-0:9093,kafka-1:9093"
    assert TrainerSettings().threshold == 1.2


def test_invalid_values_fail_at_construction_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="heartbeat_interval_ms"):
        KafkaSettings(session_timeout_ms=3000, heartbeat_interval_ms=2000)
    with pytest.raises(ValidationError, match="threshold"):
        TrainerSettings(threshold=0.9)
    with pytest.raises(ValidationError, match="Extra inputs"):
        TrainerSettings(thresold=1.2)  # type: ignore[call-arg]


def test_secrets_are_masked_in_repr_str_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    settings = S3Settings(access_key="AKIA-visible-id", secret_key="super-secret-value")
    kafka = KafkaSettings(sasl_username="svc", sasl_password="kafka-secret-value")
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings %s %r %s", settings, settings, kafka)
    text = caplog.text + repr(settings) + str(settings) + repr(kafka)
    assert "super-secret-value" not in text and "kafka-secret-value" not in text
    assert "**********" in text


def test_s3_credentials_have_no_default_and_say_where_they_come_from() -> None:
    with pytest.raises(MissingCredentials, match="S3 credentials are not set") as raised:
        ArtifactStore(S3Settings())
    assert "CUTALIGN_S3_ACCESS_KEY" in raised.value.hint


def test_readme_lists_exactly_the_real_configuration_keys() -> None:
    text = README.read_text()
    section = re.search(r"<!-- config:start -->\n(.*?)<!-- config:end -->", text, re.S)
    assert section, "README.md lost its generated configuration section"
    assert section.group(1) == markdown(), "README config reference is stale: paste `cutalign config` output"
