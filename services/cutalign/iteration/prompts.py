"""Step 1 of an online iteration: fix the iteration's prompt set in S3, then publish it on the prompts topic.

A prompt set is JSON lines ``{"id", "instruction", "input"?, ...}``; every other key is task data that reaches
the judge as ``reference`` (``Prompt.reference_json``), e.g. the counting task's ``start``/``end``.

Why the copy comes first: ``iterations/{i}/prompts/{split}.jsonl`` is the record of what iteration ``i`` was
asked, so it is written before any message is sent and never changed afterwards — publishing again (a retried
pipeline step) is allowed only with byte-identical data, and the generator and builder deduplicate the
redelivered prompts by id. A different set for an iteration that already has one is refused: the method
never reuses or replaces an iteration's instructions.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cutalign.bus import TypedProducer
from cutalign.config import KafkaSettings
from cutalign.cut.location import is_s3, resolve
from cutalign.errors import UserError
from cutalign.store import ArtifactStore, ObjectMissing, sha256_bytes
from cutalign.store.layout import prompts_key
from cutalign.v1 import messages_pb2

log = logging.getLogger(__name__)

PROMPT_FIELDS = ("id", "instruction", "input")
SERVICE = "pipeline"


class PromptSetError(UserError, ValueError):
    """A prompt set is malformed, or conflicts with the set already recorded for its iteration."""


@dataclass(frozen=True)
class PromptSet:
    """A parsed prompt set and the exact bytes it was read from."""

    rows: list[dict[str, Any]]
    data: bytes
    source: str

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.data)


@dataclass(frozen=True)
class PublishedPrompts:
    iteration: int
    split: str
    count: int
    uri: str  # where the set is recorded: s3://bucket/iterations/{i}/prompts/{split}.jsonl
    sha256: str


def read_source(source: str, store: ArtifactStore | None) -> bytes:
    """The bytes at ``source``: a local path or an ``s3://`` URI (any bucket of the store's endpoint)."""
    if is_s3(source):
        bound, key = resolve(source, store)
        return bound.get_bytes(key)
    path = Path(source.removeprefix("file://"))
    if not path.is_file():
        raise PromptSetError(f"prompt set {source} is not a file; give a JSONL path or an s3:// URI")
    return path.read_bytes()


def parse_prompt_set(data: bytes, source: str) -> list[dict[str, Any]]:
    """Parse and check JSON lines: each an object with a unique non-empty ``id`` and ``instruction``."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptSetError(f"{source}:{number}: not valid JSON ({e})") from e
        if not isinstance(row, dict):
            raise PromptSetError(
                f"{source}:{number}: a prompt must be a JSON object, got {type(row).__name__}"
            )
        for name in ("id", "instruction"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise PromptSetError(f"{source}:{number}: {name!r} must be a non-empty string")
        if not isinstance(row.get("input", ""), str):
            raise PromptSetError(f"{source}:{number}: 'input' must be a string when present")
        if row["id"] in seen:
            raise PromptSetError(f"{source}:{number}: duplicate prompt id {row['id']!r}; ids must be unique")
        seen.add(row["id"])
        rows.append(row)
    if not rows:
        raise PromptSetError(f"prompt set {source} holds no prompts")
    return rows


def load_prompt_set(source: str, store: ArtifactStore | None = None) -> PromptSet:
    data = read_source(source, store)
    return PromptSet(parse_prompt_set(data, source), data, source)


def reference_of(row: dict[str, Any]) -> dict[str, Any]:
    """The task data of a prompt row: every key but id/instruction/input (the judge's ``reference``)."""
    return {k: v for k, v in row.items() if k not in PROMPT_FIELDS}


def prompt_message(
    row: dict[str, Any], iteration: int, split: str, created_at_ms: int
) -> messages_pb2.Prompt:
    reference = reference_of(row)
    return messages_pb2.Prompt(
        id=row["id"],
        instruction=row["instruction"],
        input=row.get("input", ""),
        reference_json=json.dumps(reference, sort_keys=True) if reference else "",
        iteration=iteration,
        split=split,
        created_at_ms=created_at_ms,
    )


def record_prompt_set(store: ArtifactStore, prompts: PromptSet, iteration: int, split: str) -> str:
    """Copy the set to the iteration's prompts key (once); returns its URI. Identical copies are no-ops."""
    key = prompts_key(iteration, split)
    try:
        existing = store.get_bytes(key)
    except ObjectMissing:
        store.put_bytes(key, prompts.data, content_type="application/x-ndjson")
        return store.uri(key)
    if sha256_bytes(existing) != prompts.sha256:
        raise PromptSetError(
            f"iteration {iteration} already has a different {split} prompt set at {store.uri(key)}; an "
            "iteration's prompts are never replaced — publish the new set as a new iteration"
        )
    log.info("prompt set already recorded for iteration %d (%s), publishing again", iteration, split)
    return store.uri(key)


def publish_prompts(
    source: str,
    iteration: int,
    *,
    store: ArtifactStore,
    kafka: KafkaSettings,
    split: str = "train",
) -> PublishedPrompts:
    """Record the prompt set at ``source`` for ``iteration`` and publish one ``Prompt`` per row (key = id).

    Returns once every message is acknowledged by the broker (``TypedProducer.flush``).
    """
    prompts = load_prompt_set(source, store)
    uri = record_prompt_set(store, prompts, iteration, split)
    now = int(time.time() * 1000)
    with TypedProducer(kafka, service=SERVICE) as producer:
        for row in prompts.rows:
            producer.send(kafka.topic_prompts, prompt_message(row, iteration, split, now), key=row["id"])
    log.info(
        "published %d prompts for iteration %d",
        len(prompts.rows),
        iteration,
        extra={"topic": kafka.topic_prompts, "uri": uri},
    )
    return PublishedPrompts(iteration, split, len(prompts.rows), uri, prompts.sha256)
