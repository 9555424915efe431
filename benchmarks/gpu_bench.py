"""The trainer on GPUs: a ~1.1B-parameter random-init Llama in bfloat16, LoRA and full fine-tuning, DDP, FSDP.

Not part of ``make bench`` (it needs GPUs). One prepared run, bounded by ``--time-limit``::

    python -m benchmarks.gpu_bench --out gpu_bench.json   # every GPU of the machine (torchrun inside)
    python -m benchmarks.gpu_bench --smoke                 # a tiny model, 2 CPU processes (gloo)

For each of LoRA/full x DDP/FSDP it builds the trainer's own pieces (``load_model`` with bf16 compute and
float32 master weights, ``parallelize``, the collator, ``backward_micro_batch``, AdamW, gradient clipping) and
times optimizer steps on judged counting examples (two in three negative, sequences of ~300 tokens):
processed tokens/s per GPU, MFU, peak memory per GPU; then the same steps as SFT on the same responses
(CUT/SFT cost per processed token) and, for LoRA under DDP, the reference code's layout (micro-batch 1, the
judged row and a Misalign or padding row in one forward) against the batched one (examples/s). Each figure is
the mean over ``--steps`` timed steps after ``--warmup`` steps; rank 0 prints them and writes ``--out``.

MFU counts model FLOPs per processed token as 2N forward (N: parameters outside the input embedding) plus
attention's 4·layers·d·s, the backward as twice the forward for full fine-tuning and once for LoRA (frozen
weights get no gradient, their inputs do), against ``--peak-tflops`` (default: 989 for H100/H200, 312 for
A100, bf16 dense).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from benchmarks.bench_trainer import reference_backward
from cutalign.config import TrainerSettings
from cutalign.cut import sampling
from cutalign.cut.collator import CutCollator, ExampleTokenizer, TokenizedExample
from cutalign.cut.distributed import Dist, init_distributed
from cutalign.cut.examples import CutExample
from cutalign.cut.modeling import compute_dtype, load_model, trainable_parameters
from cutalign.cut.objectives import CutObjective, Objective, SftObjective, backward_micro_batch, should_fuse
from cutalign.cut.parallel import gradient_sync, is_sharded, parallelize
from cutalign.modelinit import build_char_tokenizer

FULL = LlamaConfig(  # TinyLlama-1.1B's shape
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
)
SMOKE = LlamaConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=1024,
)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass
class Figures:
    run: str
    tokens_per_s_per_gpu: float
    examples_per_s: float
    mfu: float | None
    peak_memory_gib: float | None
    step_s: float


@dataclass
class Trained:
    """One configuration's model, the module forwards run through, its trained parameters and optimizer."""

    model: torch.nn.Module
    runner: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    autocast: AbstractContextManager[Any] | None
    lora: bool

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def examples(n: int) -> list[CutExample]:
    """Counting responses of 40-90 numbers; two in three have one number off by one, named by the judgment."""
    out = []
    for i in range(n):
        start, count = 10 + i % 50, 40 + (i * 7) % 50
        numbers = [start + k for k in range(count)]
        positive = i % 3 == 0
        judgment = ""
        if not positive:
            at = (i * 11) % count
            numbers[at] += 1
            judgment = (
                f"The number at position {at + 1} is {numbers[at]}, but it should be {numbers[at] - 1}."
            )
        instruction = f"Count from {start} to {start + count - 1}, separated by spaces."
        out.append(CutExample(f"e{i}", instruction, "", " ".join(map(str, numbers)), judgment, positive))
    return out


