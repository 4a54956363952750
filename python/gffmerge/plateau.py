"""The plateau rule of training: keep the best validation epoch, cut the learning rate when
validation stalls, stop when it has stalled for ``patience`` epochs.

A cosine schedule that decays to its floor exactly at the last epoch makes the last epoch the
best one almost by construction, so "best = last" cannot tell a converged run from a cut
one. Under the plateau rule the learning rate is held at its peak (after the warm-up) and
multiplied by ``lr_factor`` after every ``lr_patience`` epochs without improvement (never
below ``min_lr_ratio`` of the peak); the run stops after ``patience`` epochs without
improvement. An epoch improves when its monitored value is below the best so far by more
than ``min_delta`` (relative), so the best epoch of a run stopped by patience lies exactly
``patience`` epochs before its last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Plateau:
    """Tracks the monitored validation value epoch by epoch (lower is better)."""

    patience: int
    min_delta: float = 0.0  # relative: an improvement must beat best * (1 - min_delta)
    lr_patience: int | None = None  # None: the learning rate is never cut
    lr_factor: float = 0.5
    min_lr_ratio: float = 0.01
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    lr_scale: float = 1.0  # multiplies the schedule's learning rate

    def __post_init__(self):
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1 epoch, got {self.patience}")
        if not 0 <= self.min_delta < 1:
            raise ValueError(f"min_delta is relative and must be in [0, 1), got "
                             f"{self.min_delta}")
        if self.lr_patience is not None and self.lr_patience < 1:
            raise ValueError(f"lr_patience must be >= 1 epoch, got {self.lr_patience}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor}")

    def start(self, value: float) -> None:
        """The starting model's value: a candidate to beat (epoch -1), not an epoch."""
        self.best = value

    def step(self, epoch: int, value: float) -> bool:
        """Record one epoch's value; True when it is the new best (keep its weights)."""
        if value < self.best * (1 - self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        if self.lr_patience is not None and self.bad_epochs % self.lr_patience == 0:
            self.lr_scale = max(self.min_lr_ratio, self.lr_scale * self.lr_factor)
        return False

    @property
    def stop(self) -> bool:
        return self.bad_epochs >= self.patience


def plateau_reached(history: list[dict], best_epoch: int, tail: float = 0.2) -> bool:
    """The criterion the shipped plateau checkpoints meet: no best epoch in the last
    ``tail`` fraction of the epochs run (at least one epoch)."""
    n = len(history)
    return n > 0 and 0 <= best_epoch and n - 1 - best_epoch >= max(1, math.ceil(tail * n))
