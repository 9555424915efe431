"""Six architectures end to end: Llama, Qwen2, Mistral, Gemma2, Phi3 and GPT-2, tiny random-init models with
locally trained byte-level BPE tokenizers (Qwen2 with ChatML, Llama with a Llama-3 style chat template).

For each: one online iteration of the in-process loop (generate greedily, judge, seal through the builder's
code, train CUT with LoRA, evaluate, promote — in a bucket of the session's store) with ``template=auto``;
LoRA adapts exactly the architecture's MLP projections (Phi3's fused
``gate_up_proj``, GPT-2's Conv1D ``c_fc``/``c_proj``), seen in which weights the merged export changed; full
fine-tuning on the same judged data with the cutoff capped at the model's 256 positions and an over-long
example skipped and counted; every export reloads with the Auto classes in the base's dtype and generates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from google.protobuf import json_format
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from arch_support import SHAPE, TOKENIZER_OF, tiny_arch_model
from cutalign.builder.seal import read_sealed_examples
from cutalign.config import TrainerSettings
from cutalign.cut.trainer import train
from cutalign.iteration.arms import run_loop
from cutalign.iteration.evaluate import evaluate_policy
from cutalign.iteration.inprocess import run_inprocess
from cutalign.iteration.record import start_run
from cutalign.iteration.task import Decoding
from cutalign.judges.programmatic import CountingJudge
from cutalign.policy.generation import SamplingParams, generate
from cutalign.reading.settings import WarmStartSettings
from cutalign.reading.training import plain, warm_start
from cutalign.store import ArtifactStore
from cutalign.store.layout import iteration_manifest_key, model_prefix
from cutalign.templates import PromptFormat
from cutalign.v1 import training_pb2

torch.set_num_threads(1)

# the weights LoRA on the MLP changes, per architecture (the rest must stay the base's)
MLP_WEIGHTS = {
    "llama": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    "qwen2": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    "mistral": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    "gemma2": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    "phi3": ("mlp.gate_up_proj", "mlp.down_proj"),
    "gpt2": ("mlp.c_fc", "mlp.c_proj"),
}


def _prompts(starts: range) -> list[dict[str, object]]:
    return [
        {"id": f"c{s}", "instruction": f"Count from {s} to {s + 4}.", "start": s, "end": s + 4}
        for s in starts
    ]


class Counting:
    """Eight counting prompts to train on, four held out, the counting judge, the tokenizer's template."""

    name, judge, judge_options, decoding = "counting", "counting", {}, Decoding("auto", 8, 8)

    def train_prompts(self) -> list[dict[str, object]]:
        return _prompts(range(8))

    def eval_prompts(self) -> list[dict[str, object]]:
        return _prompts(range(20, 24))


def answering(model: Path, out: Path) -> Path:
    """``model`` after a few steps on comma-separated counts: a random tiny model answers only whitespace,
    which the builder rejects as an empty response, so the online iteration would have nothing to train."""
    counts = {s: ",".join(map(str, range(s, s + 5))) for s in range(30, 70)}
    examples = [plain(f"w{s}", f"Count from {s} to {s + 4}.", count) for s, count in counts.items()]
    settings = WarmStartSettings(epochs=3, batch_size=8, learning_rate=1e-2, template="auto")
    warm_start(model, examples, settings, out)
    return out


def _record(example: training_pb2.TrainingExample) -> dict[str, object]:
    """A sealed example as a reference-format training record."""
    e = json_format.MessageToDict(example, preserving_proto_field_name=True)
    spans = [[s.get("start", 0), s["end"]] for s in e.get("error_spans", [])]
    output = {"output": e["response"], "judgment": e.get("judgment", ""), "error_spans": spans}
    return {"id": e["sample_id"], "instruction": e["instruction"], **output}


def _changed(base: Path, export: Path) -> set[str]:
    before, after = load_file(base / "model.safetensors"), load_file(export / "model.safetensors")
    assert before.keys() == after.keys()
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.mark.parametrize("architecture", sorted(MLP_WEIGHTS))
def test_architecture_trains_lora_and_full_and_runs_an_online_iteration(
    architecture: str, tmp_path: Path, store: ArtifactStore
) -> None:
    base = answering(tiny_arch_model(tmp_path / "random", architecture), tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert PromptFormat.of("auto", tokenizer).is_chat == (TOKENIZER_OF[architecture] != "bpe")

    task = Counting()
    trainer = TrainerSettings(micro_batch_size=4, learning_rate=0.01, lora_dropout=0.0)
    loop = run_loop(trainer, {"objective": "cut"}, steps=2, seed=0, template="auto")
    start = evaluate_policy(str(base), task.eval_prompts(), CountingJudge(), s3=None, max_new_tokens=8)
    start_run(store, str(base), start, model_id="base")
    (record,) = run_inprocess(store, task, [task.train_prompts()], loop)
    assert record.iteration == 1 and record.steps == 2 and record.promoted
    assert record.positives + record.negatives == 8
    lora_export = store.download_dir(model_prefix(1), tmp_path / "run-1")
    changed = _changed(base, lora_export)
    assert changed and all(any(m in name for m in MLP_WEIGHTS[architecture]) for name in changed), changed
    assert {m for m in MLP_WEIGHTS[architecture] for name in changed if m in name} == set(
        MLP_WEIGHTS[architecture]
    )

    manifest = store.get_manifest(iteration_manifest_key(1), training_pb2.IterationManifest)
    judged = [_record(e) for e in read_sealed_examples(store, manifest)]
    judged.append({**judged[0], "id": "long", "output": "7 " * 400, "error_spans": []})  # over 256 positions
    data = tmp_path / "full.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in judged))
    settings = TrainerSettings(
        lora=False, max_steps=2, micro_batch_size=4, learning_rate=0.01, checkpoint_every=10, resume=False
    )  # cutoff 2048 by default
    result = train(settings, str(data), str(base), str(tmp_path / "full"), progress=False)
    assert result.skipped_too_long == 1 and result.examples == len(judged) - 1
    state = json.loads(next((tmp_path / "full" / "checkpoints").glob("*/trainer_state.json")).read_text())
    assert state["config"]["cutoff"] == SHAPE.max_positions, "capped at the model's context"
    assert _changed(base, tmp_path / "full" / "model") >= changed

    for export in (lora_export, tmp_path / "full" / "model"):
        model = AutoModelForCausalLM.from_pretrained(export)
        assert model.config.model_type == architecture and model.dtype == torch.float32  # the base's dtype
        prompt = PromptFormat.of("auto", tokenizer).plain("Count from 3 to 7.")
        out = generate(
            model, AutoTokenizer.from_pretrained(export), [prompt], SamplingParams(max_new_tokens=4)
        )
        assert out[0].generated_tokens >= 1 and out[0].prompt_ids
