"""Measuring across processes: shard the frames, accumulate locally, one all-reduce.

Launch with ``torchrun --nproc_per_node=N -m gffmerge measure ...`` (the CLI detects the
torchrun environment) or call :func:`measure_distributed` inside an initialised
``torch.distributed`` process group (NCCL for GPU tensors, gloo on CPU). Because the
statistics are sums, the reduced result equals a single-process measurement up to the
order of floating-point additions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .architecture import linear_layers
from .collect import measure
from .errors import StatsMismatchError
from .stats import Stats


def launched_by_torchrun() -> bool:
    """True inside a multi-process ``torchrun`` launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: torch.device | str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (NCCL for CUDA, gloo otherwise)."""
    if not dist.is_initialized():
        cuda = device is not None and torch.device(device).type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


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


def _all_reduce(stats: Stats) -> None:
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


def measure_distributed(model: nn.Module, data: Iterable[Any], *, limit: int | None = None,
                        layers: Iterable[str] | None = None, cross: bool = False,
                        label: str | None = None, description: str | None = None,
                        device: torch.device | str | None = None, **kwargs) -> Stats:
    """:func:`gffmerge.measure` over this rank's shard, summed over all ranks.

    Every rank returns the same, complete :class:`Stats`; by convention rank 0 saves it.
    The reduced graph count is checked against the data, so a lost or doubled shard is
    an error rather than a silently different merge.
    """
    if not dist.is_initialized():
        raise RuntimeError("distributed measuring needs an initialised process group: run "
                           "under torchrun, or call torch.distributed.init_process_group")
    rank, world = dist.get_rank(), dist.get_world_size()
    part, expected = shard(data, rank, world, limit)
    label = label or type(model).__name__
    try:
        empty = len(part) == 0
    except TypeError:
        empty = False
    if empty:
        infos = linear_layers(model, layers)
        stats = Stats.empty(model, infos, cross=cross, device=device, label=label)
    else:
        stats = measure(model, part, layers=layers, cross=cross, label=label,
                        description=description, device=device, **kwargs)
    _all_reduce(stats)
    ms = stats.models[0]
    base = description or (ms.data[0] if ms.data else "data")
    ms.data = [f"{base} (measured by {world} processes)"]
    if expected is not None and ms.graphs != expected:
        raise StatsMismatchError(f"the {world} processes measured {ms.graphs} graphs in "
                                 f"total but the data holds {expected}: a shard was lost or "
                                 "doubled")
    if ms.graphs == 0:
        from .errors import EmptyDataError

        raise EmptyDataError(f"model '{label}' was measured on no data by any of the {world} "
                             "processes; check the dataset path, split and filters")
    return stats
