"""Repair fine-tune: a short training run that closes what a merge leaves of the gap.

``repair(model, data, frames=250, epochs=10, scope="all")`` fine-tunes a copy of a merged
model on at most ``frames`` frames of the combined training split of the given systems,
spread evenly over the systems and drawn with ``seed``, with the recipe of
:func:`gffmerge.train.train` (AdamW, warm-up + cosine schedule, energy + force loss). The
starting model is validated first and the best-validation model is kept, so a repair never
returns a model worse on validation than the one it was given.

``scope`` says what is trained; everything else stays bit-identical:

- ``"heads"``: the output layers, i.e. every parameter under a module named ``readout``,
  ``head`` or ``*_head`` (SchNet and PaiNN: ``readout``; GNS: ``energy_head`` and
  ``force_head``);
- ``"last:N"``: the weights and biases of the last ``N`` ``nn.Linear`` layers in *forward
  order*, the order in which the layers first run in one forward pass (the pass the
  statistics collector runs, ``measure_forward``) on a training batch. This is not the
  registration order: PaiNN registers all message blocks before all update blocks but runs
  them interleaved, and ``last:N`` follows the run;
- ``"all"`` (the default): every parameter (an embedding switch's per-system tables
  included).

Choosing the start: given other candidate starts (``starts=``, e.g. the other families of
candidates a progressive merge scored, ``MergeResult.alternatives``), each is repaired for
``probe_epochs`` first, the two best again for twice as long, and the full repair starts
from the one whose second probe reached the lowest validation loss (one round alone
misranked a near tie on rMD17 GNS: 0.2495 against 0.2531 after one epoch, 0.190 against
0.151 after two, 0.145 against 0.105 after the full repair). The merge best on validation
is not always the one a few epochs move furthest: on the LiPS20 Li3P / P2S5 pairs the
foundation scored best before a repair and worst after one.

Choosing the rate (``lr="auto"``; the experiment runner's default): the rate that repairs
best differs by model. On the shipped pairs (``benchmarks/bench_repair_lr.py``) GNS repaired
best at the fine-tuning rate 5e-4 (rMD17: 73.5 meV/Å, against 79.4 at 1e-3 and 102 at 2e-3)
and PaiNN at 1e-3 (rMD17: 86.6 against 91.2 at 5e-4). A 2 x ``probe_epochs`` probe per rate
from the chosen start ranks them as the full repairs do on those pairs; probes at 2.5e-4
looked good for GNS but its full repairs never were, so the grid starts at 5e-4.
Why ``"all"`` by default: on the rMD17 GNS average merge (``benchmarks/bench_repair.py``,
250 frames, 10 epochs) it brought the test force MAE from 328 to 92 meV/Å against 170 for
``"heads"`` and 120 for ``"last:10"``, at 1.1-1.4x their wall time: the merge error sits in
the trunk's features too, which the heads alone cannot undo.
"""

from __future__ import annotations

import copy
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from .architecture import check_same_architecture, first_calls
from .data import AtomsDataset, load_dataset
from .data.split import DEFAULT_MAX_FRAMES, DEFAULT_SEED
from .errors import ArchitectureMismatchError
from .models import ForceField
from .train import TrainConfig, TrainResult, balanced_subset, train

_HEAD_NAME = re.compile(r"^(readout|head|.+_head)$")
PROBE_FINALISTS = 2  # starts probed a second time, for twice the epochs
LR_GRID = (5e-4, 1e-3)
"""The rates ``lr="auto"`` chooses among on validation (``benchmarks/results/repair_lr.md``:
on the shipped pairs the full repairs' validation loss was lowest at 5e-4 for GNS and at
1e-3-2e-3 for PaiNN, and never at 2.5e-4)."""
DEFAULT_LR = 5e-4  # the fine-tuning rate of the shipped recipes


@dataclass(frozen=True)
class RepairOptions:
    """The options of one repair run (recorded in the checkpoint's metadata)."""

    frames: int = 250  # training frames in all, spread evenly over the systems
    epochs: int = 10
    scope: str = "all"  # "heads", "last:N" or "all"
    lr: float = DEFAULT_LR
    batch_size: int = 8
    val_frames: int | None = None  # cap on validation frames (evenly spread); None: all
    seed: int = DEFAULT_SEED
    energy_weight: float = 1.0  # on (eV/atom)²
    force_weight: float = 10.0  # on (eV/Å)²
    threads: int | None = None

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        parse_scope(self.scope)


