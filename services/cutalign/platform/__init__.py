"""The embedded local platform: a real Kafka-protocol broker (Tansu) and a real S3 store (SeaweedFS)."""

from cutalign.platform.local import LocalPlatform, PlatformError, free_port_pair

__all__ = ["LocalPlatform", "PlatformError", "free_port_pair"]
