"""Loading judged examples: reference-format files (validation, failed judgments) and sealed S3 manifests
(checksums, exclusions), plus Align-P downsampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from cutalign.cut.examples import (
    CutExample,
    DataError,
    downsample_positives,
    judgment_problem,
    load_examples,
    load_manifest,
    load_reference_file,
)
from cutalign.store import ArtifactStore, ChecksumMismatch, layout
from cutalign.v1 import common_pb2, training_pb2


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_reference_jsonl_polarity_input_ids_and_spans(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "d.jsonl",
        [
            {"instruction": "Add", "input": "2 and 3", "output": "5", "judgment": None},
            {
                "instruction": "Add",
                "output": "6",
                "judgment": "Wrong: 2+3 is 5.",
                "error_spans": [[0, 1]],
                "id": "x",
            },
            {"instruction": "Add", "output": "5", "judgment": "Perfect."},
            {"instruction": "Add", "output": "5", "judgment": ""},
            {"instruction": "Add", "output": "5", "judgment": "Good, but terse.", "score": 8},
            {
                "instruction": "Add",
                "output": "7",
                "judgment": "Off by two.",
                "score": 2.5,
                "error_spans": [{"start": 0, "end": 1}],
            },
        ],
    )
    loaded = load_reference_file(path)
    assert [e.positive for e in loaded.examples] == [True, False, True, True, True, False]
    first, second = loaded.examples[:2]
    assert first.input == "2 and 3" and first.sample_id == f"{path}:1"
    assert second == CutExample("x", "Add", "", "6", "Wrong: 2+3 is 5.", False, ((0, 1),))
    assert loaded.examples[5].error_spans == ((0, 1),)
    assert loaded.rejected == []


def test_reference_json_array(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "Say hi", "output": "hi", "judgment": "Too short."}]))
    (example,) = load_reference_file(path).examples
    assert not example.positive and example.sample_id == f"{path}[0]"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"output": "5"}, r":2: missing required field 'instruction'"),
        ({"instruction": "Add"}, r":2: missing required field 'output'"),
        ({"instruction": 3, "output": "5"}, r":2: field 'instruction' must be a string"),
        ({"instruction": " ", "output": "5"}, r":2: 'instruction' is empty"),
        ({"instruction": "Add", "output": "5", "score": "high"}, r":2: 'score' must be a number"),
        (
            {"instruction": "Add", "output": "5", "judgment": "x", "error_spans": [[0]]},
            r":2: error_spans must be",
        ),
        ([1, 2], r":2: expected a JSON object"),
    ],
)
def test_malformed_records_name_the_record(tmp_path: Path, record: object, message: str) -> None:
    path = _write(tmp_path / "d.jsonl", [{"instruction": "ok", "output": "ok"}, record])
    with pytest.raises(DataError, match=message):
        load_reference_file(path)


def test_unreadable_files_fail_with_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        load_reference_file(bad)
    obj = tmp_path / "obj.json"
    obj.write_text('{"instruction": "a"}')
    with pytest.raises(DataError, match="expected a JSON array"):
        load_reference_file(obj)
    with pytest.raises(DataError, match="no such file"):
        load_reference_file(tmp_path / "missing.jsonl")


def test_failed_judgments_are_rejected_with_a_reason(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "d.jsonl",
        [
            {"instruction": "a", "output": "b", "judgment": "$ERROR$", "id": "e1"},
            {"instruction": "a", "output": "b", "judgment": "  error ", "id": "e2"},
            {"instruction": "a", "output": "b", "judgment": "N/A", "id": "e3"},
            {"instruction": "a", "output": "b", "score": 3, "id": "e4"},
            {"instruction": "a", "output": "b", "judgment": "Wrong.", "error_spans": [[0, 5]], "id": "e5"},
            {"instruction": "a", "output": "b", "judgment": "Error: b should be c.", "id": "ok"},
        ],
    )
    loaded = load_reference_file(path)
    assert [e.sample_id for e in loaded.examples] == ["ok"]
    reasons = {r.sample_id: r.reason for r in loaded.rejected}
    assert "judge call failed" in reasons["e1"] and "judge call failed" in reasons["e2"]
    assert "judge call failed" in reasons["e3"]
    assert reasons["e4"] == "negative example without judgment text"
    assert "outside the response" in reasons["e5"]
    assert judgment_problem("The answer misses step 2.") is None


def test_load_examples_refuses_data_with_nothing_usable(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b", "judgment": "$ERROR$"}])
    with pytest.raises(DataError, match=r"no usable training examples \(1 rejected\)"):
        load_examples(str(path))


def _examples(positives: int, negatives: int) -> list[CutExample]:
    kinds = [True] * positives + [False] * negatives
    return [CutExample(f"s{i}", "i", "", "r", "" if p else "bad", p) for i, p in enumerate(kinds)]


def test_downsampling_keeps_a_quarter_of_the_negatives_count_seeded_in_order() -> None:
    examples = _examples(positives=10, negatives=8)
    kept = downsample_positives(examples, ratio=0.25, seed=1)
    assert sum(e.positive for e in kept) == 2 and sum(not e.positive for e in kept) == 8
    assert kept == downsample_positives(examples, ratio=0.25, seed=1)
    assert [examples.index(e) for e in kept] == sorted(examples.index(e) for e in kept)
    chosen = {tuple(e.sample_id for e in downsample_positives(examples, 0.25, seed)) for seed in range(10)}
    assert len(chosen) > 1  # the seed matters
    assert sum(e.positive for e in downsample_positives(examples, ratio=5.0)) == 10  # never more than exist
    assert sum(e.positive for e in downsample_positives(examples, ratio=0.0)) == 0


# -- sealed manifests on a real S3 store ---------------------------------------------------------------------


def _shard(examples: list[training_pb2.TrainingExample]) -> bytes:
    return "".join(
        json_format.MessageToJson(m, preserving_proto_field_name=True, indent=None) + "\n" for m in examples
    ).encode()


def _publish_iteration(store: ArtifactStore) -> str:
    pos = training_pb2.TrainingExample(
        sample_id="p1", kind=training_pb2.ALIGN_P, instruction="Add 2 and 3", response="5", iteration=1
    )
    dropped = training_pb2.TrainingExample(
        sample_id="p2", kind=training_pb2.ALIGN_P, instruction="Add 1 and 1", response="2", iteration=1
    )
    neg = training_pb2.TrainingExample(
        sample_id="n1",
        kind=training_pb2.ALIGN_N_MISALIGN,
        instruction="Add 2 and 2",
        input="twice",
        response="5",
        judgment="Wrong: 4.",
        error_spans=[common_pb2.Span(start=0, end=1)],
        iteration=1,
    )
    failed = training_pb2.TrainingExample(
        sample_id="n2",
        kind=training_pb2.ALIGN_N_MISALIGN,
        instruction="x",
        response="y",
        judgment="$ERROR$",
        iteration=1,
    )
    repeat = training_pb2.TrainingExample(
        sample_id="p1", kind=training_pb2.ALIGN_P, instruction="Add 2 and 3", response="6", iteration=1
    )  # a crash made a later shard repeat p1
    manifest = training_pb2.IterationManifest(iteration=1, excluded_sample_ids=["p2"])
    for i, shard in enumerate([[pos, dropped], [neg, failed, repeat]]):
        ref = store.put_bytes(layout.shard_key(1, "judgments", i, 0, 1), _shard(shard))
        manifest.shards.append(training_pb2.ShardManifest(key=ref.key, sha256=ref.sha256, count=len(shard)))
    store.put_manifest(layout.iteration_manifest_key(1), manifest)
    return store.uri(layout.iteration_manifest_key(1))


def test_manifest_examples_with_exclusions_and_rejections(store: ArtifactStore) -> None:
    uri = _publish_iteration(store)
    loaded = load_manifest(uri, store)
    assert [(e.sample_id, e.positive) for e in loaded.examples] == [("p1", True), ("n1", False)]
    neg = loaded.examples[1]
    assert (neg.input, neg.judgment, neg.error_spans) == ("twice", "Wrong: 4.", ((0, 1),))
    assert [(r.sample_id, "judge call failed" in r.reason) for r in loaded.rejected] == [("n2", True)]
    assert loaded.duplicates == 1 and loaded.examples[0].response == "5"  # the first occurrence wins
    assert [e.sample_id for e in load_examples(uri, store).examples] == ["p1", "n1"]


def test_tampered_shard_is_refused(store: ArtifactStore) -> None:
    uri = _publish_iteration(store)
    manifest = store.get_manifest(layout.iteration_manifest_key(1), training_pb2.IterationManifest)
    key = manifest.shards[1].key
    tampered = store.get_bytes(key).replace(b"Wrong: 4.", b"Right!!!!")
    store.put_bytes(key, tampered)  # a rewrite carries its own new digest; the manifest's still differs
    with pytest.raises(ChecksumMismatch):
        load_manifest(uri, store)