@dataclass
class RepairResult:
    """The repaired model and what the run did."""

    model: ForceField
    options: RepairOptions
    trainable: list[str]  # names of the trained parameters
    frames_per_system: dict[str, int]  # training frames used per system
    start_val_loss: float  # validation loss of the model given (training-loss weights)
    best_val_loss: float  # of the model returned
    seconds: float  # wall time of the whole repair (data, scope, probes, training, evaluation)
    train: TrainResult = field(repr=False)
    start: str = "given"  # which start the repair began from ("given": the model passed)
    probe_val_loss: dict[str, float] = field(default_factory=dict)  # by start, if probed
    # the best PROBE_FINALISTS probes again, for twice the epochs: the start is their best
    final_probe_val_loss: dict[str, float] = field(default_factory=dict)
    # by rate, with lr="auto": the chosen start's probes for 2 * probe_epochs
    lr_probe_val_loss: dict[float, float] = field(default_factory=dict)
    probe_seconds: float = 0.0

    @property
    def history(self) -> list[dict[str, float]]:
        return self.train.history

    @property
    def metrics(self) -> dict[str, Any]:
        return self.train.metrics


def parse_scope(scope: str) -> tuple[str, int | None]:
    """``"heads"`` -> ("heads", None), ``"last:3"`` -> ("last", 3), ``"all"`` -> ("all", None)."""
    if scope in ("heads", "all"):
        return scope, None
    if isinstance(scope, str) and scope.startswith("last:"):
        try:
            n = int(scope.removeprefix("last:"))
        except ValueError:
            n = 0
        if n >= 1:
            return "last", n
    raise ValueError(f"scope must be 'heads', 'last:N' (N >= 1 linear layers) or 'all', got "
                     f"{scope!r}")


