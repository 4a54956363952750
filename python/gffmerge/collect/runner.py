"""Run one source model over its data and accumulate per-layer input statistics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..architecture import linear_layers
from ..errors import EmptyDataError, NonFiniteActivationError
from ..stats import Stats
from .batches import Forward, batch_entries, default_forward, move_to
from .dense import attach_dense


def _describe(data: Any) -> str:
    describe = getattr(data, "describe", None)
    if callable(describe):
        return str(describe())
    try:
        return f"{type(data).__name__} of {len(data)} batches"
    except TypeError:
        return type(data).__name__


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def measure(model: nn.Module, data: Iterable[Any], *, layers: Iterable[str] | None = None,
            limit: int | None = None, device: torch.device | str | None = None,
            progress: bool = True, cross: bool = False, forward: Forward | None = None,
            batch_size_fn: Callable[[Any], int] | None = None, label: str | None = None,
            description: str | None = None, backend: str = "auto") -> Stats:
    """Accumulate the input Grams of ``model``'s linear layers over ``data``.

    The model runs in eval mode under ``torch.inference_mode()``; each batch of ``data``
    is moved to ``device`` (default: the model's device) and passed to
    ``forward(model, batch)`` (default: ``model.measure_forward(batch)`` if the model
    defines it, else ``model(batch)``).

    ``limit`` counts graphs / batch entries and is checked *after* each batch, as the
    official GFFMerge scripts do: with ``limit=500`` and batches of 64, 512 graphs are
    used. ``cross=True`` also records ``Σ x̃ yᵀ`` with the layer's own output (needed
    for ``target="cross"``). Non-finite inputs to any layer raise
    :class:`~gffmerge.NonFiniteActivationError` naming the model, layer and batch.
    """
    infos = linear_layers(model, layers)
    if not infos:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to measure")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number of graphs/samples, got {limit}")
    forward = forward or default_forward
    count = batch_size_fn or batch_entries
    label = label or type(model).__name__
    home = _model_device(model)
    device = torch.device(device) if device is not None else home
    was_training = model.training

    stats = Stats.empty(model, infos, cross=cross, device=device, label=label)
    sums = stats.models[0].layers
    names = list(sums)
    try:
        total = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None

    t0 = time.perf_counter()
    model.to(device)
    model.eval()
    hooks = attach_dense(model, sums, backend=backend)
    graphs = 0
    batches = 0
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"measure {label}", unit="batch", disable=not progress,
                   leave=False)
        with torch.inference_mode():
            for batch in data:
                forward(model, move_to(batch, device))
                batches += 1
                graphs += count(batch)
                diag = torch.stack([sums[n].gram.diagonal().sum() for n in names])
                bad = (~torch.isfinite(diag)).nonzero().flatten().tolist()
                if bad:
                    layer = names[bad[0]]
                    raise NonFiniteActivationError(
                        f"model '{label}' produced NaN/Inf inputs to layer '{layer}' in "
                        f"batch {batches - 1} (layers affected: "
                        f"{', '.join(names[i] for i in bad[:5])}); check the data of this "
                        "batch (NaN positions, overlapping atoms) and that the model's "
                        "weights are finite")
                bar.update(1)
                bar.set_postfix(graphs=graphs)
                if limit is not None and graphs >= limit:
                    break
        bar.close()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
        model.to(home)
    if batches == 0 or graphs == 0:
        raise EmptyDataError(f"model '{label}' was measured on no data: the data iterable "
                             "yielded no batches; check the dataset path, split and filters")
    ms = stats.models[0]
    ms.graphs = graphs
    ms.seconds = time.perf_counter() - t0
    ms.data = [description or _describe(data)]
    return stats
