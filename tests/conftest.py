"""Shared fixtures: one real Tansu broker and one real SeaweedFS store per test session, on loopback.

The broker uses memory storage (fast, nothing to clean); every test gets unique topic and group names so
tests never see each other's messages. Consumer settings suit Tansu (short session timeout, see toolchain).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest

from cutalign.config import KafkaSettings, S3Settings
from cutalign.platform import LocalPlatform
from cutalign.store import ArtifactStore

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    with LocalPlatform.ephemeral(tmp_path_factory.mktemp("platform")) as local:
        yield local


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name no other test uses: prefix for topics, consumer groups and buckets."""
    test = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-").lower()
    return f"t-{test}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def kafka_settings(platform: LocalPlatform, unique_name: str) -> KafkaSettings:
    """Settings pointing at the session broker, with this test's own topics."""
    return KafkaSettings(
        bootstrap_servers=platform.kafka_settings.bootstrap_servers,
        topic_prompts=f"{unique_name}.prompts",
        topic_samples=f"{unique_name}.samples",
        topic_judgments=f"{unique_name}.judgments",
        topic_deadletter=f"{unique_name}.deadletter",
        partitions=2,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
    )


@pytest.fixture
def s3_settings(platform: LocalPlatform, unique_name: str) -> S3Settings:
    """Settings pointing at the session store, with this test's own bucket (S3 bucket naming rules)."""
    bucket = unique_name.replace(".", "-")[:63].rstrip("-")
    return platform.s3.model_copy(update={"bucket": bucket})


@pytest.fixture
def store(s3_settings: S3Settings) -> ArtifactStore:
    store = ArtifactStore(s3_settings)
    store.ensure_bucket()
    return store


@pytest.fixture
def env_for(kafka_settings: KafkaSettings, s3_settings: S3Settings) -> dict[str, str]:
    """Environment variables that point a subprocess (a service under test) at this test's broker/store."""
    env = dict(os.environ)
    for prefix, settings in (("CUTALIGN_KAFKA_", kafka_settings), ("CUTALIGN_S3_", s3_settings)):
        for key, value in settings.model_dump().items():
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            env[prefix + key.upper()] = value if isinstance(value, str) else _env_value(value)
    return env


def _env_value(value: object) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


@pytest.fixture
def platform_env(platform: LocalPlatform, monkeypatch: pytest.MonkeyPatch) -> LocalPlatform:
    """The environment `cutalign up` leaves for clients (CUTALIGN_PLATFORM_*, S3 credentials), pointing at the
    session platform: a CLI command run in this test finds it running and reuses it, as it would `up`'s."""
    for name, value in platform.settings.model_dump().items():
        monkeypatch.setenv(f"CUTALIGN_PLATFORM_{name.upper()}", str(value))
    access, secret = platform.s3.credentials()
    monkeypatch.setenv("CUTALIGN_S3_ACCESS_KEY", access)
    monkeypatch.setenv("CUTALIGN_S3_SECRET_KEY", secret)
    return platform
