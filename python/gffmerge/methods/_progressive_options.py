"""The options of the progressive merge and the record of one grid point tried.

Kept beside :mod:`gffmerge.methods.progressive`, which re-exports them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

from ..collect.tangents import DIRECTIONS

RIDGE_GRID = (1e-4, 1e-3, 1e-2)
BETA_GRID = (1.0, 4.0)
ANCHOR_RIDGES = (1e-1, 1.0)
STAGED = ("auto", "grid", "one", "off")
VAL_SCORES = ("per_system", "pooled")


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
    - ``anchors``: when searching, also score the sources' average and the one-shot
      closed form at every ridge of ``ridge_grid`` and ``anchor_ridges`` and every β
      (:mod:`gffmerge.methods._progressive_anchors`: one statistics pass for all), and
      keep the best of everything on validation; the final model is never worse on the
      validation frames than the average.
    - ``staged``: which staged (progressive) points the search tries: ``"grid"`` (the
      coordinate search over ``ridge_grid`` × β), ``"one"`` (one staged merge at the best
      one-shot anchor's ridge and β), ``"off"`` (anchors only), ``"auto"`` (the model's
      ``staged_search`` attribute, ``"one"`` for adapter models, whose forwards cost
      10–100× a gffmerge model's; ``"grid"`` otherwise).
    - ``val_score``: how the sources' validation errors make the one score every
      candidate is ranked by: ``"per_system"`` (the default: the mean over sources of each
      source's force MAE, so each system counts once) or ``"pooled"`` (over all force
      components of all sources, so a system with more atoms per cell or more frames
      weighs more). The merge is asked for one model good on every system, and a cell's
      size says nothing about how much its system matters; with ``"pooled"`` a pair with
      28- and 56-atom cells ranks candidates mostly by the larger one.
    - ``starts``: with the foundation given (``base=``), ``"auto"`` also scores the
      foundation, task arithmetic (one λ for all sources, and one λ per source: each
      source by itself, then a coordinate search), TIES on validation and runs the closed
      form from the best of them too (it begins from it and its ridge shrinks toward it); ``"off"``:
      the mean is the only start. Without a base there is nothing to do.
    - ``return_base``: whether the foundation itself, or one source by itself, may be the
      result when it scores best on validation (``False``: the best *merge* is returned,
      e.g. as the start of a repair, which moves a merge further than the foundation in a
      few epochs; either may still be the closed form's start).
    - ``alternatives``: also hand back (``MergeResult.alternatives``) the best candidate
      of every other family the search scored: the foundation, the best task-vector
      start, the average, and the closed form from each start. A repair then chooses its
      start among them on validation (:func:`gffmerge.repair.repair`, ``starts=``): the
      candidate best on validation is not always the one a few epochs of training move
      furthest. Costs one final merge per closed-form family not merged on the full
      budget during the search.
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
    anchors: bool = True
    anchor_ridges: tuple[float, ...] = ANCHOR_RIDGES
    staged: Literal["auto", "grid", "one", "off"] = "auto"
    val_score: Literal["per_system", "pooled"] = "per_system"
    starts: Literal["auto", "off"] = "auto"
    return_base: bool = True
    alternatives: bool = False

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
        "anchors": "when searching, also score the average and the one-shot closed form "
                   "(ridge_grid + anchor_ridges, every β) and keep the best on validation",
        "anchor_ridges": "extra (large) ridges of the one-shot anchors",
        "staged": "staged points searched: grid, one (at the best anchor), off, or auto "
                  "(one for adapter models, grid otherwise)",
        "val_score": "per_system (mean over systems of each one's validation force MAE) or "
                     "pooled (over all force components: larger cells weigh more)",
        "starts": "with the foundation (base): auto also scores it, task arithmetic (also "
                  "one λ per source, each source by itself included) and TIES and starts "
                  "the closed form from the best of them; off: from the mean only",
        "return_base": "the foundation (or one source) itself may be returned when it scores "
                       "best (false: only merges are returned; it may still start the closed "
                       "form)",
        "alternatives": "also return the best candidate of every other family searched "
                        "(foundation, starts, average, closed forms): starts for a repair",
    }

    def __post_init__(self):
        choices = {"mode": ("progressive", "one-shot"), "ridge_mode": ("relative", "absolute"),
                   "prior": ("mean", "zero"), "weighting": ("pooled", "per_model"),
                   "tangents": ("auto", "on", "off"), "directions": DIRECTIONS,
                   "staged": STAGED, "val_score": VAL_SCORES, "starts": ("auto", "off")}
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
        if not isinstance(self.anchors, bool):
            raise ValueError(f"anchors must be true or false, got {self.anchors!r}")
        for name in ("return_base", "alternatives"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got "
                                 f"{getattr(self, name)!r}")
        if self.staged == "off" and not self.anchors:
            raise ValueError("staged='off' with anchors=false leaves nothing to merge; "
                             "turn anchors on or choose staged='grid' or 'one'")
        for name in ("ridge_grid", "beta_grid", "anchor_ridges"):
            raw = getattr(self, name)
            try:
                grid = tuple(float(g) for g in ((raw,) if isinstance(raw, int | float | str)
                                                 else raw))
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a list of numbers >= 0, got {raw!r}") from None
            if (not grid and name != "anchor_ridges") or any(not (g >= 0) for g in grid):
                raise ValueError(f"{name} must be a non-empty tuple of numbers >= 0, "
                                 f"got {grid!r}")
            object.__setattr__(self, name, grid)

    def staged_points(self, model) -> str:
        """``staged`` with ``"auto"`` resolved for ``model`` (see the class docstring)."""
        if self.staged != "auto":
            return self.staged
        return getattr(model, "staged_search", "grid")

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
    val_force_mae_per_system: list[float] = field(default_factory=list)  # meV/Å, by source
    start: str = "mean"  # what the staged merge began from (a start's kind, or the mean)
