"""CUT beside TRL's ``DPOTrainer`` on the same judged data, model and budget (CPU here; the same code on GPU).

Data: counting prompts, each with two judged responses — one right (judged positive) and one with a number
off by one (judged negative, the judgment naming it). CUT trains on every judged response (Align-P for the
positives, Align-N + Misalign for the negatives, ``align_p_ratio=None`` keeps all); DPO trains on the pairs
built from the same responses (chosen = the positive, rejected = the negative of the same prompt). Same model
(the demo's base-model shape, random init, character tokenizer), same LoRA (r=16 on the MLP), same optimizer
steps of 8 responses each (CUT: micro-batch 8; DPO: 4 pairs), float32, one torch thread.

Measured (best of two interleaved passes): the CPU time of each optimizer step, from step-end to step-end (the
first step is warm-up and left out), through each trainer's own step callback (``on_step`` of
``cutalign.cut.trainer.train``, a ``TrainerCallback`` for TRL), and the non-padding tokens each forward
processes: CUT's Align rows and Misalign rows; DPO's chosen and rejected sequences of the policy plus the same
sequences again through the reference (the LoRA-disabled base, no gradient). Printed: responses/s and tokens/s
of each, and the ratios CUT/DPO.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import datasets
import torch
import trl
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
from trl import DPOConfig, DPOTrainer

from cutalign.config import TrainerSettings
from cutalign.cut.trainer import train
from cutalign.modelinit import ModelShape, init_model
from cutalign.templates import get_template

PROMPTS = 96  # 192 judged responses
STEPS = 12
REPEATS = 2
RESPONSES_PER_STEP = 8
TEMPLATE = "short"
CORPUS = "".join(chr(c) for c in range(32, 127)) + "\n"


def _pairs() -> list[dict[str, str]]:
    """Per prompt: the right count and one with a number off by one, and the judgment of the wrong one."""
    pairs = []
    for i in range(PROMPTS):
        start, n = i % 40, 5 + i % 11
        right = [start + k for k in range(n)]
        wrong = list(right)
        at = (i * 7) % n
        wrong[at] += 1
        before = right[at - 1] if at else start - 1
        pairs.append(
            {
                "instruction": f"Count from {start} to {start + n - 1}.",
                "chosen": " ".join(map(str, right)),
                "rejected": " ".join(map(str, wrong)),
                "judgment": f"After {before} it says {wrong[at]}, not {right[at]}.",
            }
        )
    return pairs


class _StepClock(TrainerCallback):
    """CPU time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.ends.append(time.process_time())


def _run_cut(model: Path, pairs: list[dict[str, str]], work: Path) -> tuple[float, float]:
    """(responses/s, tokens/s) of CUT over steps 2..STEPS."""
    records = []
    for i, p in enumerate(pairs):
        records.append(
            {"id": f"p{i}", "instruction": p["instruction"], "output": p["chosen"], "judgment": ""}
        )
        records.append(
            {
                "id": f"n{i}",
                "instruction": p["instruction"],
                "output": p["rejected"],
                "judgment": p["judgment"],
            }
        )
    work.mkdir(parents=True)
    data = work / "judged.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    ends: list[float] = []
    tokens: list[float] = []

    def on_step(metrics: dict[str, float]) -> None:
        ends.append(time.process_time())
        tokens.append(metrics["tokens/processed"])

    settings = TrainerSettings(
        template=TEMPLATE,
        micro_batch_size=RESPONSES_PER_STEP,
        max_steps=STEPS,
        learning_rate=1e-4,
        lora_dropout=0.0,
        checkpoint_every=10**6,
        resume=False,
    )
    train(settings, str(data), str(model), str(work / "cut"), progress=False, on_step=on_step)
    seconds = ends[-1] - ends[0]
    return RESPONSES_PER_STEP * (STEPS - 1) / seconds, sum(tokens[1:]) / seconds


def _run_dpo(model_dir: Path, pairs: list[dict[str, str]], work: Path) -> tuple[float, float]:
    """(responses/s, tokens/s) of TRL's DPOTrainer over steps 2..STEPS; tokens include the reference's."""
    template = get_template(TEMPLATE)
    dataset = Dataset.from_list(
        [
            {
                "prompt": template.format_plain(p["instruction"]),
                "chosen": p["chosen"],
                "rejected": p["rejected"],
            }
            for p in pairs
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(work / "dpo"),
        per_device_train_batch_size=RESPONSES_PER_STEP // 2,
        max_steps=STEPS,
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    lora = LoraConfig(
        r=16,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
        task_type="CAUSAL_LM",
    )
    clock = _StepClock()
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[clock],
    )
    steps_seen = trainer.get_train_dataloader()
    per_step_tokens = []
    for batch in steps_seen:
        per_step_tokens.append(2 * int(batch["attention_mask"].sum()))  # policy + reference forwards
        if len(per_step_tokens) == STEPS:
            break
    trainer.remove_callback(PrinterCallback)  # the end-of-training metrics dict
    trainer.train()
    seconds = clock.ends[-1] - clock.ends[0]
    return RESPONSES_PER_STEP * (STEPS - 1) / seconds, sum(per_step_tokens[1:]) / seconds


def run() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("cutalign").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    datasets.disable_progress_bars()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        pairs = _pairs()
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            init_model(CORPUS, work / "base", ModelShape(), seed=0)
            cut, dpo = [], []
            for repeat in range(REPEATS):  # interleaved; the best pass of each (the machine is shared)
                cut.append(_run_cut(work / "base", pairs, work / f"cut-{repeat}"))
                dpo.append(_run_dpo(work / "base", pairs, work / f"dpo-{repeat}"))
            (cut_rps, cut_tps), (dpo_rps, dpo_tps) = max(cut), max(dpo)
    finally:
        torch.set_num_threads(threads)
    print(
        f"{len(pairs)} prompts x (1 positive + 1 negative) judged responses, demo-size Llama {ModelShape()}, "
        f"TRL {trl.__version__}, LoRA r=16 on the MLP, {STEPS} steps of {RESPONSES_PER_STEP} responses, "
        f"1 thread, CPU time; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"  CUT (cutalign trainer)            {cut_rps:8.1f} responses/s  {cut_tps:9.0f} tokens/s")
    print(
        f"  DPO (TRL DPOTrainer, LoRA ref)    {dpo_rps:8.1f} responses/s  {dpo_tps:9.0f} tokens/s (incl. ref)"
    )
    ratio_rps, ratio_tps = cut_rps / dpo_rps, cut_tps / dpo_tps
    print(f"  CUT / DPO                         {ratio_rps:8.2f}x responses/s {ratio_tps:8.2f}x tokens/s")


if __name__ == "__main__":
    run()
