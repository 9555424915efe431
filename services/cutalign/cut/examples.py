"""Training triplets (instruction, response, judgment) and where they come from.

Two sources:
* a sealed iteration manifest in the artifact store (``s3://bucket/iterations/0001/manifest.json``) — the
  online loop's data. Each shard it lists is read with the sha256 the manifest recorded, so a shard altered
  after sealing is refused (``ChecksumMismatch``), and the Align-P examples the builder downsampled away
  (``excluded_sample_ids``) are dropped;
* a reference-format JSON array or JSONL file (``instruction``, optional ``input``, ``output``, ``judgment``:
  null/empty = positive, optional ``score``: >= 7 = positive) — offline data such as Shepherd critiques.

Two kinds of problems, treated differently: a record that is not a valid record (missing field, wrong type,
unreadable JSON) is an error naming the record — the file must be fixed. A record whose *judgment* is
unusable (a failed judge call such as the literal ``$ERROR$`` the reference data kept, a negative with no
judgment text, error spans outside the response) is rejected with a reason and training goes on without it:
such a record must never become a negative example, and one bad judge call should not stop an iteration.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from cutalign.checks import span_problem
from cutalign.cut.location import resolve
from cutalign.errors import UserError
from cutalign.store import ArtifactStore
from cutalign.v1 import training_pb2

log = logging.getLogger(__name__)

POSITIVE_SCORE = 7.0
_FAILED_JUDGMENT = re.compile(r"^\W*(error|failed|failure|exception|n/?a|none|null|nan|timeout)\W*$", re.I)


class DataError(UserError, ValueError):
    """A training record is malformed; the message names the record and what to fix."""


@dataclass(frozen=True)
class CutExample:
    """One judged response. ``error_spans``: [start, end) character spans of ``response`` a judge blamed."""

    sample_id: str
    instruction: str
    input: str
    response: str
    judgment: str
    positive: bool
    error_spans: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Rejection:
    sample_id: str
    reason: str


@dataclass
class LoadedExamples:
    examples: list[CutExample]
    rejected: list[Rejection] = field(default_factory=list)
    source: str = ""
    duplicates: int = 0  # later occurrences of a sample id, skipped (manifest lineage: duplicate_positions)

    def log_summary(self) -> None:
        positives = sum(e.positive for e in self.examples)
        log.info(
            "%s: %d examples (%d positive, %d negative), %d rejected",
            self.source,
            len(self.examples),
            positives,
            len(self.examples) - positives,
            len(self.rejected),
        )
        if self.duplicates:
            log.info("%s: skipped %d later occurrence(s) of sample ids", self.source, self.duplicates)
        for reason, n in Counter(r.reason for r in self.rejected).most_common():
            log.warning("%s: rejected %d example(s): %s", self.source, n, reason)


def judgment_problem(judgment: str) -> str | None:
    """Why ``judgment`` cannot be a negative judgment, or None if it can."""
    text = judgment.strip()
    if not text:
        return "negative example without judgment text"
    if "$ERROR$" in text.upper() or _FAILED_JUDGMENT.match(text):
        return f"judge call failed (judgment is {text[:40]!r})"
    return None


def is_positive_judgment(judgment: str | None) -> bool:
    """Positive iff empty (the reference data's convention) or starting with "Perfect" (judge prompt's)."""
    return not judgment or not judgment.strip() or judgment.strip().lower().startswith("perfect")


def load_examples(data: str, store: ArtifactStore | None = None) -> LoadedExamples:
    """Load from an ``s3://`` iteration manifest or a local ``.json``/``.jsonl`` reference-format file."""
    loaded = load_manifest(data, store) if data.startswith("s3://") else load_reference_file(Path(data))
    loaded.log_summary()
    if not loaded.examples:
        raise DataError(f"{data}: no usable training examples ({len(loaded.rejected)} rejected)")
    return loaded


# -- sealed iteration manifests ----------------------------------------------------------------------------


