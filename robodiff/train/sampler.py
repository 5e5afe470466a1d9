"""A shuffling sampler that shards across ranks and can resume in the middle of an epoch.

The order of epoch e is a permutation drawn from a generator seeded with (seed, e), padded to a
multiple of the world size and dealt out rank by rank, as torch's DistributedSampler does. Unlike
DistributedSampler it can start `skip` samples into an epoch, so a resumed run sees exactly the
batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, n: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        if n <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        self.n = n
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0
        self.per_rank = -(-n // world_size)

    def set_position(self, epoch: int, skip: int = 0) -> None:
        """Iterate epoch `epoch`, starting `skip` samples (of this rank's share) into it."""
        self.epoch = epoch
        self.skip = skip

    def _epoch_indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._epoch_indices()[self.skip:])

    def __len__(self) -> int:
        return self.per_rank - self.skip
