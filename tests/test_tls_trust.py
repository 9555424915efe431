"""CA trust settings reach the clients: S3 over TLS with a private CA, Kafka's ``ssl.ca.location``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from confluent_kafka import KafkaException, Producer

from cutalign.bus.config import client_config
from cutalign.config import KafkaSettings, S3Settings
from cutalign.store import ArtifactStore
from tls_support import TlsTerminator, make_ca_and_server_cert


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_ca_and_server_cert(tmp_path)


@pytest.fixture
def tls_s3(s3_settings: S3Settings, certs: tuple[Path, Path, Path]) -> Iterator[S3Settings]:
    """The session's SeaweedFS behind a TLS terminator whose certificate a private CA signed."""
    host, port = s3_settings.endpoint.rsplit(":", 1)
    terminator = TlsTerminator((host, int(port)), certs[1], certs[2])
    yield s3_settings.model_copy(update={"endpoint": f"127.0.0.1:{terminator.port}", "secure": True})
    terminator.close()


def test_s3_over_tls_trusts_the_configured_ca(tls_s3: S3Settings, certs: tuple[Path, Path, Path]) -> None:
    store = ArtifactStore(tls_s3.model_copy(update={"ca_bundle": str(certs[0])}))
    store.ensure_bucket()
    store.put_bytes("tls/hello.txt", b"over TLS")
    assert store.get_bytes("tls/hello.txt") == b"over TLS"


def test_s3_over_tls_refuses_an_unknown_ca(tls_s3: S3Settings) -> None:
    store = ArtifactStore(tls_s3)  # public CAs only: the private CA's certificate is not trusted
    store.client._http.connection_pool_kw["retries"] = urllib3.Retry(0)  # fail at once, not after 5 retries
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="CERTIFICATE_VERIFY_FAILED"):
        store.client.bucket_exists(tls_s3.bucket)


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_kafka_tls_protocols_load_the_configured_ca(protocol: str, certs: tuple[Path, Path, Path]) -> None:
    settings = KafkaSettings(
        security_protocol=protocol,  # type: ignore[arg-type]
        ssl_ca_location=str(certs[0]),
        sasl_username="cutalign-generator",
        sasl_password="secret",  # type: ignore[arg-type]
    )
    config = client_config(settings, client_suffix="test")
    assert config["ssl.ca.location"] == str(certs[0])
    Producer(config).flush(0)  # librdkafka reads and parses the CA file at construction


def test_kafka_rejects_a_ca_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.crt"
    bogus.write_text("not a certificate")
    settings = KafkaSettings(security_protocol="SSL", ssl_ca_location=str(bogus))
    with pytest.raises(KafkaException, match="ssl.ca.location"):
        Producer(client_config(settings, client_suffix="test"))


def test_plaintext_kafka_ignores_the_ca(certs: tuple[Path, Path, Path]) -> None:
    config = client_config(KafkaSettings(ssl_ca_location=str(certs[0])), client_suffix="test")
    assert "ssl.ca.location" not in config
