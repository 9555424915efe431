"""Six architectures end to end: Llama, Qwen2, Mistral, Gemma2, Phi3 and GPT-2, tiny random-init models with
locally trained byte-level BPE tokenizers (Qwen2 with ChatML, Llama with a Llama-3 style chat template).

For each: one online iteration of the in-process loop (generate greedily, judge, train CUT with LoRA,
evaluate) with ``template=auto``; LoRA adapts exactly the architecture's MLP projections (Phi3's fused
``gate_up_proj``, GPT-2's Conv1D ``c_fc``/``c_proj``), seen in which weights the merged export changed; full
fine-tuning on the same judged data with the cutoff capped at the model's 256 positions and an over-long
example skipped and counted; every export reloads with the Auto classes in the base's dtype and generates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from arch_support import SHAPE, TOKENIZER_OF, tiny_arch_model
from cutalign.config import TrainerSettings
from cutalign.cut.trainer import train
from cutalign.experiment.loop import LoopSettings, run_arm
from cutalign.judges.programmatic import CountingJudge
from cutalign.policy.generation import SamplingParams, generate
from cutalign.templates import PromptFormat

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


def _changed(base: Path, export: Path) -> set[str]:
    before, after = load_file(base / "model.safetensors"), load_file(export / "model.safetensors")
    assert before.keys() == after.keys()
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.mark.parametrize("architecture", sorted(MLP_WEIGHTS))
def test_architecture_trains_lora_and_full_and_runs_an_online_iteration(
    architecture: str, tmp_path: Path
) -> None:
    base = tiny_arch_model(tmp_path / "base", architecture)
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert PromptFormat.of("auto", tokenizer).is_chat == (TOKENIZER_OF[architecture] != "bpe")

    loop = LoopSettings(
        iterations=1,
        steps=2,
        template="auto",
        max_new_tokens=8,
        generation_batch_size=8,
        threads=1,
        trainer={"micro_batch_size": 4, "learning_rate": 0.01, "lora_dropout": 0.0},
    )
    iteration, held_out = [_prompts(range(8))], _prompts(range(20, 24))
    records = run_arm(
        str(base), {"objective": "cut"}, iteration, held_out, CountingJudge(), loop, tmp_path, seed=0
    )
    assert [r.iteration for r in records] == [0, 1] and records[1].steps == 2
    assert records[1].positives + records[1].negatives == 8 and records[1].trained_examples > 0
    changed = _changed(base, tmp_path / "run-1" / "model")
    assert changed and all(any(m in name for m in MLP_WEIGHTS[architecture]) for name in changed), changed
    assert {m for m in MLP_WEIGHTS[architecture] for name in changed if m in name} == set(
        MLP_WEIGHTS[architecture]
    )

    judged = [json.loads(line) for line in (tmp_path / "iteration-1.jsonl").read_text().splitlines()]
    judged.append(
        {**judged[0], "id": "long", "output": "7 " * 400, "error_spans": []}
    )  # ~400 tokens: over 256 positions
    data = tmp_path / "full.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in judged))
    settings = TrainerSettings(
        lora=False, max_steps=2, micro_batch_size=4, learning_rate=0.01, checkpoint_every=10, resume=False
    )  # cutoff 2048 by default
    result = train(settings, str(data), str(base), str(tmp_path / "full"), progress=False)
    assert result.skipped_too_long == 1 and result.examples == len(judged) - 1
    state = json.loads(next((tmp_path / "full" / "checkpoints").glob("*/trainer_state.json")).read_text())
    assert state["config"]["cutoff"] == SHAPE.max_positions, "capped at the model's context"
    assert _changed(base, tmp_path / "full" / "model") >= _changed(base, tmp_path / "run-1" / "model")

    for export in (tmp_path / "run-1" / "model", tmp_path / "full" / "model"):
        model = AutoModelForCausalLM.from_pretrained(export)
        assert model.config.model_type == architecture and model.dtype == torch.float32  # the base's dtype
        prompt = PromptFormat.of("auto", tokenizer).plain("Count from 3 to 7.")
        out = generate(
            model, AutoTokenizer.from_pretrained(export), [prompt], SamplingParams(max_new_tokens=4)
        )
        assert out[0].generated_tokens >= 1 and out[0].prompt_ids
