"""Training force fields: pretraining a foundation, fine-tuning sources, the joint model.

One recipe serves all three roles (AdamW, gradient clipping, energy + force loss, warm-up
plus a cosine or plateau learning-rate schedule, best-validation checkpoint, early stopping;
see :mod:`gffmerge.plateau`); only the data and the starting point differ:

- ``foundation``: a fresh model on the union of several systems, with per-element
  reference energies and scale/shift fitted on its training split;
- ``finetune``: from a foundation checkpoint on one system (references kept);
- ``joint``: from the same foundation on the union of the fine-tuning systems, the
  "gold standard" a merge is compared with;
- ``repair``: a short fine-tune of a merged model passed in memory (``train(model=...)``),
  usually with part of it frozen (see :mod:`gffmerge.repair`).

Parameters with ``requires_grad=False`` are not trained (not in the optimiser, so left
bit-identical); that is how callers freeze part of a model.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .data import AtomsDataset, load_dataset
from .evaluate import evaluate
from .lineage import foundation_of_start
from .models import ForceField, build_model, fit_reference_energies, fit_scale_shift
from .plateau import Plateau
from .provenance import file_sha256

Role = Literal["foundation", "finetune", "joint", "repair"]
MONITORS = ("val_loss", "val_force_mae")  # what picks the best epoch


@dataclass
class TrainConfig:
    """Everything that defines a training run (JSON/YAML-able)."""

    systems: list[str]  # shipped names ("lips20/beta-Li3PS4") or data files
    role: Role = "foundation"
    model: str = "gns"  # architecture, used when ``init`` is None
    model_config: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # checkpoint to start from (fine-tune / joint)
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.01  # cosine decay floor, relative to lr
    warmup_fraction: float = 0.05
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    energy_weight: float = 1.0  # on (eV/atom)²
    force_weight: float = 10.0  # on (eV/Å)²
    patience: int = 10  # epochs without validation improvement before stopping
    # "cosine": decay to min_lr_ratio at the last epoch; "plateau": hold the peak and cut it
    # by lr_factor after every lr_patience epochs without improvement (gffmerge.plateau)
    schedule: Literal["cosine", "plateau"] = "cosine"
    lr_patience: int | None = None  # plateau schedule; None: patience // 3
    lr_factor: float = 0.5
    monitor: Literal["val_loss", "val_force_mae"] = "val_loss"  # picks the best epoch
    min_delta: float = 0.0  # relative improvement an epoch needs to count as better
    max_frames: int = 1250  # per system (protocol sampling)
    train_frames: int | None = None  # cap on training frames (random subset, seed)
    val_frames: int | None = None
    test_frames: int | None = None  # cap on frames in the final test evaluation
    max_minutes: float | None = None  # wall-clock budget; stops after the current epoch
    seed: int = 42
    threads: int | None = None
    balanced: bool = False  # frame caps drawn evenly over the systems (see balanced_subset)
    validate_init: bool = False  # the starting model is a best-validation candidate too

    def __post_init__(self):
        if self.role not in ("foundation", "finetune", "joint", "repair"):
            raise ValueError(f"role must be foundation, finetune, joint or repair, got "
                             f"{self.role!r}")
        if self.role in ("finetune", "joint") and not self.init:
            raise ValueError(f"role '{self.role}' starts from a foundation checkpoint: "
                             "set init=PATH (CLI: --init)")
        if not self.systems:
            raise ValueError("no training systems given")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.schedule not in ("cosine", "plateau"):
            raise ValueError(f"schedule must be cosine or plateau, got {self.schedule!r}")
        Plateau(self.patience, self.min_delta, self.lr_patience, self.lr_factor)  # checks
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {', '.join(MONITORS)}, got "
                             f"{self.monitor!r}")


@dataclass
class TrainResult:
    model: ForceField
    history: list[dict[str, float]]
    metrics: dict[str, Any]  # best validation and test metrics
    seconds: float
    interrupted: bool = False
    cpu_seconds: float = 0.0  # the training process's CPU time over the epochs


def _loss(model: ForceField, batch, cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    out = model(batch)
    natoms = batch.natoms.to(torch.float64)
    de = ((out["energy"] - batch.energy) / natoms).to(torch.float32)
    df = out["forces"] - batch.forces
    e_mse, f_mse = de.square().mean(), df.square().mean()
    loss = cfg.energy_weight * e_mse + cfg.force_weight * f_mse
    return loss, {"loss": loss.item(), "e_mse": e_mse.item(), "f_mse": f_mse.item()}


def _lr_factor(step: int, total: int, cfg: TrainConfig, scale: float = 1.0) -> float:
    warm = max(1, int(cfg.warmup_fraction * total))
    if step < warm:
        return scale * (step + 1) / warm
    if cfg.schedule == "plateau":
        return scale
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def balanced_subset(dataset: AtomsDataset, n: int, seed: int) -> AtomsDataset:
    """At most ``n`` frames of ``dataset``, as evenly spread over its systems as their sizes
    allow (a system with fewer frames than its share gives the rest to the others), drawn
    at random with ``numpy.random.default_rng(seed)``; kept in dataset order."""
    ids = dataset.system_ids
    systems, counts = np.unique(ids, return_counts=True)
    quota = np.zeros(len(systems), dtype=np.int64)
    left = min(int(n), len(dataset))
    while left > 0:
        open_ = np.flatnonzero(quota < counts)
        share = np.full(len(open_), left // len(open_))
        share[:left % len(open_)] += 1
        add = np.minimum(share, counts[open_] - quota[open_])
        quota[open_] += add
        left -= int(add.sum())
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(ids == sid), size=int(q), replace=False)
              for sid, q in zip(systems, quota, strict=True)]
    return dataset.take(np.sort(np.concatenate(chosen)) if chosen else [])


def _cap(dataset: AtomsDataset, n: int | None, cfg: TrainConfig) -> AtomsDataset:
    if n is None or n >= len(dataset):
        return dataset
    return balanced_subset(dataset, n, cfg.seed) if cfg.balanced else dataset.subset(
        n, seed=cfg.seed)


def _prepare_model(cfg: TrainConfig, train: AtomsDataset) -> tuple[ForceField, dict]:
    if cfg.init:
        model, meta = load_checkpoint(cfg.init)
        record = {"init": str(cfg.init), "init_metadata_role": meta.get("role"),
                  "init_sha256": file_sha256(cfg.init)}
        foundation = foundation_of_start(cfg.init)
        return model, record if foundation is None else {**record,
                                                         "foundation_sha256": foundation}
    model = build_model(cfg.model, **cfg.model_config)
    loader = train.batches_for(model, 64)
    ref = fit_reference_energies(loader)
    ss = fit_scale_shift(loader, ref.atomic_energies)
    model.set_energy_normalisation(ref.atomic_energies, ss.scale, ss.shift)
    return model, {"reference_rms_ev_per_atom": ref.rms_residual_ev_per_atom,
                   "reference_rank": ref.rank, "scale": ss.scale, "shift": ss.shift}


def _sigterm_interrupts():
    """Until the returned function is called, SIGTERM raises ``KeyboardInterrupt`` (as
    Ctrl-C does), so a job stopped by its scheduler keeps its best epoch; only in the main
    thread (the one Python delivers signals to). Returns the function that restores the
    previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame):
        raise KeyboardInterrupt("SIGTERM received")

    previous = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, previous)