def load_manifest(uri: str, store: ArtifactStore | None = None) -> LoadedExamples:
    store, key = resolve(uri, store)
    manifest = store.get_manifest(key, training_pb2.IterationManifest)
    if not manifest.shards:
        raise DataError(f"{uri}: the manifest lists no shards")
    excluded = set(manifest.excluded_sample_ids)
    loaded = LoadedExamples(examples=[], source=uri)
    seen: set[str] = set()
    for shard in manifest.shards:
        data = store.get_bytes(shard.key, expected_sha256=shard.sha256)
        for line_no, line in enumerate(data.decode().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{store.uri(shard.key)}:{line_no}"
            try:
                message = json_format.Parse(line, training_pb2.TrainingExample())
            except json_format.ParseError as e:
                raise DataError(f"{where}: not a TrainingExample in protobuf JSON: {e}") from e
            if message.sample_id in excluded:
                continue
            if message.sample_id in seen:  # shards overlap only after a crash: the first occurrence wins
                loaded.duplicates += 1
                continue
            seen.add(message.sample_id)
            _accept(loaded, _from_message(message, where))
    return loaded


def _from_message(message: training_pb2.TrainingExample, where: str) -> CutExample:
    if message.kind == training_pb2.ALIGN_P:
        positive = True
    elif message.kind == training_pb2.ALIGN_N_MISALIGN:
        positive = False
    else:
        raise DataError(f"{where}: sample {message.sample_id!r} has no kind (ALIGN_P or ALIGN_N_MISALIGN)")
    if not message.sample_id or not message.instruction:
        raise DataError(f"{where}: sample_id and instruction must be set")
    return CutExample(
        sample_id=message.sample_id,
        instruction=message.instruction,
        input=message.input,
        response=message.response,
        judgment=message.judgment,
        positive=positive,
        error_spans=tuple((s.start, s.end) for s in message.error_spans),
    )


def _accept(loaded: LoadedExamples, example: CutExample) -> None:
    problem = None if example.positive else judgment_problem(example.judgment)
    problem = problem or span_problem(example.error_spans, example.response)
    if problem:
        loaded.rejected.append(Rejection(example.sample_id, problem))
    else:
        loaded.examples.append(example)


# -- reference-format files ----------------------------------------------------------------------------------


def load_reference_file(path: Path) -> LoadedExamples:
    """A JSON array (``.json``) or one JSON object per line (``.jsonl``) of reference-format records."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a .json/.jsonl file or an s3:// manifest URI)")
    text = path.read_text(encoding="utf-8")
    records: list[tuple[str, Any]] = []
    if path.suffix == ".jsonl":
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                records.append((f"{path}:{line_no}", _parse_json(line, f"{path}:{line_no}")))
    else:
        array = _parse_json(text, str(path))
        if not isinstance(array, list):
            raise DataError(f"{path}: expected a JSON array of records (or use a .jsonl file)")
        records = [(f"{path}[{i}]", record) for i, record in enumerate(array)]
    loaded = LoadedExamples(examples=[], source=str(path))
    for where, record in records:
        _accept(loaded, _from_record(record, where))
    return loaded


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e}") from e


def _from_record(record: Any, where: str) -> CutExample:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    instruction = _text(record, "instruction", where, required=True)
    if not instruction.strip():
        raise DataError(f"{where}: 'instruction' is empty")
    response = _text(record, "output", where, required=True)
    judgment = _text(record, "judgment", where, required=False)
    score = record.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise DataError(f"{where}: 'score' must be a number, got {score!r}")
    positive = score >= POSITIVE_SCORE if score is not None else is_positive_judgment(judgment)
    return CutExample(
        sample_id=str(record.get("sample_id") or record.get("id") or where),
        instruction=instruction,
        input=_text(record, "input", where, required=False),
        response=response,
        judgment=judgment,
        positive=positive,
        error_spans=_spans(record.get("error_spans"), where),
    )


def _text(record: dict[str, Any], name: str, where: str, *, required: bool) -> str:
    value = record.get(name)
    if value is None:
        if required:
            raise DataError(f"{where}: missing required field {name!r}")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _spans(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    spans = []
    for item in value if isinstance(value, list) else [value]:
        pair = [item.get("start"), item.get("end")] if isinstance(item, dict) else item
        if not (isinstance(pair, list) and len(pair) == 2 and all(type(v) is int for v in pair)):
            raise DataError(
                f"{where}: error_spans must be [start, end] pairs or {{start, end}} objects, got {item!r}"
            )
        spans.append((pair[0], pair[1]))
    return tuple(spans)


# -- Align-P downsampling (offline data; sealed manifests are already downsampled) ---------------------------


def downsample_positives(examples: list[CutExample], ratio: float = 0.25, seed: int = 42) -> list[CutExample]:
    """Keep ``round(ratio x negatives)`` positives chosen at random (seeded), all negatives, original order.

    The reference pipeline does this so that the MLE on positives does not drown the contrastive signal.
    """
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0, got {ratio}")
    positives = [i for i, e in enumerate(examples) if e.positive]
    keep_n = min(len(positives), round(ratio * (len(examples) - len(positives))))
    kept = set(random.Random(seed).sample(positives, keep_n))
    result = [e for i, e in enumerate(examples) if not e.positive or i in kept]
    log.info("Align-P downsampling: kept %d of %d positives (ratio %.2f)", keep_n, len(positives), ratio)
    return result
