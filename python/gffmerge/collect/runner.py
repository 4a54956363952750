"""Run one source model over its data and accumulate per-layer input statistics."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..atomic import after_commit
from ..errors import EmptyDataError, NonFiniteActivationError, StatsMismatchError
from ..models.groups import linear_units
from ..stats import LayerStats, Stats
from .batches import all_on, batch_entries, default_forward, describe, model_device, move_to
from .dedup import InputCache
from .dense import DenseHook
from .hooks import LayerHook, StructuredHook, provider_of
from .options import MeasureOptions
from .partial import (
    START_HASH,
    PartialState,
    ResumeError,
    SaveClock,
    StopSignals,
    chain_hash,
    rank_path,
    restore_sums,
    skip_measured,
)
from .shards import all_reduce, shard
from .workspace import Workspace


class Collector:
    """The hooks on a model's layers and the cache they share within one forward."""

    def __init__(self, hooks: list[LayerHook], cache: InputCache | None,
                 workspace: Workspace | None = None):
        self.hooks = hooks
        self.cache = cache
        self.workspace = workspace

    def end_forward(self) -> None:
        """Forget the inputs of the forward that just ran (call after every batch)."""
        for h in self.hooks:
            h.end_forward()
        if self.cache is not None:
            self.cache.clear()
        if self.workspace is not None:
            self.workspace.end_forward()

    def flush(self) -> None:
        """Bring every hook's sums up to date (derived cross sums) while attached."""
        for h in self.hooks:
            h.flush()

    def remove(self) -> None:
        self.end_forward()
        for h in self.hooks:
            h.remove()
        if self.workspace is not None:
            self.workspace.release()


def attach(model: nn.Module, layers: dict[str, LayerStats], *, dense: bool = False,
           dedup: bool = True, backend: str = "auto",
           chunk_rows: int | None = None, derive_from_zero: bool = False,
           shared: InputCache | None = None, units: dict | None = None) -> Collector:
    """Hook each named layer of ``model``, accumulating into ``layers[name]``.

    A layer with ``gram_parts`` gets a :class:`StructuredHook` unless ``dense`` is set;
    every other layer a :class:`DenseHook`. With ``dedup``, layers that receive the same
    input in one forward share its Gram (:mod:`gffmerge.collect.dedup`); call
    :meth:`Collector.end_forward` after each forward. ``derive_from_zero``: see
    :class:`~gffmerge.collect.hooks.LayerHook` (``measure`` starts from zero sums);
    ``shared``: a cache kept across models, see :class:`~gffmerge.collect.hooks.LayerHook`;
    ``units``: ``linear_units(model)`` when the caller has it already.
    """
    if units is None:
        units = linear_units(model)  # nn.Linear, and the linear groups of adapted libraries
    modules = dict(model.named_modules())
    cache = InputCache() if dedup else None
    workspace = Workspace()
    hooks: list[LayerHook] = []
    for name, sums in layers.items():
        module = units[name].view if name in units else modules[name]
        kind = StructuredHook if not dense and provider_of(module) else DenseHook
        hooks.append(kind(module, sums, backend=backend, cache=cache, chunk_rows=chunk_rows,
                          derive_from_zero=derive_from_zero, workspace=workspace,
                          shared=shared))
    return Collector(hooks, cache, workspace)


def measure(model: nn.Module, data: Iterable[Any], *, options: MeasureOptions | None = None,
            **kwargs: Any) -> Stats:
    """Accumulate the input Grams of ``model``'s linear layers over ``data``.

    The settings are one :class:`MeasureOptions`: pass ``options=``, keywords named like
    its fields (``measure(model, data, limit=500, cross=True)``), or both (keywords
    override fields of ``options``). An unknown keyword is a ``TypeError`` listing the
    valid ones.

    The model runs in eval mode under ``torch.no_grad()``; each batch of ``data``
    is moved to ``device`` (default: the model's device) and passed to
    ``forward(model, batch)`` (default: ``model.measure_forward(batch)`` if the model
    has one, see :class:`~gffmerge.models.parts.MeasureForward`, else ``model(batch)``).

    ``limit`` counts graphs / batch entries and is checked *after* each batch, as the
    official GFFMerge scripts do: with ``limit=500`` and batches of 64, 512 graphs are
    used. ``cross=True`` also records ``Σ x̃ yᵀ`` with the layer's own output (needed
    for ``target="cross"``). Non-finite inputs to any layer raise
    :class:`~gffmerge.NonFiniteActivationError` naming the model, layer and batch.

    Layers that describe their input with ``gram_parts`` (the
    :class:`~gffmerge.models.parts.StructuredInput` contract, e.g.
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
    processes (:mod:`gffmerge.collect.shards`); every rank returns the same stats.

    ``partial=PATH`` keeps the sums so far in ``PATH`` while measuring (every
    ``partial_every`` batches or ``partial_seconds`` seconds, and when SIGINT/SIGTERM stops
    the run, which then raises ``KeyboardInterrupt`` at the end of the current batch; a
    second signal stops at once); ``resume=PATH`` continues from such a file and returns
    the stats an uninterrupted run returns, bit for bit. A file of another model, other
    data or other options raises :class:`~gffmerge.collect.ResumeError`; the file is
    removed once the measurement succeeded (:mod:`gffmerge.collect.partial`).
    """
    opts = MeasureOptions.build(options, kwargs)
    if opts.distributed:
        return _measure_sharded(model, data, opts)
    stats = _measure_local(model, data, opts, opts.partial_path, resume=opts.resume is not None)
    _forget(opts.partial_path)
    return stats


