"""Continuing a finished training run from its checkpoint: a second phase of the same recipe.

A run that its epoch ceiling or wall budget stopped while still improving can be carried on
instead of retrained: the checkpoint's best weights are trained further on the same data
(same systems, frame caps, split and seed, read from the checkpoint's ``config``) under the
plateau schedule, starting by default at the learning rate the first phase ended with, with
no warm-up, and with the starting model as the candidate to beat (``validate_init``), so a
second phase that never improves leaves the weights as they were.

The checkpoint written afterwards reads as one run: its ``history`` is phase 1's followed by
phase 2's (epochs and seconds counted on from where phase 1 ended), ``epochs_run``,
``wall_seconds`` and ``cpu_seconds`` are the sums over the phases, ``best_epoch`` counts from
the first epoch of phase 1, and ``phases`` lists what each phase was (config, epochs, best
epoch, stop reason, times). The first phase's ``config`` and ``init`` (the foundation) stay,
so the lineage checks still see the foundation the model was fine-tuned from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .train import TrainConfig, TrainResult, _plain, recorded_config, train


def _phase(cfg: dict, metrics: dict, wall: float, cpu: float, **extra: Any) -> dict:
    return {"config": cfg, "epochs_run": metrics.get("epochs_run"),
            "best_epoch": metrics.get("best_epoch"), "stopped_by": metrics.get("stopped_by"),
            "wall_seconds": wall, "cpu_seconds": cpu, **extra}


def continue_training(path: str | Path, *, epochs: int, patience: int,
                      lr: float | None = None, lr_patience: int | None = None,
                      min_delta: float | None = None, max_minutes: float | None = None,
                      output: str | Path | None = None, progress: bool = True,
                      metadata: dict[str, Any] | None = None,
                      schedule: str = "plateau") -> TrainResult:
    """Train the checkpoint at ``path`` for up to ``epochs`` more epochs (plateau rule with
    ``patience``) and save the result to ``output`` (default: ``path`` itself).

    ``lr``: the starting learning rate (default: the last one of the recorded history);
    ``min_delta`` defaults to the first phase's. ``epochs=0`` writes the same weights with
    the metadata unchanged except for an empty phase. ``metadata`` is added to the record of
    this phase (e.g. the command that ran it). ``schedule="cosine"``: an annealing phase, the
    learning rate decays from ``lr`` to the first phase's ``min_lr_ratio`` of it over all
    ``epochs`` (``patience`` still stops it early; give ``patience=epochs`` to run them all).
    Ctrl-C saves the phase so far (its best model, finished epochs and times;
    ``interrupted: true``) and raises ``KeyboardInterrupt``.
    """
    path = Path(path)
    model, meta = load_checkpoint(path)
    history, cfg_dict = meta.get("history"), meta.get("config")
    if not history or not isinstance(cfg_dict, dict) or "cpu_seconds" not in meta:
        raise CheckpointError(f"{path} records no training history, config or CPU time, so "
                              "it cannot be continued: train it again with `make "
                              "checkpoints` (python -m gffmerge.recipes)")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if schedule not in ("plateau", "cosine"):
        raise ValueError(f"schedule must be plateau or cosine, got {schedule!r}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    first = TrainConfig(**{k: v for k, v in cfg_dict.items() if k in names})
    cfg = dataclasses.replace(
        first, epochs=max(1, epochs), patience=patience, schedule=schedule,
        lr=float(lr if lr is not None else history[-1]["lr"]), lr_patience=lr_patience,
        min_delta=first.min_delta if min_delta is None else min_delta,
        max_minutes=max_minutes, warmup_fraction=0.0, validate_init=True)
    metrics = dict(meta.get("metrics") or {})
    phases = list(meta.get("phases") or [
        _phase(cfg_dict, metrics, meta.get("wall_seconds", 0.0), meta["cpu_seconds"],
               command=meta.get("command"))])
    n1, wall1, cpu1 = len(history), float(meta.get("wall_seconds", 0.0)), meta["cpu_seconds"]
    if epochs == 0:
        result = TrainResult(model, [], {**metrics, "epochs_run": 0, "best_epoch": -1,
                                         "stopped_by": "epochs"}, 0.0)
    else:
        result = train(cfg, model=model, progress=progress, raise_on_interrupt=False)
    phases.append(_phase(recorded_config(cfg, result.model) if epochs else {}, result.metrics,
                         result.seconds, result.cpu_seconds, start_lr=cfg.lr,
                         start_epoch=n1, **_plain(metadata or {})))
    local_best = result.metrics["best_epoch"]
    rows = [{**row, "epoch": n1 + row["epoch"], "seconds": wall1 + row["seconds"],
             "phase": len(phases)} for row in result.history]
    combined = {**result.metrics, "epochs_run": n1 + len(rows),
                "best_epoch": n1 + local_best if local_best >= 0 else metrics.get("best_epoch"),
                "stopped_by": result.metrics.get("stopped_by", metrics.get("stopped_by")),
                "monitor": cfg.monitor}
    for key in ("start_val_loss", "best_val_loss"):
        combined.pop(key, None)
    if local_best < 0:
        combined["test"], combined["val"] = metrics.get("test"), metrics.get("val")
    new_meta = {**meta, "history": list(history) + rows, "metrics": _plain(combined),
                "wall_seconds": wall1 + result.seconds, "cpu_seconds": cpu1 + result.cpu_seconds,
                "phases": _plain(phases), "interrupted": result.interrupted}
    save_checkpoint(output or path, result.model, new_meta)
    if result.interrupted:  # the epochs this phase finished are kept, as in a first phase
        raise KeyboardInterrupt(f"training interrupted; the best model so far, with this "
                                f"phase's {len(rows)} finished epochs, saved to {output or path}")
    result.metrics = new_meta["metrics"]
    result.history = new_meta["history"]
    return result
