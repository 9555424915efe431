"""Tiny models and judged data for the trainer tests (imported by tests/test_cut_*, tests/test_trainer_*)."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from cutalign.modelinit import ModelShape, init_model

CORPUS = string.printable
TINY = ModelShape(layers=2, hidden_size=32, heads=2, intermediate_size=64, max_positions=256)


def tiny_model(directory: Path, seed: int = 0) -> Path:
    init_model(CORPUS, directory, TINY, seed)
    return directory


def arithmetic_records(n: int, *, spans: bool = True, every_positive: int = 3) -> list[dict[str, Any]]:
    """Reference-format records: "a+b=c"; every ``every_positive``-th is right, the others off by one with the
    judgment naming the wrong digits (and, with ``spans``, their character span)."""
    records = []
    for i in range(n):
        a, b = i % 7, (3 * i) % 5
        right = i % every_positive == 0
        answer = a + b if right else a + b + 1
        response = f"{a}+{b}={answer}"
        record: dict[str, Any] = {"id": f"ex{i}", "instruction": f"add {a} and {b}", "output": response}
        if right:
            record["judgment"] = None
        else:
            record["judgment"] = f"wrong: {a}+{b} is {a + b}, not {answer}"
            if spans:
                record["error_spans"] = [[response.index("=") + 1, len(response)]]
        records.append(record)
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
