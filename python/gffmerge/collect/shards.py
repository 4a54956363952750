"""Measuring across processes: shard the frames, then sum every rank's stats in one all-reduce.

Because the statistics are sums, the reduced result equals a single-process measurement up
to the order of floating-point additions. :func:`gffmerge.measure` with ``distributed=True``
uses these; :mod:`gffmerge.distributed` holds the launch helpers (torchrun detection,
process-group set-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from ..stats import Stats


def shard(data: Any, rank: int, world_size: int, limit: int | None = None
          ) -> tuple[Any, int | None]:
    """This rank's share of ``data`` and the total number of graphs all ranks should see.

    Frame loaders (anything with ``shard(rank, world_size, limit)``, such as
    :class:`gffmerge.data.BatchLoader`) are split frame by frame; a plain sequence of
    batches is split batch by batch (every ``world_size``-th batch).
    """
    if hasattr(data, "shard"):
        part = data.shard(rank, world_size, limit)
        full = data.shard(0, 1, limit)
        return part, full.num_frames
    if limit is not None:
        raise ValueError("limit= with distributed measuring needs a frame loader that can "
                         "shard itself (gffmerge.data.BatchLoader); a plain sequence of "
                         "batches cannot reproduce the single-process limit")
    if isinstance(data, Sequence):
        return data[rank::world_size], None
    raise TypeError(f"cannot shard a {type(data).__name__} across processes; pass a "
                    "gffmerge BatchLoader or a sequence of batches")


def all_reduce(stats: Stats) -> None:
    """Sum the Grams, cross sums, row and graph counts of one model's stats over all ranks
    in place (one all-reduce of the flattened float64 tensors); the time is the maximum."""
    ms = stats.models[0]
    tensors = []
    for ls in ms.layers.values():
        tensors.append(ls.gram)
        if ls.cross is not None:
            tensors.append(ls.cross)
    device = tensors[0].device
    counts = torch.tensor([ls.rows for ls in ms.layers.values()] + [ms.graphs],
                          dtype=torch.float64, device=device)
    flat = torch.cat([t.reshape(-1) for t in tensors] + [counts])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    reduced = flat[offset:].round().to(torch.int64).tolist()
    for ls, rows in zip(ms.layers.values(), reduced[:-1]):
        ls.rows = rows
    ms.graphs = reduced[-1]
    seconds = torch.tensor([ms.seconds], dtype=torch.float64, device=device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    ms.seconds = seconds.item()
