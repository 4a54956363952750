"""Anchors of the progressive merge's search: the sources' average and the one-shot form.

The progressive search (:mod:`gffmerge.methods.progressive`) scores (ridge, β) points of
the staged merge on validation frames. Anchors are cheaper candidates scored the same way:

* ``average``: every parameter the sources' mean (the limit of an infinite mean-prior
  ridge), with the per-element reference energies refitted when ``energy_refit`` is on
  (forces unchanged);
* ``one-shot``: the closed form with the mean prior on inputs from each source itself, at
  every ridge of ``ridge_grid`` and ``anchor_ridges`` (large ridges, which tend to the
  average) and every β of the search. One-shot statistics depend on no solution, so one
  pass per source gives every point; each point costs one solve and one validation score.

With the anchors among the candidates, the validated default is never worse on its own
validation frames than the average (checked again after the final merge) or the one-shot
points it tried: a model whose staged merge drifts (fine-tunes of a foundation that barely
moved from it, e.g. CHGNet) falls back to them instead of being made worse.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from ..collect.order import LayerOrder
from ..collect.progressive import LayerSums, Source, refit_reference_energies, stage_sums
from ..report import LayerReport
from ..solver import build_model, mean_state_dict
from ..solver.stage import solve_stage

__all__ = ["Anchor", "Run", "average_run", "one_shot_run", "one_shot_sums", "score_anchors"]


@dataclass
class Run:
    """One merged model and what its merge did."""

    model: nn.Module
    layers: list[LayerReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    energy_shift: dict[int, float] = field(default_factory=dict)  # eV by atomic number


@dataclass
class Anchor:
    """One anchor tried and its validation error (``ridge`` None: the average)."""

    kind: str  # "average" or "one-shot"
    ridge: float | None
    beta: float
    val_force_mae_mev_per_a: float
    val_energy_mae_mev_per_atom: float
    seconds: float
    val_force_mae_per_system: list[float] = field(default_factory=list)  # meV/Å, by source


def average_run(models: Sequence[nn.Module], sources: list[Source], *, refit: bool,
                frames: int | None) -> Run:
    """The sources' average (reference energies refitted on the sources' frames if
    ``refit``)."""
    run = Run(build_model(models[0], mean_state_dict(models)).eval())
    if refit:
        run.energy_shift = refit_reference_energies(run.model, sources, frames=frames)
    return run


def one_shot_sums(sources: list[Source], order: LayerOrder, infos: dict, *, tangents: bool,
                  frames: int | None, forward, backend: str) -> list[dict[str, LayerSums]]:
    """Each source's one-shot sums of every reached layer (inputs from the source itself)."""
    return stage_sums(None, sources, list(order.order), infos, calls=order.calls,
                      tangents=tangents, forward=forward, backend=backend, frames=frames)


def one_shot_run(models: Sequence[nn.Module], sources: list[Source], order: LayerOrder,
                 infos: dict, sums: list[dict[str, LayerSums]], opts, *, ridge: float,
                 beta: float, frames: int | None) -> Run:
    """The one-shot closed form at (``ridge``, ``beta``) from precomputed ``sums``, with the
    options' ridge mode, prior and weighting (reference energies refitted if asked)."""
    run = Run(build_model(models[0], mean_state_dict(models)).eval())
    run.layers, run.warnings = solve_stage(run.model, models, list(order.order), infos, sums,
                                           ridge=ridge, beta=beta, weighting=opts.weighting,
                                           ridge_mode=opts.ridge_mode, prior=opts.prior)
    if opts.energy_refit:
        run.energy_shift = refit_reference_energies(run.model, sources, frames=frames)
    return run


def score_anchors(models: Sequence[nn.Module], sources: list[Source], order: LayerOrder,
                  infos: dict, opts, *, betas: Sequence[float], frames: int | None, forward,
                  ridges: Sequence[float],
                  errors: Callable[[nn.Module], tuple[float, float, list[float]]],
                  keep: Callable[[tuple, Run], None]) -> list[Anchor]:
    """Score the average and every one-shot (ridge, β) anchor on ``errors`` (the
    search's validation score: force and energy score, force MAE by source);
    ``keep(key, run)`` receives each run (key ``("average",)``
    or ``("one-shot", ridge, β)``) so the caller can reuse it as the final merge."""
    out = []
    t0 = time.perf_counter()
    run = average_run(models, sources, refit=opts.energy_refit, frames=frames)
    f, e, per = errors(run.model)
    out.append(Anchor("average", None, 0.0, f, e, time.perf_counter() - t0, per))
    keep(("average",), run)
    sums = one_shot_sums(sources, order, infos, tangents=any(b > 0 for b in betas),
                         frames=frames, forward=forward, backend=opts.backend)
    ridges = sorted(set(ridges) | set(opts.anchor_ridges))
    for ridge in ridges:
        for beta in betas:
            t1 = time.perf_counter()
            run = one_shot_run(models, sources, order, infos, sums, opts, ridge=ridge,
                               beta=beta, frames=frames)
            f, e, per = errors(run.model)
            out.append(Anchor("one-shot", ridge, beta, f, e, time.perf_counter() - t1, per))
            keep(("one-shot", ridge, beta), run)
    return out
