"""Measuring across processes: launch helpers and the public entry point.

Launch with ``torchrun --nproc_per_node=N -m gffmerge measure ...`` (the CLI detects the
torchrun environment) or call :func:`measure_distributed` (or :func:`gffmerge.measure`
with ``distributed=True``) inside an initialised ``torch.distributed`` process group
(NCCL for GPU tensors, gloo on CPU). Because the statistics are sums, the reduced result
equals a single-process measurement up to the order of floating-point additions. The
sharding and the all-reduce live in :mod:`gffmerge.collect.shards`. With ``partial=`` /
``resume=`` (CLI: ``--resume``) each process keeps and resumes its own partial file
(:func:`gffmerge.collect.partial.rank_path`: ``OUT.partial`` -> ``OUT.rank1-of-4.partial``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .collect import MeasureOptions, measure
from .collect.shards import shard
from .stats import Stats

__all__ = ["init_from_env", "launched_by_torchrun", "measure_distributed", "shard"]


def launched_by_torchrun() -> bool:
    """True inside a multi-process ``torchrun`` launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: torch.device | str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (NCCL for CUDA, gloo otherwise)."""
    if not dist.is_initialized():
        cuda = device is not None and torch.device(device).type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def measure_distributed(model: nn.Module, data: Iterable[Any], *,
                        options: MeasureOptions | None = None, **kwargs: Any) -> Stats:
    """:func:`gffmerge.measure` over this rank's shard, summed over all ranks.

    Takes the same ``options=`` / keywords as :func:`gffmerge.measure`. Every rank
    returns the same, complete :class:`Stats`; by convention rank 0 saves it. The reduced
    graph count is checked against the data, so a lost or doubled shard is an error
    rather than a silently different merge.
    """
    opts = MeasureOptions.build(options, kwargs)
    return measure(model, data, options=replace(opts, distributed=True))
