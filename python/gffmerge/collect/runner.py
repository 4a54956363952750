"""Run one source model over its data and accumulate per-layer input statistics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..architecture import linear_layers
from ..errors import EmptyDataError, NonFiniteActivationError
from ..stats import LayerStats, Stats
from .batches import Forward, batch_entries, default_forward, move_to
from .dedup import InputCache
from .dense import DenseHook
from .hooks import LayerHook, StructuredHook, provider_of


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


class Collector:
    """The hooks on a model's layers and the cache they share within one forward."""

    def __init__(self, hooks: list[LayerHook], cache: InputCache | None):
        self.hooks = hooks
        self.cache = cache

    @property
    def structured(self) -> list[LayerHook]:
        return [h for h in self.hooks if isinstance(h, StructuredHook)]

    def end_forward(self) -> None:
        """Forget the inputs of the forward that just ran (call after every batch)."""
        if self.cache is not None:
            self.cache.clear()

    def remove(self) -> None:
        self.end_forward()
        for h in self.hooks:
            h.remove()


def attach(model: nn.Module, layers: dict[str, LayerStats], *, dense: bool = False,
           dedup: bool = True, backend: str = "auto",
           chunk_rows: int | None = None) -> Collector:
    """Hook each named layer of ``model``, accumulating into ``layers[name]``.

    A layer with ``gram_parts`` gets a :class:`StructuredHook` unless ``dense`` is set;
    every other layer a :class:`DenseHook`. With ``dedup``, layers that receive the same
    input in one forward share its Gram (:mod:`gffmerge.collect.dedup`); call
    :meth:`Collector.end_forward` after each forward.
    """
    modules = dict(model.named_modules())
    cache = InputCache() if dedup else None
    hooks: list[LayerHook] = []
    for name, sums in layers.items():
        module = modules[name]
        kind = StructuredHook if not dense and provider_of(module) else DenseHook
        hooks.append(kind(module, sums, backend=backend, cache=cache, chunk_rows=chunk_rows))
    return Collector(hooks, cache)


def measure(model: nn.Module, data: Iterable[Any], *, layers: Iterable[str] | None = None,
            limit: int | None = None, device: torch.device | str | None = None,
            progress: bool = True, cross: bool = False, forward: Forward | None = None,
            batch_size_fn: Callable[[Any], int] | None = None, label: str | None = None,
            description: str | None = None, backend: str = "auto", dense: bool = False,
            dedup: bool | None = None, distributed: bool = False) -> Stats:
    """Accumulate the input Grams of ``model``'s linear layers over ``data``.

    The model runs in eval mode under ``torch.no_grad()``; each batch of ``data``
    is moved to ``device`` (default: the model's device) and passed to
    ``forward(model, batch)`` (default: ``model.measure_forward(batch)`` if the model
    defines it, else ``model(batch)``).

    ``limit`` counts graphs / batch entries and is checked *after* each batch, as the
    official GFFMerge scripts do: with ``limit=500`` and batches of 64, 512 graphs are
    used. ``cross=True`` also records ``Σ x̃ yᵀ`` with the layer's own output (needed
    for ``target="cross"``). Non-finite inputs to any layer raise
    :class:`~gffmerge.NonFiniteActivationError` naming the model, layer and batch.

    Layers that describe their input with ``gram_parts`` (e.g.
    :class:`~gffmerge.models.layers.EdgeConcatLinear`) are measured by the structured
    provider (:mod:`gffmerge.collect.providers`: node-level products and scatter sums, no
    edge-by-feature tensor), every other layer by the dense hook on its input rows.
    ``dense=True`` uses the dense hook on every layer (the reference for comparisons).
    ``dedup`` (default: on unless ``dense``) forms the Gram of an input that reaches
    several layers in one forward once (:mod:`gffmerge.collect.dedup`); it needs the
    version counters of ordinary tensors, which is why the forward runs under
    ``torch.no_grad()`` rather than ``torch.inference_mode()``. Both paths write the
    same stats.

    ``distributed=True`` (inside an initialised ``torch.distributed`` group, e.g. under
    ``torchrun``) measures this process's shard of the frames and sums over all
    processes: see :func:`gffmerge.distributed.measure_distributed`.
    """
    if distributed:
        from ..distributed import measure_distributed

        return measure_distributed(
            model, data, limit=limit, layers=layers, cross=cross, label=label,
            description=description, device=device, progress=progress, forward=forward,
            batch_size_fn=batch_size_fn, backend=backend, dense=dense, dedup=dedup)
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
    if dedup is None:
        dedup = not dense
    collector = attach(model, sums, dense=dense, dedup=dedup, backend=backend)
    graphs = 0
    batches = 0
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"measure {label}", unit="batch", disable=not progress,
                   leave=False)
        with torch.no_grad():
            for batch in data:
                try:
                    forward(model, move_to(batch, device))
                finally:
                    collector.end_forward()
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
        collector.remove()
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
