"""Which examples each rank trains on at each step: a pure function of (seed, epoch, step, rank).

Because the order is recomputed rather than stored, a checkpoint's data position is just its step, and the
split is arranged so that world size and gradient accumulation are interchangeable: global batch ``s`` is a
fixed list of ``micro x accum x world`` examples, cut into ``accum x world`` micro-batches; rank ``r`` takes
micro-batches ``r*accum .. r*accum+accum-1``. The step's loss is the mean of the micro-batch losses whichever
process computed them, so 2 ranks x 1 micro-batch equals 1 rank x 2 accumulated micro-batches.

The last global batch of an epoch is filled up from the start of that epoch's order (as torch's
``DistributedSampler`` pads), so every rank always has full micro-batches and no example is dropped.

With ``group_by_length`` the shuffled order is cut into pools of ``POOL_BATCHES`` global batches, each pool
is sorted by example length, and the resulting batches are shuffled again (as Hugging Face's
``group_by_length``): batches still come in random order, but each holds examples of similar length, so a
micro-batch pads little. Since a negative costs a Misalign row too, this also tends to batch positives
together, which is closer to the reference's per-example loss (L2 alone for a positive).
Without it, padding to the longest of 8 random examples costs about as much compute as the reference's padded
Misalign rows that batching is meant to save.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import torch

from cutalign.cut.collator import TokenizedExample

POOL_BATCHES = 16


def global_batch_size(micro_batch_size: int, grad_accum: int, world: int) -> int:
    return micro_batch_size * grad_accum * world


def steps_per_epoch(examples: int, global_batch: int) -> int:
    return math.ceil(examples / global_batch)


def epoch_order(examples: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(examples, generator=generator).tolist()


def global_batch(order: list[int], index: int, size: int) -> list[int]:
    """Batch ``index`` of an epoch's ``order``, wrapped around to stay full."""
    return [order[(index * size + i) % len(order)] for i in range(size)]


def epoch_batches(
    lengths: list[int], seed: int, epoch: int, size: int, group_by_length: bool
) -> list[list[int]]:
    """Every global batch of one epoch, in training order (``lengths``: each example's cost in tokens)."""
    order = epoch_order(len(lengths), seed, epoch)
    count = steps_per_epoch(len(lengths), size)
    if not group_by_length:
        return [global_batch(order, i, size) for i in range(count)]
    pool = size * POOL_BATCHES
    grouped = [
        i
        for start in range(0, len(order), pool)
        for i in sorted(order[start : start + pool], key=lambda j: -lengths[j])
    ]
    batches = [global_batch(grouped, i, size) for i in range(count)]
    shuffle = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1))
    return [batches[i] for i in shuffle.tolist()]


def rank_micro_batches(
    batch: list[int], micro_batch_size: int, grad_accum: int, rank: int
) -> list[list[int]]:
    first = rank * grad_accum
    return [
        batch[(first + a) * micro_batch_size : (first + a + 1) * micro_batch_size] for a in range(grad_accum)
    ]


def data_fingerprint(dataset: Iterable[TokenizedExample]) -> str:
    """sha256 over the tokenized examples: a resumed run must see exactly the data the checkpoint saw."""
    digest = hashlib.sha256()
    for ex in dataset:
        digest.update(repr((ex.sample_id, ex.positive, ex.plain_ids, ex.judged_ids, ex.span_mask)).encode())
    return digest.hexdigest()


def example_cost(example: TokenizedExample) -> int:
    """Tokens a CUT step computes for the example: its MLE row, plus its Misalign row if negative."""
    return len(example.judged_ids) + (0 if example.positive else len(example.plain_ids))