def model_flops_per_token(config: LlamaConfig, seq: float, lora: bool) -> float:
    """Forward 2N + attention 4·layers·d·s; backward 2x the forward (full) or 1x (LoRA: no weight grads)."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = d * config.num_key_value_heads // config.num_attention_heads
    n = layers * (2 * d * d + 2 * d * kv + 3 * d * f) + d * config.vocab_size  # the LM head is a matmul too
    forward = 2 * n + 4 * layers * d * seq
    return forward * (2 if lora else 3)


class Bench:
    def __init__(
        self, args: argparse.Namespace, dist: Dist, model_dir: Path, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        self.args, self.dist, self.model_dir = args, dist, model_dir
        self.config = SMOKE if args.smoke else FULL
        tokenize = ExampleTokenizer(tokenizer, "plain", cutoff=self.config.max_position_embeddings)
        count = args.micro_batch * (args.warmup + args.steps) * dist.world
        self.data = [tokenize(e) for e in examples(count)]
        self.pad = int(tokenizer.pad_token_id)
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        self.peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)

    def build(self, lora: bool, strategy: str) -> Trained:
        dtype = "float32" if self.args.smoke else "bfloat16"
        settings = TrainerSettings(lora=lora, strategy=strategy, dtype=dtype, lora_dropout=0.0)
        compute = compute_dtype(settings, self.dist.device)
        torch.manual_seed(0)
        model = load_model(self.model_dir, settings, self.dist.device)
        model.train()
        runner = parallelize(model, strategy, self.dist, compute)
        params = list(trainable_parameters(model).values())
        low = compute != torch.float32 and not is_sharded(model)  # FSDP casts through its own policy
        autocast = torch.autocast(self.dist.device.type, dtype=compute) if low else None
        return Trained(model, runner, params, torch.optim.AdamW(params, lr=1e-5), autocast, lora)

    def measure(self, lora: bool, strategy: str) -> list[Figures]:
        trained = self.build(lora, strategy)
        name = f"{'lora' if lora else 'full'}-{strategy}"
        figures = [
            self.batched(f"{name} cut", trained, CutObjective(), self.data),
            self.batched(
                f"{name} sft", trained, SftObjective(), [replace(e, positive=True) for e in self.data]
            ),
        ]
        if lora and strategy == "ddp":
            figures.append(self.reference(f"{name} reference layout", trained))
        del trained
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return figures

    def batched(self, run: str, t: Trained, objective: Objective, data: list[TokenizedExample]) -> Figures:
        args, dist = self.args, self.dist
        collate = CutCollator(objective.plan, self.pad)
        fuse_mode = "always" if is_sharded(t.model) else "auto"  # FSDP: one forward per micro-batch
        costs = [sampling.example_cost(e) for e in data]
        order = sampling.epoch_batches(costs, 0, 0, args.micro_batch * dist.world, True)
        times, tokens, lengths = [], 0, []
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        for step, batch in enumerate(order[: args.warmup + args.steps]):
            indices = sampling.rank_micro_batches(batch, args.micro_batch, 1, dist.rank)[0]
            micro = collate([data[i] for i in indices]).to(dist.device)
            _sync()
            started = time.perf_counter()
            fuse = should_fuse(micro, dist.device, fuse_mode)
            backward_micro_batch(t.runner, objective, micro, fuse=fuse, autocast=t.autocast)
            t.step()
            _sync()
            if step >= args.warmup:
                times.append(time.perf_counter() - started)
                tokens += micro.tokens
                lengths += [
                    float(r.attention_mask.sum(1).float().mean()) for r in (micro.mle, micro.misalign) if r
                ]
        seconds = sum(times)
        tps = tokens / seconds
        mfu = None
        if self.peak:
            mfu = (
                model_flops_per_token(self.config, sum(lengths) / len(lengths), t.lora)
                * tps
                / (self.peak * 1e12)
            )
        memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        examples_per_s = args.micro_batch * dist.world * len(times) / seconds
        return Figures(run, tps, examples_per_s, mfu, memory, seconds / len(times))

    def reference(self, run: str, t: Trained) -> Figures:
        """The reference code's layout: micro-batch 1, [judged row; Misalign or padding row], one forward."""
        args, dist = self.args, self.dist
        times = []
        mine = self.data[dist.rank :: dist.world]
        for step in range(args.warmup + args.steps):
            chunk = mine[step * args.micro_batch : (step + 1) * args.micro_batch]
            _sync()
            started = time.perf_counter()
            for i, ex in enumerate(chunk):
                with gradient_sync(t.runner, i == len(chunk) - 1):
                    reference_backward(t.runner, ex, self.pad, 1 / len(chunk), dist.device, t.autocast)
            t.step()
            _sync()
            if step >= args.warmup:
                times.append(time.perf_counter() - started)
        seconds = sum(times)
        examples_per_s = args.micro_batch * dist.world * len(times) / seconds
        return Figures(run, float("nan"), examples_per_s, None, None, seconds / len(times))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _prepare_model(directory: Path, smoke: bool, dist: Dist) -> PreTrainedTokenizerBase:
    """A random-init model saved like a hub checkpoint (bf16 for the real run) by rank 0; its tokenizer."""
    tokenizer = build_char_tokenizer("".join(chr(c) for c in range(32, 127)) + "\n", max_length=2048)
    if dist.is_main:
        config = copy.deepcopy(SMOKE if smoke else FULL)
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        with torch.device(dist.device):  # initialising 1.1B parameters on a CPU takes minutes
            torch.manual_seed(0)
            model = LlamaForCausalLM(config).to(torch.float32 if smoke else torch.bfloat16)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        del model
    dist.barrier()
    return tokenizer


