"""The trainer end to end on a tiny Llama: CUT with LoRA, the baselines, full fine-tuning, S3 in and out,
exports (the merged model really is base + LoRA) and resume safety."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from google.protobuf import json_format
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cutalign.config import TrainerSettings
from cutalign.cut.export import read_metrics
from cutalign.cut.trainer import train
from cutalign.policy.version import policy_sha256
from cutalign.store import ArtifactStore, layout
from cutalign.v1 import common_pb2, training_pb2
from trainer_support import arithmetic_records, tiny_model, write_jsonl

torch.set_num_threads(2)
BASE_SETTINGS = dict(
    template="short", micro_batch_size=4, max_steps=3, checkpoint_every=2, learning_rate=1e-2
)
STEP_KEYS = {
    "loss/total",
    "loss/mle",
    "loss/unlikelihood",
    "tokens/flagged_fraction",
    "throughput/tokens_per_s",
    "lr",
}
DETECTION_KEYS = {"detection/recall", "detection/flagged_outside_spans"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", arithmetic_records(16))


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(directory).state_dict()


def test_cut_with_lora_exports_base_plus_adapter_and_metrics(base: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = train(TrainerSettings(**BASE_SETTINGS), str(data), str(base), str(out), progress=False)
    assert (result.objective, result.steps, result.examples, result.resumed_from) == ("cut", 3, 16, None)

    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m.keys() >= STEP_KEYS and m["throughput/tokens_per_s"] > 0 for m in metrics)
    with_negatives = [m for m in metrics if m["loss/unlikelihood"] > 0]  # length grouping may batch positives
    assert with_negatives and all(m.keys() >= DETECTION_KEYS for m in with_negatives)
    assert not any(DETECTION_KEYS & m.keys() for m in metrics if m["loss/unlikelihood"] == 0)
    assert metrics[-1] == result.final_metrics

    merged, original = _weights(out / "model"), _weights(base)
    assert result.model_sha256 == policy_sha256(out / "model")
    assert AutoTokenizer.from_pretrained(out / "model")("1+1")["input_ids"]
    name = "model.layers.0.mlp.gate_proj.weight"
    adapter = load_file(out / "checkpoints" / "step-00000003" / "trainable.safetensors")
    prefix = "base_model.model.model.layers.0.mlp.gate_proj"
    lora_a, lora_b = adapter[f"{prefix}.lora_A.default.weight"], adapter[f"{prefix}.lora_B.default.weight"]
    assert lora_b.abs().sum() > 0  # the adapter trained
    torch.testing.assert_close(merged[name], original[name] + (16 / 16) * lora_b @ lora_a)  # alpha / r = 1
    torch.testing.assert_close(
        merged["model.layers.0.self_attn.q_proj.weight"], original["model.layers.0.self_attn.q_proj.weight"]
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    state = json.loads((out / "checkpoints" / "step-00000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["config"]["objective"] == "cut"


@pytest.mark.parametrize(("objective", "examples"), [("sft", 6), ("hindsight", 16), ("unlikelihood", 16)])
def test_baselines_train_on_the_same_data(
    base: Path, data: Path, tmp_path: Path, objective: str, examples: int
) -> None:
    settings = TrainerSettings(**{**BASE_SETTINGS, "max_steps": 2}, objective=objective)
    result = train(settings, str(data), str(base), str(tmp_path / "out"), progress=False)
    assert result.examples == examples  # sft sees the 6 positives only
    metrics = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert len(metrics) == 2 and all(m.keys() >= STEP_KEYS for m in metrics)
    assert any(m["loss/unlikelihood"] > 0 for m in metrics) == (objective == "unlikelihood")


def test_full_fine_tuning_trains_every_layer(base: Path, data: Path, tmp_path: Path) -> None:
    settings = TrainerSettings(**BASE_SETTINGS, lora=False)
    train(settings, str(data), str(base), str(tmp_path / "out"), progress=False)
    merged, original = _weights(tmp_path / "out" / "model"), _weights(base)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert not torch.equal(merged[name], original[name]), name


def test_resume_refuses_other_settings_and_disabled_resume(base: Path, data: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    train(TrainerSettings(**{**BASE_SETTINGS, "max_steps": 2}), str(data), str(base), out, progress=False)
    again = train(
        TrainerSettings(**{**BASE_SETTINGS, "max_steps": 2}), str(data), str(base), out, progress=False
    )
    assert again.resumed_from == 2 and again.steps == 2
    with pytest.raises(ValueError, match="settings differ: learning_rate"):
        train(
            TrainerSettings(**{**BASE_SETTINGS, "max_steps": 2, "learning_rate": 1e-3}),
            str(data),
            str(base),
            out,
            progress=False,
        )
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(
            TrainerSettings(**{**BASE_SETTINGS, "max_steps": 2, "resume": False}),
            str(data),
            str(base),
            out,
            progress=False,
        )
    other = write_jsonl(tmp_path / "other.jsonl", arithmetic_records(17))
    with pytest.raises(ValueError, match="the training data differ"):
        train(
            TrainerSettings(**{**BASE_SETTINGS, "max_steps": 2}), str(other), str(base), out, progress=False
        )


def _publish_manifest(store: ArtifactStore, records: list[dict]) -> str:
    lines = []
    for r in records:
        message = training_pb2.TrainingExample(
            sample_id=r["id"],
            instruction=r["instruction"],
            response=r["output"],
            judgment=r["judgment"] or "",
            kind=training_pb2.ALIGN_P if r["judgment"] is None else training_pb2.ALIGN_N_MISALIGN,
            error_spans=[common_pb2.Span(start=s, end=e) for s, e in r.get("error_spans", [])],
            iteration=1,
        )
        lines.append(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None))
    ref = store.put_bytes(
        layout.shard_key(1, "judgments", 0, 0, len(lines) - 1), ("\n".join(lines) + "\n").encode()
    )
    manifest = training_pb2.IterationManifest(
        iteration=1, shards=[training_pb2.ShardManifest(key=ref.key, sha256=ref.sha256)]
    )
    store.put_manifest(layout.iteration_manifest_key(1), manifest)
    return store.uri(layout.iteration_manifest_key(1))


def test_s3_manifest_model_and_outputs(store: ArtifactStore, base: Path, tmp_path: Path) -> None:
    data = _publish_manifest(store, arithmetic_records(8))
    store.upload_dir(layout.base_model_prefix("tiny"), base)
    model = store.uri(layout.base_model_prefix("tiny"))
    out = store.uri("runs/r1")
    settings = TrainerSettings(**{**BASE_SETTINGS, "max_steps": 2})
    result = train(settings, data, model, out, store=store, progress=False)
    assert result.model_uri == store.uri("runs/r1/model") and result.examples == 8
    keys = set(store.list("runs/r1/"))
    assert {
        "runs/r1/model/model.safetensors",
        "runs/r1/model/tokenizer.json",
        "runs/r1/metrics.jsonl",
        "runs/r1/checkpoints/step-00000002/trainer_state.json",
        "runs/r1/checkpoints/step-00000002/trainable.safetensors",
    } <= keys
    downloaded = store.download_dir("runs/r1/model/", tmp_path / "model")
    assert policy_sha256(downloaded) == result.model_sha256, "the hash the policy server computes"
    assert len(store.get_bytes("runs/r1/metrics.jsonl").decode().splitlines()) == 2
    again = train(
        settings, data, model, out, store=store, progress=False
    )  # resumes from S3: nothing left to do
    assert again.resumed_from == 2 and again.model_sha256 == result.model_sha256
    assert again.final_metrics == result.final_metrics


def test_a_bfloat16_base_is_trained_on_float32_master_weights_and_exported_in_bfloat16(
    data: Path, tmp_path: Path
) -> None:
    base = tiny_model(tmp_path / "fp32")
    AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "bf16")
    for lora in (True, False):
        out = tmp_path / f"out-{lora}"
        settings = TrainerSettings(**{**BASE_SETTINGS, "lora": lora, "dtype": "auto"})  # CPU: float32 compute
        train(settings, str(data), str(tmp_path / "bf16"), str(out), progress=False)
        exported = load_file(out / "model" / "model.safetensors")
        assert {t.dtype for t in exported.values()} == {torch.bfloat16}, "exports keep the base's dtype"
        full = train(
            TrainerSettings(**{**BASE_SETTINGS, "lora": lora, "export_dtype": "float32"}),
            str(data),
            str(tmp_path / "bf16"),
            str(tmp_path / f"fp32-out-{lora}"),
            progress=False,
        )
        assert {t.dtype for t in load_file(Path(full.model_uri) / "model.safetensors").values()} == {
            torch.float32
        }


def test_gradient_checkpointing_changes_memory_not_the_result(base: Path, data: Path, tmp_path: Path) -> None:
    runs = {}
    for checkpointing in (False, True):
        settings = TrainerSettings(
            **{**BASE_SETTINGS, "lora_dropout": 0.0, "gradient_checkpointing": checkpointing}
        )
        train(settings, str(data), str(base), str(tmp_path / str(checkpointing)), progress=False)
        runs[checkpointing] = load_file(tmp_path / str(checkpointing) / "model" / "model.safetensors")
    for name, tensor in runs[False].items():
        torch.testing.assert_close(runs[True][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