def linear_layers_in_forward_order(model: ForceField, batch) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` in the order they first run in
    ``model.measure_forward(batch)``; layers that do not run are left out."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return first_calls(model, names, lambda: model.measure_forward(batch))[0]


def scope_parameters(model: ForceField, scope: str, batch=None) -> list[str]:
    """Names of the parameters ``scope`` trains (see the module docstring); ``batch`` (any
    batch the model runs on) is needed for ``last:N``."""
    kind, n = parse_scope(scope)
    params = [name for name, _ in model.named_parameters()]
    if kind == "all":
        return params
    if kind == "heads":
        heads = [p for p in params if any(_HEAD_NAME.match(part) for part in p.split(".")[:-1])]
        if not heads:
            raise ValueError(f"scope 'heads' found no output layers in {type(model).__name__} "
                             "(modules named readout, head or *_head); use scope 'last:N' or "
                             "'all'")
        return heads
    if batch is None:
        raise ValueError("scope 'last:N' needs a batch to find the forward order of the layers")
    order = linear_layers_in_forward_order(model, batch)
    if n > len(order):
        raise ValueError(f"scope 'last:{n}' asks for more linear layers than "
                         f"{type(model).__name__} runs ({len(order)})")
    chosen = order[-n:]
    return [p for p in params if p.rsplit(".", 1)[0] in chosen]


def combined_dataset(data: AtomsDataset | str | os.PathLike | Sequence[Any], *,
                     max_frames: int | None = DEFAULT_MAX_FRAMES,
                     seed: int = DEFAULT_SEED) -> AtomsDataset:
    """One dataset of all the systems in ``data``.

    An ``AtomsDataset`` is used as it is. A sequence of shipped names, paths or
    ``FrameSet``s is loaded with :func:`~gffmerge.data.load_dataset` (``max_frames``,
    ``seed``). A sequence of ``AtomsDataset``s is combined from their systems with the
    sampling protocol of the first (views of them are not kept: pass one dataset for that).
    """
    if isinstance(data, AtomsDataset):
        return data
    if isinstance(data, str | os.PathLike):
        data = [data]
    items = list(data)
    if not items:
        raise ValueError("no data given: pass at least one system name, file or dataset")
    if all(isinstance(d, AtomsDataset) for d in items):
        protocols = {(d.max_frames, d.seed) for d in items}
        if len(protocols) > 1:
            raise ValueError(f"the datasets were sampled differently (max_frames, seed) "
                             f"{sorted(protocols, key=str)}; load them with the same protocol")
        return AtomsDataset([s for d in items for s in d.systems],
                            max_frames=items[0].max_frames, seed=items[0].seed)
    if any(isinstance(d, AtomsDataset) for d in items):
        raise TypeError("pass either datasets or system names/files, not a mixture")
    return load_dataset(items, max_frames=max_frames, seed=seed)


def repair(model: ForceField, data: AtomsDataset | str | os.PathLike | Sequence[Any], *,
           frames: int = 250, epochs: int = 10, scope: str = "all",
           lr: float | str = DEFAULT_LR,
           batch_size: int = 8, val_frames: int | None = None, seed: int = DEFAULT_SEED,
           max_frames: int | None = DEFAULT_MAX_FRAMES, energy_weight: float = 1.0,
           force_weight: float = 10.0, threads: int | None = None,
           output: str | os.PathLike | None = None, metadata: dict[str, Any] | None = None,
           starts: Mapping[str, ForceField] | None = None, probe_epochs: int = 1,
           lr_grid: Sequence[float] = LR_GRID, progress: bool = False) -> RepairResult:
    """Fine-tune a copy of ``model`` on the combined training split of ``data``.

    ``data``: see :func:`combined_dataset` (``max_frames`` and ``seed`` set the sampling of
    names and files). Training uses at most ``frames`` frames of the training split, evenly
    spread over the systems (seeded); validation the validation split (``val_frames``
    caps it, evenly spread). ``scope``: ``"heads"``, ``"last:N"`` or ``"all"`` (module
    docstring); the other parameters are not changed at all. The best-validation model is
    returned, the model given included. With ``output``, the returned model is saved there
    (atomically) with the options, the trained parameter names, the frames per system, the
    validation losses and the wall time in its metadata (``metadata`` is added).

    ``starts``: other models the repair may start from instead (by label, e.g. a merge's
    ``MergeResult.alternatives``). Each candidate, ``model`` as ``"given"`` included, is
    first repaired for ``probe_epochs`` on the same frames (a probe: its own short
    schedule); the :data:`PROBE_FINALISTS` with the lowest validation loss are probed again
    for ``2 * probe_epochs``, and the full repair starts from the untouched candidate whose
    second probe did best. The probes' losses and time are in the result.

    ``lr="auto"``: the rate is chosen on validation too. The starts are probed at
    :data:`DEFAULT_LR`; then the chosen start is probed for ``2 * probe_epochs`` at every
    rate of ``lr_grid`` (the default rate's second probe reused), and the full repair runs
    at the rate whose probe did best (``RepairResult.lr_probe_val_loss``; the rate used is
    ``options.lr``).
    """
    t0 = time.perf_counter()
    auto_lr = isinstance(lr, str)
    if auto_lr and lr != "auto":
        raise ValueError(f"lr must be a rate > 0 or 'auto' (chosen on validation from "
                         f"lr_grid), got {lr!r}")
    if auto_lr:
        grid = tuple(lr_grid)
        if not grid or not all(isinstance(r, (int, float)) and not isinstance(r, bool)
                               and r > 0 for r in grid):
            raise ValueError(f"lr_grid must be a non-empty sequence of rates > 0, got "
                             f"{lr_grid!r}")
    opts = RepairOptions(frames=frames, epochs=epochs, scope=scope,
                         lr=DEFAULT_LR if auto_lr else lr,
                         batch_size=batch_size, val_frames=val_frames, seed=seed,
                         energy_weight=energy_weight, force_weight=force_weight,
                         threads=threads)
    candidates = {"given": model, **dict(starts or {})}
    for label, m in candidates.items():
        if not isinstance(m, ForceField):
            what = "repair" if label == "given" else f"repair start {label!r}"
            raise TypeError(f"{what} needs a gffmerge ForceField, got {type(m).__name__}")
    if len(candidates) > 1:
        try:
            check_same_architecture(list(candidates.values()))
        except ArchitectureMismatchError as exc:
            raise ArchitectureMismatchError(
                f"every repair start must have the model's architecture (model 0 is the "
                f"model given; then {', '.join(map(repr, list(candidates)[1:]))}): "
                f"{exc}") from None
    if (starts or auto_lr) and (not isinstance(probe_epochs, int) or probe_epochs < 1):
        raise ValueError(f"probe_epochs must be >= 1 epoch per start or rate, got "
                         f"{probe_epochs!r}")
    dataset = combined_dataset(data, max_frames=max_frames, seed=seed)
    train_split = dataset.split("train")
    if len(train_split) == 0:
        raise ValueError("the data has no training frames; check the system names")
    if len(dataset.split("val")) == 0:
        raise ValueError("the data has no validation frames to pick the best model with; "
                         "use more frames per system (max_frames)")
    if not (dataset.has_energy and dataset.has_forces):
        raise ValueError("repair needs energy and force labels; this data lacks them")
    used = balanced_subset(train_split, opts.frames, opts.seed)
    frames_per_system = {dataset.system_names[s]: int(c) for s, c in
                         zip(*np.unique(used.system_ids, return_counts=True), strict=True)}
    probes: dict[str, float] = {}
    finals: dict[str, float] = {}
    start = "given"
    t_probe = time.perf_counter()
    def probe(label: str, n_epochs: int, o: RepairOptions = opts) -> float:
        run = _train_copy(candidates[label], dataset, o, n_epochs, None, None,
                          progress=progress)
        return float(run.metrics["best_val_loss"])
    if len(candidates) > 1:
        probes = {label: probe(label, probe_epochs) for label in candidates}
        # the closest probes rank wrongly most often: the best few go again, twice as long
        ranked = sorted(probes, key=probes.get)[:PROBE_FINALISTS]
        finals = {label: probe(label, 2 * probe_epochs) for label in ranked}
        start = min(finals, key=finals.get)
    lr_probes: dict[float, float] = {}
    if auto_lr:
        for rate in grid:
            if rate == opts.lr and start in finals:
                lr_probes[rate] = finals[start]
            else:
                lr_probes[rate] = probe(start, 2 * probe_epochs, replace(opts, lr=float(rate)))
        opts = replace(opts, lr=float(min(lr_probes, key=lr_probes.get)))
    probe_s = time.perf_counter() - t_probe
    record = {"repair": {"options": asdict(opts),
                         "frames_per_system": frames_per_system,
                         "start": start,
                         "probe_epochs": probe_epochs if (probes or lr_probes) else 0,
                         "probe_val_loss": probes, "final_probe_val_loss": finals,
                         "lr_probe_val_loss": {str(k): v for k, v in lr_probes.items()},
                         "probe_seconds": probe_s,
                         "setup_seconds": time.perf_counter() - t0 - probe_s}}
    result, trainable = _train_copy(candidates[start], dataset, opts, opts.epochs, output,
                                    {**(metadata or {}), **record}, progress=progress,
                                    with_scope=True)
    return RepairResult(model=result.model, options=opts, trainable=trainable,
                        frames_per_system=frames_per_system,
                        start_val_loss=float(result.metrics["start_val_loss"]),
                        best_val_loss=float(result.metrics["best_val_loss"]),
                        seconds=time.perf_counter() - t0, train=result, start=start,
                        probe_val_loss=probes, final_probe_val_loss=finals,
                        lr_probe_val_loss=lr_probes, probe_seconds=probe_s)


def _train_copy(model: ForceField, dataset: AtomsDataset, opts: RepairOptions, epochs: int,
                output, metadata, *, progress: bool, with_scope: bool = False):
    """Train a copy of ``model`` under ``opts`` for ``epochs`` (only the scope's
    parameters); returns the train result (and the trained names if ``with_scope``)."""
    used = balanced_subset(dataset.split("train"), opts.frames, opts.seed)
    work = copy.deepcopy(model)
    probe = used.collate([0], work.cutoff, next(work.parameters()).dtype)
    trainable = scope_parameters(work, opts.scope, probe)
    chosen = set(trainable)
    for name, p in work.named_parameters():
        p.requires_grad_(name in chosen)
    cfg = TrainConfig(systems=list(dataset.system_names), role="repair", epochs=epochs,
                      batch_size=opts.batch_size, lr=opts.lr, energy_weight=opts.energy_weight,
                      force_weight=opts.force_weight, patience=epochs,
                      max_frames=dataset.max_frames, train_frames=opts.frames,
                      val_frames=opts.val_frames, seed=opts.seed, threads=opts.threads,
                      balanced=True, validate_init=True)
    meta = None
    if metadata is not None:
        meta = dict(metadata)
        meta["repair"] = {**meta.get("repair", {}), "trainable_parameters": trainable}
    try:
        result = train(cfg, output=output, progress=progress, dataset=dataset,
                       metadata=meta, model=work)
    finally:
        for p in work.parameters():
            p.requires_grad_(True)
    return (result, trainable) if with_scope else result
