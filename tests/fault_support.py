"""Faults to inject, shared by the fault-injection tests and the soak (``tests/soak.py``).

``FaultJudge`` is a user's judge that misbehaves on demand: the sample's reference names the fault. It is
loaded by dotted path (``fault_support:FaultJudge``), as a user's judge is, into the judge's worker processes.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from cutalign.bus.config import client_config
from cutalign.config import KafkaSettings
from cutalign.judges.base import Judgment
from cutalign.v1 import messages_pb2, training_pb2

JUDGE = "fault_support:FaultJudge"


class FaultJudge:
    """Positive for a response of even length, negative (blaming the last character) otherwise — unless the
    sample's reference asks for a fault:

    * ``hang``: never answers (sleeps an hour); ``fail``: raises ``ConnectionError``;
    * ``huge_text``: answers with ``size`` characters of text;
    * ``float_span`` / ``mid_span``: a span of floats / an empty span in the middle of the response (both
      must be refused, not trained on).
    """

    id = "fault-judge"

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Any:
        fault = (reference or {}).get("fault")
        if fault == "hang":
            time.sleep(3600)
        if fault == "fail":
            raise ConnectionError("judge endpoint reset the connection")
        if fault == "huge_text":
            return ("x" * int((reference or {})["size"]), False)
        if fault == "float_span":
            return Judgment("The last character is wrong.", False, [(0.0, 1.0)])  # type: ignore[list-item]
        if fault == "mid_span":
            return Judgment("Something is missing here.", False, [(1, 1)])
        if len(response) % 2 == 0:
            return ("Perfect.", True)
        return Judgment("The last character is wrong.", False, [(len(response) - 1, len(response))])


def sample(sid: str, response: str = "ab", **reference: Any) -> messages_pb2.Sample:
    prompt = messages_pb2.Prompt(
        id=sid.split("#")[0],
        instruction="Answer with an even number of characters.",
        iteration=1,
        reference_json=json.dumps(reference),
    )
    return messages_pb2.Sample(id=sid, prompt=prompt, response=response, iteration=1)


def read_topic(kafka: KafkaSettings, topic: str, message_type: type, idle_s: float = 1.5) -> Iterator[Any]:
    """``(key, message)`` of every record on ``topic``, from the start (no group), until ``idle_s`` brings
    nothing (not to the high watermark, which Tansu under-reports)."""
    consumer = Consumer(
        {**client_config(kafka, client_suffix=f"reader-{uuid.uuid4().hex[:6]}"), "group.id": "x"}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(kafka.partitions)])
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for raw in consumer.consume(500, 0.2):
                if raw.error() is None:
                    last = time.monotonic()
                    yield (raw.key() or b"").decode(errors="replace"), message_type.FromString(raw.value())
    finally:
        consumer.close()


def dead_letters_by_key(kafka: KafkaSettings) -> dict[str, training_pb2.DeadLetter]:
    return dict(read_topic(kafka, kafka.topic_deadletter, training_pb2.DeadLetter))


def processes_with_env(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``marker`` (a test's children and theirs)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state != "Z":
                    found.append(int(proc.name))
        except OSError:
            continue
    return found