def train(cfg: TrainConfig, *, output: str | Path | None = None, progress: bool = True,
          dataset: AtomsDataset | None = None, metadata: dict[str, Any] | None = None,
          model: ForceField | None = None, raise_on_interrupt: bool = True) -> TrainResult:
    """Train a model as ``cfg`` says; with ``output``, save the best-validation checkpoint
    (with ``metadata`` added to what the run records about itself).

    ``model``: start from this model (trained in place) instead of ``cfg.init`` or a fresh
    one; parameters with ``requires_grad=False`` stay frozen.

    Ctrl-C, or SIGTERM (what batch schedulers such as SLURM send before they kill a job at
    its time limit), stops after saving the best model so far (metadata ``interrupted:
    true``), then raises ``KeyboardInterrupt``; with ``raise_on_interrupt=False`` it returns
    the result (``interrupted=True``) for the caller to save and re-raise.
    """
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = dataset or load_dataset(cfg.systems, max_frames=cfg.max_frames, seed=cfg.seed)
    _check_labels(data)
    train_set = _cap(data.split("train"), cfg.train_frames, cfg)
    val_set = _cap(data.split("val"), cfg.val_frames, cfg)
    if model is not None:
        prep: dict[str, Any] = {}
    elif cfg.role == "repair" and not cfg.init:
        raise ValueError("role 'repair' starts from a given model: pass train(model=...) "
                         "or set init=PATH")
    else:
        model, prep = _prepare_model(cfg, train_set)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("every parameter of the model is frozen (requires_grad=False); "
                         "nothing to train")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    plateau = Plateau(cfg.patience, cfg.min_delta, lr_factor=cfg.lr_factor,
                      min_lr_ratio=cfg.min_lr_ratio,
                      lr_patience=(cfg.lr_patience or max(1, cfg.patience // 3))
                      if cfg.schedule == "plateau" else None)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, total_steps, cfg, plateau.lr_scale))

    best_state = copy.deepcopy(model.state_dict())
    start_val = None
    if cfg.validate_init:
        start = evaluate(model, val_set, batch_size=cfg.batch_size, progress=False)["all"]
        start_val = _monitored(start, cfg)
        plateau.start(start_val)
    history: list[dict[str, float]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    interrupted = False
    stopped_by = "epochs"
    epochs = tqdm(range(cfg.epochs), desc=f"train {cfg.role}", unit="epoch", disable=not progress)
    restore = _sigterm_interrupts()
    try:
        for epoch in epochs:
            model.train()
            sums = {"loss": 0.0, "e_mse": 0.0, "f_mse": 0.0}
            inner = tqdm(train_set.batches_for(model, cfg.batch_size, shuffle=True,
                                           seed=cfg.seed + epoch), leave=False,
                         desc=f"epoch {epoch}", unit="batch", disable=not progress)
            for batch in inner:
                opt.zero_grad(set_to_none=True)
                loss, parts = _loss(model, batch, cfg)
                if not math.isfinite(parts["loss"]):
                    raise FloatingPointError(
                        f"training loss became {parts['loss']} in epoch {epoch}; lower the "
                        "learning rate (lr) or check the data for NaN labels")
                loss.backward()
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                for k in sums:
                    sums[k] += parts[k]
                inner.set_postfix(loss=f"{parts['loss']:.4f}")
            val = evaluate(model, val_set, batch_size=cfg.batch_size, progress=False)["all"]
            val_loss = _val_loss(val, cfg)
            row = {"epoch": epoch, "seconds": time.perf_counter() - t0,
                   "lr": opt.param_groups[0]["lr"],
                   **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()},
                   "val_loss": val_loss,
                   "val_energy_mae_mev_per_atom": val["energy_mae_mev_per_atom"],
                   "val_force_mae_mev_per_a": val["force_mae_mev_per_a"]}
            history.append(row)
            if plateau.step(epoch, _monitored(val, cfg)):
                best_state = copy.deepcopy(model.state_dict())
            epochs.set_postfix(train=f"{row['train_loss']:.4f}",
                               val_E=f"{row['val_energy_mae_mev_per_atom']:.1f}",
                               val_F=f"{row['val_force_mae_mev_per_a']:.1f}",
                               best=plateau.best_epoch if plateau.best_epoch >= 0
                               else "start",
                               wait=f"{plateau.bad_epochs}/{plateau.patience}")
            if plateau.stop:
                stopped_by = "patience"
                break
            if cfg.max_minutes is not None and row["seconds"] > 60 * cfg.max_minutes:
                stopped_by = "wall budget" if epoch + 1 < cfg.epochs else stopped_by
                break
    except KeyboardInterrupt:
        interrupted, stopped_by = True, "interrupted"
    finally:
        restore()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    model.load_state_dict(best_state)
    model.eval()
    metrics: dict[str, Any] = {"best_epoch": plateau.best_epoch, "epochs_run": len(history),
                               "stopped_by": stopped_by, "monitor": cfg.monitor}
    if start_val is not None:
        metrics["start_val_loss"] = start_val
        metrics["best_val_loss"] = plateau.best
    if history:
        test_set = _cap(data.split("test"), cfg.test_frames, cfg)
        test = evaluate(model, test_set, batch_size=cfg.batch_size, progress=False)
        metrics["val"] = evaluate(model, val_set, batch_size=cfg.batch_size,
                                  progress=False)["all"]
        metrics["test"] = test
    result = TrainResult(model, history, metrics, seconds, interrupted, cpu_seconds)
    if output is not None:
        meta = {"role": cfg.role, "config": recorded_config(cfg, model),
                "data": data.describe(),
                "split": f"hash split 80/10/10 of 'system:frame', seed {cfg.seed}",
                "seed": cfg.seed, "train_frames": len(train_set), "val_frames": len(val_set),
                "wall_seconds": seconds, "cpu_seconds": cpu_seconds,
                "metrics": _plain(metrics), "history": history,
                "interrupted": interrupted, "torch": str(torch.__version__), **_plain(prep),
                **_plain(metadata or {})}
        save_checkpoint(output, model, meta)
    if interrupted and raise_on_interrupt:
        raise KeyboardInterrupt(f"training interrupted; best model so far saved to {output}"
                                if output else "training interrupted")
    return result


