"""The options of the progressive merge and the record of one grid point tried.

Kept beside :mod:`gffmerge.methods.progressive`, which re-exports them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

from ..collect.tangents import DIRECTIONS

RIDGE_GRID = (1e-4, 1e-3, 1e-2)
BETA_GRID = (1.0, 4.0)


@dataclass(frozen=True)
class ProgressiveOptions:
    """Options of :func:`progressive_merge`.

    - ``mode``: ``"progressive"`` (inputs from the merged-so-far model) or ``"one-shot"``
      (inputs from each source itself; with tangent rows this is the force-aware one-shot).
    - ``ridge``: relative (or absolute) λ, or ``"auto"`` (chosen on validation data from
      ``ridge_grid``).
    - ``ridge_mode``: ``"relative"`` (λ · tr(G)/dim) or ``"absolute"``.
    - ``prior``: ``"mean"`` (shrink toward the sources' mean) or ``"zero"``.
    - ``weighting``: ``"pooled"`` (each source by its row count) or ``"per_model"`` (each
      source's sums divided by its rows).
    - ``tangents``: ``"auto"`` (tangent rows for conservative models, i.e. forces = −∂E/∂r;
      when searching, both with and without), ``"on"``, ``"off"``.
    - ``beta``: weight of the tangent rows (``w = β tr(Gₓ)/tr(Gₜ)``), or ``"auto"``
      (chosen from ``beta_grid``).
    - ``directions``: ``"random"`` unit displacements or ``"force"`` (the reference-force
      direction; one per frame).
    - ``draws``: random directions per frame (one forward-mode pass each).
    - ``frames``: frames per source for every stage (None: all the data given).
    - ``search_frames`` / ``val_frames``: frames per source for each grid point's merge and
      for its validation score.
    - ``energy_refit``: after the layers, shift the per-element reference energies
      (``atomic_energies``) by the least-squares fit of the sources' energies minus the
      merged model's on the sources' frames (forces are unchanged; needs a
      :class:`~gffmerge.models.base.ForceField`).
    - ``norms``: also fit the scale and shift of affine LayerNorms, per feature, on the
      normalised merged inputs against the sources' LayerNorm outputs (else: the mean).
    - ``seed``: directions and validation subsets.
    """

    mode: Literal["progressive", "one-shot"] = "progressive"
    ridge: float | Literal["auto"] = "auto"
    ridge_mode: Literal["relative", "absolute"] = "relative"
    prior: Literal["mean", "zero"] = "mean"
    weighting: Literal["pooled", "per_model"] = "pooled"
    tangents: Literal["auto", "on", "off"] = "auto"
    beta: float | Literal["auto"] = "auto"
    directions: Literal["random", "force"] = "random"
    draws: int = 1
    frames: int | None = 200
    search_frames: int | None = 64
    val_frames: int | None = 100
    ridge_grid: tuple[float, ...] = RIDGE_GRID
    beta_grid: tuple[float, ...] = BETA_GRID
    energy_refit: bool = True
    norms: bool = False
    seed: int = 0
    backend: str = "auto"

    __option_help__ = {
        "mode": "progressive (inputs from the partly merged model) or one-shot",
        "ridge": "relative λ (λ·tr(G)/dim), or auto: chosen on validation frames",
        "ridge_mode": "relative (to tr(G)/dim) or absolute",
        "prior": "mean (shrink toward the sources' mean) or zero",
        "weighting": "pooled (row counts) or per_model (each source's mean sums)",
        "tangents": "tangent rows (derivatives along displacements): auto = for conservative "
                    "models, chosen on validation; on; off",
        "beta": "weight of the tangent rows against the value rows, or auto",
        "directions": "random unit displacements or the reference-force direction",
        "draws": "displacement directions per frame (one forward-mode pass each)",
        "frames": "frames per source for the statistics of every stage (null: all)",
        "search_frames": "frames per source for each candidate of the automatic search",
        "val_frames": "validation frames per source that score each candidate",
        "ridge_grid": "the ridges tried by ridge=auto",
        "beta_grid": "the β tried by beta=auto (0 = no tangent rows is always tried)",
        "energy_refit": "refit the per-element reference energies after the layers",
        "norms": "also fit the scale and shift of affine LayerNorms",
        "seed": "directions and validation subsets",
        "backend": "Gram/cross accumulation: auto, ext (compiled) or torch",
    }

    def __post_init__(self):
        choices = {"mode": ("progressive", "one-shot"), "ridge_mode": ("relative", "absolute"),
                   "prior": ("mean", "zero"), "weighting": ("pooled", "per_model"),
                   "tangents": ("auto", "on", "off"), "directions": DIRECTIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; choose one of "
                                 f"{', '.join(map(repr, allowed))}")
        for name in ("ridge", "beta"):  # the CLI and YAML hand numbers like 1e-2 as text
            v = getattr(self, name)
            if isinstance(v, str) and v != "auto":
                try:
                    object.__setattr__(self, name, float(v))
                except ValueError:
                    pass
            v = getattr(self, name)
            if v != "auto" and not (isinstance(v, int | float) and v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a number >= 0 or 'auto', got {v!r}")
        if not isinstance(self.draws, int) or self.draws < 1:
            raise ValueError(f"draws must be a positive number of directions per frame, "
                             f"got {self.draws!r}")
        for name in ("frames", "search_frames", "val_frames"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive number of frames or None, "
                                 f"got {v!r}")
        for name in ("ridge_grid", "beta_grid"):
            raw = getattr(self, name)
            try:
                grid = tuple(float(g) for g in ((raw,) if isinstance(raw, int | float | str)
                                                 else raw))
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a list of numbers >= 0, got {raw!r}") from None
            if not grid or any(not (g >= 0) for g in grid):
                raise ValueError(f"{name} must be a non-empty tuple of numbers >= 0, "
                                 f"got {grid!r}")
            object.__setattr__(self, name, grid)

    def candidates(self, conservative: bool) -> list[tuple[float, float]]:
        """The (ridge, β) points to try; a single point means no search."""
        ridges = list(self.ridge_grid) if self.ridge == "auto" else [float(self.ridge)]
        betas_on = list(self.beta_grid) if self.beta == "auto" else [float(self.beta)]
        if self.tangents == "off" or (self.tangents == "auto" and not conservative):
            betas = [0.0]
        elif self.tangents == "on":
            betas = betas_on
        elif self.ridge == "auto" or self.beta == "auto":  # auto, conservative, searching
            betas = [0.0, *betas_on]
        else:
            betas = betas_on
        return [(r, b) for r, b in itertools.product(ridges, betas)]


@dataclass
class GridPoint:
    """One hyperparameter point tried on the reduced budget and its validation error."""

    ridge: float
    beta: float
    val_force_mae_mev_per_a: float
    val_energy_mae_mev_per_atom: float
    seconds: float
