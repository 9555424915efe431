"""CUT training speed on CPU; each figure against its baseline, same process, same examples.

(a) Throughput in processed (non-padding) tokens/s of a CUT step vs an SFT step (MLE of the same responses
    under the plain prompt), both micro-batch 8, forward + backward + AdamW. CUT runs more rows per example
    (Align-N + Misalign) and detection on top; the question is whether each token costs the same. Goal >= 0.9.
(b) Examples/s of batched CUT (micro-batch 8, Misalign rows for negatives only) vs the reference code's scheme
    (micro-batch 1: the judged row and a Misalign row — a full padding row for a positive — concatenated into
    one forward; one optimizer step per 8 examples). Goal >= 3x on CPU.

Both are measured on two model sizes with the demo's short template and the trainer's own batching (random
batches grouped by length): the demo's base model, where compute dominates (so (b) is bounded by the padded
tokens the reference computes and batching avoids — printed too), and the tests' tiny model, where
per-operation overhead dominates (so batching itself pays).

Timing: the CPU time of this process with one torch thread, fastest of three passes, schemes interleaved.
Wall-clock time on a machine shared with other jobs varies several-fold between identical passes; the
process's own CPU time does not, and with one thread it is what an idle machine's wall clock would show.
"""

from __future__ import annotations

import dataclasses
import os
import string
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from cutalign.config import TrainerSettings
from cutalign.cut import sampling
from cutalign.cut.collator import CutCollator, ExampleTokenizer, TokenizedExample
from cutalign.cut.examples import CutExample
from cutalign.cut.loss import cut_loss
from cutalign.cut.modeling import load_model, trainable_parameters
from cutalign.cut.objectives import CutObjective, SftObjective, backward_micro_batch, should_fuse
from cutalign.modelinit import ModelShape, init_model

SHAPES = {
    "demo base model (d=128, 4 layers, 1.1M params)": ModelShape(),
    "test-size model (d=32, 2 layers)": ModelShape(layers=2, hidden_size=32, heads=2, intermediate_size=64),
}
EXAMPLES = 64
MICRO = 8
REPEATS = 3
CPU = torch.device("cpu")
Step = Callable[[list[TokenizedExample]], tuple[int, int]]  # -> (real tokens, padded tokens computed)


def _examples() -> list[CutExample]:
    """Counting tasks with responses of varied length; two in three off by one somewhere (online-like mix)."""
    examples = []
    for i in range(EXAMPLES):
        start, n = i % 50, 4 + i % 13
        numbers = [start + k for k in range(n)]
        positive = i % 3 == 0
        if not positive:
            numbers[(i * 7) % n] += 1
        judgment = "" if positive else f"The sequence is wrong at position {(i * 7) % n + 1}."
        examples.append(
            CutExample(
                f"b{i}",
                f"Count from {start}, {n} numbers.",
                "",
                " ".join(map(str, numbers)),
                judgment,
                positive,
            )
        )
    return examples


def run() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        print(
            f"{EXAMPLES} examples ({sum(e.positive for e in _examples())} positive), short template, "
            f"1 torch thread, CPU time; load average {os.getloadavg()[0]:.1f}"
        )
        for label, shape in SHAPES.items():
            _measure(label, shape)
    finally:
        torch.set_num_threads(threads)


