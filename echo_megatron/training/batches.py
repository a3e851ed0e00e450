"""Global batches -> this data-parallel rank's micro-batches, megatron-style and resumable.

Step ``i`` consumes samples ``[i * G, (i + 1) * G)`` of the dataset (G = global batch size). Data-parallel
rank ``r`` of ``D`` takes the contiguous slice ``[r * G/D, (r + 1) * G/D)`` of it, cut into micro-batches.
So the samples of a step do not depend on the layout, and the position is one integer (consumed samples).
"""

from __future__ import annotations

import torch


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


class GlobalBatchSampler:
    def __init__(
        self,
        dataset,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        consumed_samples: int = 0,
    ) -> None:
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(
                f"train.global_batch_size ({global_batch_size}) must be a multiple of "
                f"train.micro_batch_size * dp ({micro_batch_size} * {dp_size})"
            )
        self.dataset = dataset
        self.gbs, self.mbs = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.consumed_samples = consumed_samples

    @property
    def num_microbatches(self) -> int:
        return self.gbs // (self.mbs * self.dp_size)

    def next_microbatches(self) -> list[dict[str, torch.Tensor]]:
        per_rank = self.gbs // self.dp_size
        start = self.consumed_samples + self.dp_rank * per_rank
        idx = [(start + j) % len(self.dataset) for j in range(per_rank)]
        self.consumed_samples += self.gbs
        return [
            collate([self.dataset[i] for i in idx[k : k + self.mbs]]) for k in range(0, per_rank, self.mbs)
        ]
