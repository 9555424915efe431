"""librdkafka client configuration derived from ``KafkaSettings`` (one place for security and limits)."""

from __future__ import annotations

from typing import Any

from cutalign.config import KafkaSettings


def client_config(settings: KafkaSettings, *, client_suffix: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"{settings.client_id}-{client_suffix}",
        "security.protocol": settings.security_protocol,
    }
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