def _forget(path: Path | None) -> None:
    """Remove a finished measurement's partial file, once its results are written (inside a
    CLI command: after the stats file is in place)."""
    if path is not None:
        after_commit(lambda: path.unlink(missing_ok=True))


def _sum_options(opts: MeasureOptions, names: list[str], dedup: bool, device: torch.device,
                 extra: dict[str, Any] | None) -> dict[str, Any]:
    """The settings that change the measured sums: a partial file resumes only under these."""
    return {"layers": names, "limit": opts.limit, "cross": opts.cross, "dense": opts.dense,
            "dedup": dedup, "backend": opts.backend, "device": device.type, **(extra or {})}


def _measure_local(model: nn.Module, data: Iterable[Any], opts: MeasureOptions,
                   partial: Path | None = None, *, resume: bool = False,
                   extra: dict[str, Any] | None = None) -> Stats:
    """One process over all of ``data``; with ``partial``, the sums are kept there (and
    with ``resume`` continued from there), see :mod:`gffmerge.collect.partial`."""
    limit, cross, dense = opts.limit, opts.cross, opts.dense
    units = linear_units(model, opts.layers)
    infos = {n: u.info for n, u in units.items()}
    if not infos:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to measure")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number of graphs/samples, got {limit}")
    forward = opts.forward or default_forward
    count = opts.batch_size_fn or batch_entries
    label = opts.label or type(model).__name__
    home = model_device(model)
    device = torch.device(opts.device) if opts.device is not None else home
    was_training = model.training
    dedup = not dense if opts.dedup is None else opts.dedup

    stats = Stats.empty(model, infos, cross=cross, device=device, label=label)
    sums = stats.models[0].layers
    names = list(sums)
    try:
        total = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None

    graphs = 0
    batches = 0
    before_s = 0.0  # seconds measured by the runs this one resumes
    data_hash = START_HASH
    fields = _sum_options(opts, names, dedup, device, extra)
    if partial is not None and resume:
        state = PartialState.load(partial, device)
        state.check(partial, model=stats.models[0].fingerprint, options=fields,
                    total_batches=total)
        restore_sums(sums, state, partial)
        graphs, batches, before_s = state.graphs, state.batches, state.seconds
    elif partial is not None and partial.exists():
        warnings.warn(f"'{partial}' holds an unfinished measurement; it is replaced by this "
                      "one (resume= / --resume continues it instead)", stacklevel=3)

    t0 = time.perf_counter()
    batch_iter = iter(data)
    if batches:
        data_hash = skip_measured(batch_iter, batches, state, partial)

    def save() -> None:
        # kept raw: cross sums derived from the Gram (affine layers) are formed at the end
        # from the whole Gram, resumed or not, so a resumed run equals an uninterrupted one
        PartialState(stats.models[0].fingerprint, fields, total, data_hash, batches, graphs,
                     before_s + time.perf_counter() - t0, sums).save(partial)

    def stopped(signame: str) -> KeyboardInterrupt:
        return KeyboardInterrupt(
            f"measuring '{label}' stopped by {signame} after {batches} of "
            f"{total if total is not None else '?'} batches; the sums so far are in "
            f"'{partial}': measure again with --resume (resume=) to continue")

    moved = not all_on(model, device)
    if moved:  # .to() walks every module even when nothing moves (~2 ms for GNS)
        model.to(device)
    # eval() and train() walk every module (~0.7 ms for GNS per measure call): skipped when
    # no module is in training mode (then neither would change anything)
    training = any(m.training for m in model.modules())
    if training:
        model.eval()
    collector = attach(model, sums, dense=dense, dedup=dedup, backend=opts.backend,
                       derive_from_zero=True, shared=opts.shared, units=units)
    clock = SaveClock(opts.partial_every, opts.partial_seconds, batches)
    diagonals = [sums[n].gram.diagonal() for n in names]  # views, updated in place
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=batches, desc=f"measure {label}", unit="batch",
                   disable=not opts.progress, leave=False)
        with torch.no_grad(), (StopSignals() if partial is not None
                               else contextlib.nullcontext()) as stop:
            done = limit is not None and graphs >= limit  # resumed after the last batch
            for batch in () if done else batch_iter:
                if partial is not None:
                    data_hash = chain_hash(data_hash, batch)
                try:
                    forward(model, move_to(batch, device))
                finally:
                    collector.end_forward()
                batches += 1
                graphs += count(batch)
                # one check of every diagonal entry (a NaN/Inf input row makes its own
                # diagonal entries non-finite); the layers are named only when one fails
                if not bool(torch.isfinite(torch.cat(diagonals)).all()):
                    diag = torch.stack([sums[n].gram.diagonal().sum() for n in names])
                    bad = (~torch.isfinite(diag)).nonzero().flatten().tolist() or [
                        i for i, d in enumerate(diagonals) if not bool(torch.isfinite(d).all())]
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
                if partial is not None and (stop.received is not None or clock.due(batches)):
                    save()
                    clock.saved(batches)
                    if stop.received is not None:
                        raise stopped(stop.name)
            if partial is not None and stop.received is not None:
                save()
                raise stopped(stop.name)
        bar.close()
    finally:
        collector.remove()
        if training:
            model.train(was_training)
        if moved:
            model.to(home)
    if batches == 0 or graphs == 0:
        raise EmptyDataError(f"model '{label}' was measured on no data: the data iterable "
                             "yielded no batches; check the dataset path, split and filters")
    ms = stats.models[0]
    ms.graphs = graphs
    ms.seconds = before_s + time.perf_counter() - t0
    ms.data = [opts.description or describe(data)]
    return stats


