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


RawHeaders = list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None


def decode_headers(raw: RawHeaders) -> dict[str, str]:
    """Kafka headers as a dict; undecodable values become replacement characters rather than errors."""
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return {k: v if isinstance(v, str) else (v or b"").decode("utf-8", errors="replace") for k, v in items}
