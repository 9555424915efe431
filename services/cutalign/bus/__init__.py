"""The Kafka bus: typed protobuf producer/consumer, dead-letter policy, topic provisioning (confluent-kafka)."""

from cutalign.bus.consumer import Envelope, TypedConsumer
from cutalign.bus.producer import DeliveryError, TypedProducer
from cutalign.bus.topics import all_topics, provision_topics

__all__ = ["DeliveryError", "Envelope", "TypedConsumer", "TypedProducer", "all_topics", "provision_topics"]
