"""Topic provisioning from config: every service can create what it needs, idempotently."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from cutalign.bus.config import client_config
from cutalign.config import KafkaSettings

log = logging.getLogger(__name__)


def all_topics(settings: KafkaSettings) -> list[str]:
    return [
        settings.topic_prompts,
        settings.topic_samples,
        settings.topic_judgments,
        settings.topic_deadletter,
    ]


def provision_topics(
    settings: KafkaSettings, topics: list[str] | None = None, timeout_s: float = 15.0
) -> None:
    """Create ``topics`` (default: all four) with the configured partitions and replication; keep existing.

    Each topic takes messages up to ``kafka.max_message_bytes`` (``max.message.bytes``): the limit producers
    check against must be the broker's too, or a message that passed the check would be refused on delivery.
    """
    admin = AdminClient(client_config(settings, client_suffix="admin"))
    wanted = topics if topics is not None else all_topics(settings)
    config = {"max.message.bytes": str(settings.max_message_bytes)}
    futures = admin.create_topics(
        [NewTopic(t, settings.partitions, settings.replication_factor, config=config) for t in wanted],
        request_timeout=timeout_s,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            log.info("topic created", extra={"topic": topic, "partitions": settings.partitions})
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
