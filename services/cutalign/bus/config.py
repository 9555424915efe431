"""librdkafka client configuration derived from ``KafkaSettings`` (one place for security and limits)."""

from __future__ import annotations

import logging
from typing import Any

from cutalign.config import KafkaSettings

# librdkafka's own log lines (connection retries and the like) go through Python logging, structured
# like ours, instead of being written raw to stderr.
LIBRDKAFKA_LOG = logging.getLogger("cutalign.librdkafka")


def client_config(settings: KafkaSettings, *, client_suffix: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"{settings.client_id}-{client_suffix}",
        "security.protocol": settings.security_protocol,
        "logger": LIBRDKAFKA_LOG,
    }
    if settings.ssl_ca_location and settings.security_protocol.endswith("SSL"):
        config["ssl.ca.location"] = settings.ssl_ca_location
    if settings.security_protocol.startswith("SASL"):
        if not settings.sasl_username or settings.sasl_password is None:
            raise ValueError(
                "kafka.security_protocol is SASL but kafka.sasl_username/sasl_password are unset: "
                "set CUTALIGN_KAFKA_SASL_USERNAME and CUTALIGN_KAFKA_SASL_PASSWORD (from a Secret)"
            )
        config.update(
            {
                "sasl.mechanism": settings.sasl_mechanism,
                "sasl.username": settings.sasl_username,
                "sasl.password": settings.sasl_password.get_secret_value(),
            }
        )
    return config
