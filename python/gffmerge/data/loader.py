"""``BatchLoader``: the ``AtomsBatch``es of a dataset, in order or shuffled, or one shard."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .batch import AtomsBatch


class BatchLoader:
    """Iterates ``AtomsBatch``es of a dataset; ``len()`` is the number of batches.

    ``dataset`` is an :class:`~gffmerge.data.AtomsDataset` (not imported here: the dataset
    module builds loaders, so a type import back would be a cycle).
    """

    def __init__(self, dataset, batch_size: int, cutoff: float, *,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.cutoff = float(cutoff)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.dtype = dtype

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self) -> np.ndarray:
        """Dataset positions in iteration order."""
        n = len(self.dataset)
        if self.shuffle:
            return np.random.default_rng(self.seed).permutation(n)
        return np.arange(n)

    def shard(self, rank: int, world_size: int, limit: int | None = None) -> BatchLoader:
        """This rank's part of the frames for multi-process measuring.

        Every ``world_size``-th frame of the iteration order, starting at ``rank``, so the
        shards are disjoint and together exhaustive (no padding or dropping, unlike
        ``DistributedSampler``). With ``limit`` (graphs, checked after each batch as
        single-process measuring does), only the frames a single process would have used,
        ``ceil(limit / batch_size)`` whole batches, are shared out.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        order = self.order()
        if limit is not None:
            order = order[:math.ceil(limit / self.batch_size) * self.batch_size]
        return BatchLoader(self.dataset.take(order[rank::world_size]), self.batch_size,
                           self.cutoff, shuffle=False, drop_last=False, dtype=self.dtype)

    @property
    def num_frames(self) -> int:
        """Frames this loader yields in one pass."""
        return len(self) * self.batch_size if self.drop_last else len(self.dataset)

    def __iter__(self) -> Iterator[AtomsBatch]:
        order = self.order()
        for b in range(len(self)):
            chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.dataset.collate(chunk, self.cutoff, self.dtype)