def recorded_config(cfg: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """``cfg`` as a checkpoint records it: with ``model`` and ``model_config`` those of the
    model that was trained. A run from ``init`` (or a given model) ignores both fields, and
    their defaults would otherwise name another architecture (a PaiNN fine-tune recorded
    as ``"gns"``)."""
    out = asdict(cfg)
    name, config = getattr(model, "name", None), getattr(model, "config", None)
    if isinstance(name, str) and isinstance(config, dict):
        out["model"], out["model_config"] = name, dict(config)
    return _plain(out)


def _check_labels(data: AtomsDataset) -> None:
    """Training fits energies and forces: refuse systems without either, naming them."""
    from .errors import DataError

    for what in ("energy", "forces"):
        missing = [fs.name for fs in data.systems if getattr(fs, what) is None]
        if missing:
            raise DataError(f"system(s) {', '.join(missing)} have no {what}; training needs "
                            f"energies and forces for every frame: use data with {what} "
                            "(e.g. extended XYZ with energy and forces, or DeePMD "
                            f"{'energy' if what == 'energy' else 'force'}.npy)")


def _monitored(val: dict[str, float], cfg: TrainConfig) -> float:
    """The value that picks the best epoch: the validation loss or force MAE."""
    return _val_loss(val, cfg) if cfg.monitor == "val_loss" else val["force_mae_mev_per_a"]


def _val_loss(val: dict[str, float], cfg: TrainConfig) -> float:
    """The validation loss: the training loss's weights on energy and force RMSE (eV)."""
    return (cfg.energy_weight * (val["energy_rmse_mev_per_atom"] / 1e3) ** 2
            + cfg.force_weight * (val["force_rmse_mev_per_a"] / 1e3) ** 2)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)