def _measure(label: str, shape: ModelShape) -> None:
    torch.manual_seed(0)
    settings = TrainerSettings(template="short", lora_dropout=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        init_model(string.printable, Path(tmp), shape, seed=0)
        model = load_model(Path(tmp), settings, CPU)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    model.train()
    optimizer = torch.optim.AdamW(list(trainable_parameters(model).values()), lr=1e-4)
    tokenize = ExampleTokenizer(tokenizer, settings.template, cutoff=1024)
    data = [tokenize(e) for e in _examples()]
    pad = tokenizer.pad_token_id

    def optimizer_step() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def batched(objective: CutObjective | SftObjective) -> Step:
        collate = CutCollator(objective.plan, pad)

        def step(chunk: list[TokenizedExample]) -> tuple[int, int]:
            batch = collate(chunk)
            backward_micro_batch(model, objective, batch, fuse=should_fuse(batch, CPU, "auto"))
            optimizer_step()
            padded = sum(rows.input_ids.numel() for rows in (batch.mle, batch.misalign) if rows is not None)
            return batch.tokens, padded

        return step

    def reference(chunk: list[TokenizedExample]) -> tuple[int, int]:
        counts = [reference_backward(model, ex, pad, scale=1 / len(chunk)) for ex in chunk]
        optimizer_step()
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    # the trainer's batches: random, grouped by length (cutalign.cut.sampling)
    order = sampling.epoch_batches(
        [sampling.example_cost(e) for e in data], 0, 0, MICRO, group_by_length=True
    )
    chunks = [[data[i] for i in batch] for batch in order]
    best = _best_pass(
        {"sft": batched(SftObjective()), "cut": batched(CutObjective()), "reference": reference},
        {
            "sft": [[dataclasses.replace(e, positive=True) for e in c] for c in chunks],
            "cut": chunks,
            "reference": chunks,
        },
    )
    (sft_s, sft_tokens, _), (cut_s, cut_tokens, cut_padded), (ref_s, _, ref_padded) = (
        best["sft"],
        best["cut"],
        best["reference"],
    )
    sft_tps, cut_tps = sft_tokens / sft_s, cut_tokens / cut_s
    cut_eps, ref_eps = len(data) / cut_s, len(data) / ref_s
    print(f"\n{label}, LoRA r={settings.lora_r}")
    print("  (a) processed tokens/s, micro-batch 8, forward+backward+AdamW")
    print(f"      SFT (MLE, plain prompt)                        {sft_tps:9.0f} tokens/s")
    print(f"      CUT (Align-P/N + Misalign rows, detection)     {cut_tps:9.0f} tokens/s")
    print(f"      CUT / SFT                                      {cut_tps / sft_tps:9.2f}   (goal >= 0.9)")
    print("  (b) CUT examples/s")
    print(
        f"      reference: micro-batch 1, padded Misalign row  {ref_eps:9.1f} examples/s"
        f"   ({ref_padded / len(data):.0f} padded tokens computed per example)"
    )
    print(
        f"      batched: micro-batch 8, no empty rows          {cut_eps:9.1f} examples/s"
        f"   ({cut_padded / len(data):.0f} padded tokens computed per example)"
    )
    print(
        f"      speed-up                                       {cut_eps / ref_eps:9.1f}x  (goal >= 3x; "
        f"compute-bound limit ~{ref_padded / cut_padded:.1f}x)"
    )


def _best_pass(
    steps: dict[str, Step], chunks: dict[str, list[list[TokenizedExample]]]
) -> dict[str, tuple[float, int, int]]:
    """Fastest of ``REPEATS`` passes per scheme over its chunks: (seconds, real tokens, padded tokens)."""
    for name, step in steps.items():
        step(chunks[name][0])  # warm-up
    best: dict[str, tuple[float, int, int]] = {}
    for _ in range(REPEATS):
        for name, step in steps.items():
            tokens = padded = 0
            started = time.process_time()
            for chunk in chunks[name]:
                real, computed = step(chunk)
                tokens, padded = tokens + real, padded + computed
            seconds = time.process_time() - started
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, tokens, padded)
    return best


def reference_backward(
    model: torch.nn.Module,
    ex: TokenizedExample,
    pad: int,
    scale: float,
    device: torch.device = CPU,
    autocast: AbstractContextManager[Any] | None = None,
) -> tuple[int, int]:
    """The reference code's micro-batch of one: [judged row; Misalign row or a padding row], one forward.

    Returns (real tokens, padded tokens computed). Also the GPU benchmark's reference layout.
    """
    judged = list(ex.plain_ids if ex.positive else ex.judged_ids)
    misalign = [] if ex.positive else list(ex.plain_ids)
    length = max(len(judged), len(misalign))
    ids = torch.full((2, length), pad)
    labels = torch.full((2, length), -100)
    attention = torch.zeros((2, length), dtype=torch.long)
    for row, seq in enumerate([judged, misalign]):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
        labels[row, len(seq) - ex.response_len : len(seq)] = torch.tensor(seq[len(seq) - ex.response_len :])
    attention[1, 0] = 1  # a padding row still attends to one position
    ids, labels, attention = ids.to(device), labels.to(device), attention.to(device)
    with autocast or nullcontext():
        logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
    n = 0 if ex.positive else 1
    negative = torch.tensor([not ex.positive], device=device)
    out = cut_loss(logits[:1], labels[:1], logits[1 : 1 + n], labels[1 : 1 + n], negative)
    (out.loss * scale).backward()
    return len(judged) + len(misalign), ids.numel()


if __name__ == "__main__":
    run()
