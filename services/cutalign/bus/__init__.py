"""The Kafka bus (confluent-kafka): typed protobuf producer/consumer, dead letters, topic provisioning."""

from cutalign.bus.consumer import Envelope, TypedConsumer
from cutalign.bus.producer import DeliveryError, TypedProducer
from cutalign.bus.topics import all_topics, provision_topics

__all__ = ["DeliveryError", "Envelope", "TypedConsumer", "TypedProducer", "all_topics", "provision_topics"]
