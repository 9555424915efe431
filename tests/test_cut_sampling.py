"""The data order: every example once per epoch, the same global batches whatever the world size and
accumulation, and length grouping that cuts padding without sorting the epoch."""

from __future__ import annotations

import pytest

from cutalign.cut import sampling

LENGTHS = [10 + (i * 37) % 90 for i in range(50)]


@pytest.mark.parametrize("group", [False, True])
def test_every_example_each_epoch_last_batch_filled_deterministic(group: bool) -> None:
    batches = sampling.epoch_batches(LENGTHS, seed=3, epoch=0, size=8, group_by_length=group)
    assert len(batches) == 7 and all(len(b) == 8 for b in batches)
    flat = [i for b in batches for i in b]
    assert (
        set(flat) == set(range(50)) and len(flat) - len(set(flat)) == 6
    )  # 56 slots: 6 repeats fill the last
    assert batches == sampling.epoch_batches(LENGTHS, seed=3, epoch=0, size=8, group_by_length=group)
    assert batches != sampling.epoch_batches(LENGTHS, seed=3, epoch=1, size=8, group_by_length=group)


def test_length_grouping_pads_less_and_stays_shuffled() -> None:
    def padded(batches: list[list[int]]) -> int:
        return sum(
            max(LENGTHS[i] for i in micro) * 2 for b in batches for micro in (b[:2], b[2:4], b[4:6], b[6:])
        )

    plain = sampling.epoch_batches(LENGTHS, seed=0, epoch=0, size=8, group_by_length=False)
    grouped = sampling.epoch_batches(LENGTHS, seed=0, epoch=0, size=8, group_by_length=True)
    assert padded(grouped) < 0.9 * padded(plain)
    longest_first = [max(LENGTHS[i] for i in b) for b in grouped]
    assert longest_first != sorted(longest_first, reverse=True)  # batch order is shuffled, not by length


def test_world_size_and_accumulation_are_interchangeable() -> None:
    batch = list(range(100, 108))
    one_rank = sampling.rank_micro_batches(batch, micro_batch_size=2, grad_accum=4, rank=0)
    two_ranks = [m for r in range(2) for m in sampling.rank_micro_batches(batch, 2, 2, r)]
    four_ranks = [m for r in range(4) for m in sampling.rank_micro_batches(batch, 2, 1, r)]
    assert one_rank == two_ranks == four_ranks == [[100, 101], [102, 103], [104, 105], [106, 107]]