def _report(results: list[Figures], dist: Dist, args: argparse.Namespace) -> None:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (smoke)"
    print(f"{dist.world} x {device}, micro-batch {args.micro_batch} per process, {args.steps} timed steps")
    print(f"{'run':28} {'tokens/s/GPU':>13} {'examples/s':>11} {'MFU':>6} {'peak GiB':>9} {'step s':>8}")
    for f in results:
        mfu = f"{f.mfu:.1%}" if f.mfu is not None else "n/a"
        memory = f"{f.peak_memory_gib:.1f}" if f.peak_memory_gib is not None else "n/a"
        tps = f"{f.tokens_per_s_per_gpu:13.0f}"
        print(f"{f.run:28} {tps} {f.examples_per_s:11.1f} {mfu:>6} {memory:>9} {f.step_s:8.3f}")
    by_run = {f.run: f for f in results}
    for base in sorted({f.run.split(" ")[0] for f in results}):
        cut, sft, ref = (by_run.get(f"{base} {kind}") for kind in ("cut", "sft", "reference layout"))
        if cut and sft:
            cost = sft.tokens_per_s_per_gpu / cut.tokens_per_s_per_gpu
            print(f"{base}: CUT/SFT cost per processed token {cost:.2f}")
        if cut and ref:
            speedup = cut.examples_per_s / ref.examples_per_s
            print(f"{base}: batched / reference layout {speedup:.2f}x examples/s")
    if args.out:
        args.out.write_text(json.dumps([asdict(f) for f in results], indent=2))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU (gloo), to check the script")
    parser.add_argument("--nproc", type=int, help="processes (default: the GPUs, or 2 with --smoke)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--micro-batch", type=int, default=8, help="examples per process per step")
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak of one GPU (for MFU)")
    parser.add_argument("--time-limit", type=float, default=480.0, help="start no measurement after this (s)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON (rank 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if "RANK" not in os.environ:  # launch ourselves through torchrun, one process per GPU
        gpus = torch.cuda.device_count() if torch.cuda.is_available() and not args.smoke else 0
        nproc = args.nproc or gpus or 2
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
        ]
        root = str(Path(__file__).resolve().parents[1])  # so every rank imports the benchmarks package
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        command = [*torchrun, "--module", "benchmarks.gpu_bench", *argv]
        return subprocess.run(command, env=env, timeout=args.time_limit + 180, check=False).returncode
    started = time.monotonic()
    dist = init_distributed("cpu" if args.smoke else None)
    if args.smoke:
        torch.set_num_threads(1)
    # one node: every rank reads the model rank 0 writes under this directory
    shared = (
        Path(tempfile.gettempdir()) / f"cutalign-gpu-bench-{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}"
    )
    try:
        bench = Bench(args, dist, shared, _prepare_model(shared, args.smoke, dist))
        results: list[Figures] = []
        for lora in (True, False):
            for strategy in ("ddp", "fsdp"):
                if time.monotonic() - started < args.time_limit:
                    results += bench.measure(lora, strategy)
        if dist.is_main:
            _report(results, dist, args)
    finally:
        dist.barrier()
        if dist.is_main:
            shutil.rmtree(shared, ignore_errors=True)
        dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