def _measure_sharded(model: nn.Module, data: Iterable[Any], opts: MeasureOptions) -> Stats:
    """This rank's shard of ``data``, summed over all ranks; the reduced graph count is
    checked against the data, so a lost or doubled shard is an error."""
    if not dist.is_initialized():
        raise RuntimeError("distributed measuring needs an initialised process group: run "
                           "under torchrun, or call torch.distributed.init_process_group")
    rank, world = dist.get_rank(), dist.get_world_size()
    part, expected = shard(data, rank, world, opts.limit)
    label = opts.label or type(model).__name__
    try:
        empty = len(part) == 0
    except TypeError:
        empty = False
    where = None if opts.partial_path is None else rank_path(opts.partial_path, rank, world)
    if empty:
        infos = {n: u.info for n, u in linear_units(model, opts.layers).items()}
        stats = Stats.empty(model, infos, cross=opts.cross, device=opts.device, label=label)
    if where is not None and opts.resume is not None:
        # every rank resumes or none does: a rank that raised alone would leave the others
        # waiting in the all-reduce
        device = opts.device if opts.device is not None else model_device(model)
        have = torch.tensor([float(empty or where.is_file())], device=device)
        dist.all_reduce(have, op=dist.ReduceOp.MIN)
        if not have.item() and where.is_file():
            raise ResumeError(f"partial measurement '{where}' is here, but another process "
                              "of this run has none; the partial files are of another run",
                              where, "delete them all to start afresh, or drop --resume")
    if not empty:
        if where is not None and opts.resume is not None and world > 1 and not where.exists() \
                and opts.partial_path.exists():
            raise ResumeError(f"partial measurement '{opts.partial_path}' is of a "
                              f"single-process run, but this run has {world} processes and "
                              f"rank {rank} finds no '{where}'", opts.partial_path,
                              "resume it with one process, or delete it to start afresh")
        stats = _measure_local(model, part, replace(opts, label=label, distributed=False),
                               where, resume=opts.resume is not None,
                               extra={"rank": rank, "world_size": world})
    all_reduce(stats)
    ms = stats.models[0]
    base = opts.description or (ms.data[0] if ms.data else "data")
    ms.data = [f"{base} (measured by {world} processes)"]
    if expected is not None and ms.graphs != expected:
        raise StatsMismatchError(f"the {world} processes measured {ms.graphs} graphs in "
                                 f"total but the data holds {expected}: a shard was lost or "
                                 "doubled")
    if ms.graphs == 0:
        raise EmptyDataError(f"model '{label}' was measured on no data by any of the {world} "
                             "processes; check the dataset path, split and filters")
    _forget(where)
    return stats
