"""Message headers: which schema a payload claims to be, its version, and a trace id that follows it."""

from __future__ import annotations

import uuid

SCHEMA = "schema"
SCHEMA_VERSION = "schema-version"
TRACE_ID = "trace-id"
PRODUCER = "producer"
CURRENT_SCHEMA_VERSION = "1"


def new_trace_id() -> str:
    return uuid.uuid4().hex


def decode_headers(raw: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Kafka headers as a dict; undecodable values become replacement characters rather than errors."""
    return {k: (v or b"").decode("utf-8", errors="replace") for k, v in (raw or [])}
