"""Training samples and micro-batches packed by a token budget.

Samples are sorted by length and cut into micro-batches whose padded size
(samples x longest sequence) stays within ``micro_batch_tokens``; sorting keeps padding small.
A micro-batch is right-padded; ``positions`` lists the (flattened) positions whose logits predict a
completion token (position p predicts token p + 1), found here on the CPU so that the trainer's
device never has to report how many there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainSample:
    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    engine_logprobs: list[float]     # from the rollout engine, for the mismatch metric

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass
class MicroBatch:
    input_ids: torch.Tensor          # [b, L] long, right-padded: causal attention needs no mask
    positions: torch.Tensor          # [T] long: indices into input_ids.flatten() of the positions that
                                     #   predict a completion token, in row order
    targets: torch.Tensor            # [T] long: the completion token each of those positions predicts
    seq_lens: torch.Tensor           # [b] completion tokens per sample
    advantages: torch.Tensor         # [T] per completion token, flattened in row order
    engine_logprobs: torch.Tensor    # [T]
    index: list[int]                 # positions of these samples in the mini-batch list

    @property
    def n_tokens(self) -> int:
        return int(self.seq_lens.sum())


def plan_micro_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices grouped so that len(group) * max(length in group) <= budget (a longer sample goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]  # sorted descending: the first is the longest
        if cur and (len(cur) + 1) * width > budget:
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    return groups


def collate(samples: list[TrainSample], index: list[int], pad_id: int) -> MicroBatch:
    rows = [samples[i] for i in index]
    width = max(s.length for s in rows)
    b = len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((b, width), dtype=torch.bool)
    for r, s in enumerate(rows):
        seq = s.prompt_ids + s.completion_ids
        input_ids[r, :len(seq)] = torch.tensor(seq)
        loss_mask[r, len(s.prompt_ids) - 1:len(seq) - 1] = True
    positions = loss_mask.flatten().nonzero().squeeze(1)
    targets = input_ids.flatten()[positions + 1]  # in p's row: a row's last token predicts nothing
    seq_lens = torch.tensor([len(s.completion_ids) for s in rows])
    adv = torch.repeat_interleave(torch.tensor([s.advantage for s in rows], dtype=torch.float32), seq_lens)
    eng = torch.tensor([lp for s in rows for lp in s.engine_logprobs], dtype=torch.float32)
    return MicroBatch(input_ids, positions, targets, seq_lens, adv, eng, list(index))


def shard_for_rank(n: int, rank: int, world: int) -> list[int]:
    """Sample indices of a mini-batch that one data-parallel rank trains on."""
    return list(range(rank, n, world))
