"""Anchors of the progressive merge's search: the average, task-vector starts, one-shot forms.

The progressive search (:mod:`gffmerge.methods.progressive`) scores (ridge, β) points of
the staged merge on validation frames. Anchors are cheaper candidates scored the same way:

* ``average``: every parameter the sources' mean (the limit of an infinite mean-prior
  ridge), with the per-element reference energies refitted when ``energy_refit`` is on
  (forces unchanged);
* ``one-shot``: the closed form with the mean prior on inputs from each source itself, at
  every ridge of ``ridge_grid`` and ``anchor_ridges`` (large ridges, which tend to the
  average) and every β of the search. One-shot statistics depend on no solution, so one
  pass per source gives every point; each point costs one solve and one validation score.
* with the foundation the sources were fine-tuned from (``base``), *starts*: the
  foundation itself, task arithmetic and TIES (each on a small grid), task arithmetic with
  one λ per source (each source by itself, then a coordinate search), scored as they are;
  the best of them becomes a second start of the closed form: the merge begins from it
  (the parameters no layer solve reaches keep its values) and its ridge shrinks toward it
  instead of toward the mean, so large ridges tend to that start. Fine-tunes that forget
  each other's systems (a foundation better on both than either fine-tune) average into a
  model worse than the foundation; starting from a task-vector merge keeps what the
  foundation knew. The one-shot points of the second start reuse the same sums.

With the anchors among the candidates, the validated default is never worse on its own
validation frames than the average (checked again after the final merge) or the one-shot
points it tried: a model whose staged merge drifts (fine-tunes of a foundation that barely
moved from it, e.g. CHGNet) falls back to them instead of being made worse.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..collect.order import LayerOrder
from ..collect.progressive import LayerSums, Source, refit_reference_energies, stage_sums
from ..report import LayerReport
from ..solver import build_model, mean_state_dict
from ..solver.stage import solve_stage
from ._task_vectors import apply_task_vector, task_vectors
from .ties import elect_and_merge, trim

__all__ = ["Anchor", "Run", "average_run", "one_shot_run", "one_shot_sums", "score_anchors",
           "score_starts", "start_model", "weighted_task_arithmetic"]

TA_LAMS = (0.3, 0.8, 1.0)  # task arithmetic λ (λ = 1/K is the average, λ = 0 the base)
TIES_LAMS = (0.5, 0.8, 1.0, 1.2)  # TIES λ at the middle density, then the densities
TIES_DENSITIES = (0.1, 0.2, 0.4)
WTA_LAMS = (0.0, 0.3, 0.6, 1.0)  # per-source λ_k of weighted task arithmetic
WTA_ROUNDS = 2  # coordinate-search rounds over the sources' λ_k


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

    kind: str  # "average", "one-shot" or a start: "base", "task_arithmetic", "ties",
    #            "source" (one source by itself), "weighted_task_arithmetic"
    ridge: float | None
    beta: float
    val_force_mae_mev_per_a: float
    val_energy_mae_mev_per_atom: float
    seconds: float
    val_force_mae_per_system: list[float] = field(default_factory=list)  # meV/Å, by source
    start: str = "mean"  # what a one-shot point starts from and shrinks toward
    params: dict = field(default_factory=dict)  # a start's options (λ, density)

    @property
    def key(self) -> tuple:
        """The candidate's key in the search: ``("average",)``, ``("start", kind)``, or
        ``("one-shot", ridge, β, start)``."""
        if self.kind == "average":
            return ("average",)
        if self.kind == "one-shot":
            return ("one-shot", self.ridge, self.beta, self.start)
        return ("start", self.kind)


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


def start_model(models: Sequence[nn.Module], start: nn.Module | None) -> nn.Module:
    """A fresh copy of ``start`` (None: of the sources' mean), in eval mode."""
    state = mean_state_dict(models) if start is None else start.state_dict()
    return build_model(models[0], state).eval()


def one_shot_run(models: Sequence[nn.Module], sources: list[Source], order: LayerOrder,
                 infos: dict, sums: list[dict[str, LayerSums]], opts, *, ridge: float,
                 beta: float, frames: int | None, start: nn.Module | None = None) -> Run:
    """The one-shot closed form at (``ridge``, ``beta``) from precomputed ``sums``, with the
    options' ridge mode, prior and weighting, beginning from ``start`` (None: the mean;
    reference energies refitted if asked)."""
    run = Run(start_model(models, start))
    run.layers, run.warnings = solve_stage(run.model, models, list(order.order), infos, sums,
                                           ridge=ridge, beta=beta, weighting=opts.weighting,
                                           ridge_mode=opts.ridge_mode, prior=opts.prior,
                                           start=start)
    if opts.energy_refit:
        run.energy_shift = refit_reference_energies(run.model, sources, frames=frames)
    return run


Errors = Callable[[nn.Module], tuple[float, float, list[float]]]


def score_starts(models: Sequence[nn.Module], base: nn.Module, errors: Errors
                 ) -> tuple[list[Anchor], dict[str, nn.Module]]:
    """Score the task-vector starts on ``errors``: the base, task arithmetic at
    :data:`TA_LAMS`, TIES at :data:`TIES_LAMS` (middle density), then at the other
    :data:`TIES_DENSITIES` (best λ); return every start tried (the best of each kind's
    grid under its kind) and the model of each kind's best point."""
    theta0, tau = task_vectors(models, base)
    tried: list[Anchor] = []
    best: dict[str, tuple[float, nn.Module]] = {}

    def score(kind: str, model: nn.Module, **params) -> float:
        t0 = time.perf_counter()
        model.eval()
        f, e, per = errors(model)
        tried.append(Anchor(kind, None, 0.0, f, e, time.perf_counter() - t0, per,
                            params=params))
        if kind not in best or f < best[kind][0]:
            best[kind] = (f, model)
        return f

    score("base", build_model(models[0], base.state_dict()))
    summed = {k: t.sum(0) for k, t in tau.items()}
    for lam in TA_LAMS:
        score("task_arithmetic", apply_task_vector(models, theta0, summed, lam), lam=lam)
    merged = {}

    def ties(density: float, lam: float) -> float:
        if density not in merged:
            merged[density] = {k: elect_and_merge(trim(t, density)) for k, t in tau.items()}
        return score("ties", apply_task_vector(models, theta0, merged[density], lam),
                     density=density, lam=lam)
    mid = TIES_DENSITIES[len(TIES_DENSITIES) // 2]
    lam = min(TIES_LAMS, key=lambda v: ties(mid, v))
    for density in TIES_DENSITIES:
        if density != mid:
            ties(density, lam)
    weighted_task_arithmetic(models, theta0, tau, score, {
        (a.params["lam"],) * len(models): a.val_force_mae_mev_per_a
        for a in tried if a.kind == "task_arithmetic"})
    return tried, {kind: model for kind, (_, model) in best.items()}


def weighted_task_arithmetic(models: Sequence[nn.Module], theta0: dict, tau: dict,
                             score: Callable[..., float],
                             known: dict[tuple[float, ...], float]) -> None:
    """Score ``θ₀ + Σ_k λ_k τ_k`` with one λ per source (kind
    ``"weighted_task_arithmetic"``): each source by itself first (λ_k = 1, the others 0;
    kind ``"source"``, which ``return_base=False`` keeps from being returned like the
    foundation), then a coordinate search over :data:`WTA_LAMS` (:data:`WTA_ROUNDS`
    rounds) from the best of those and of ``known`` (uniform λ already scored as task
    arithmetic). Sources that forget each other's systems unequally (one fine-tune better
    on both than the other, or than any average) are found here: a single source is a
    candidate like the foundation."""
    k_models = len(models)
    seen = dict(known)

    def at(lams: tuple[float, ...]) -> float:
        if not any(lams):  # the foundation itself, scored as such
            return math.inf
        if lams not in seen:
            combo = {}
            for key, t in tau.items():
                weights = torch.tensor(lams, dtype=t.dtype, device=t.device)
                combo[key] = torch.tensordot(weights, t, dims=1)
            one = sorted(lams) == [0.0] * (k_models - 1) + [1.0]
            seen[lams] = score("source" if one else "weighted_task_arithmetic",
                               apply_task_vector(models, theta0, combo, 1.0), lams=list(lams))
        return seen[lams]

    for k in range(k_models):
        at(tuple(1.0 if j == k else 0.0 for j in range(k_models)))
    current = min(seen, key=seen.get)
    for _ in range(WTA_ROUNDS):
        moved = False
        for k in range(k_models):
            for v in WTA_LAMS:
                cand = current[:k] + (v,) + current[k + 1:]
                if at(cand) < seen[current]:
                    current, moved = cand, True
        if not moved:
            break


def score_anchors(models: Sequence[nn.Module], sources: list[Source], order: LayerOrder,
                  infos: dict, opts, *, betas: Sequence[float], frames: int | None, forward,
                  ridges: Sequence[float], errors: Errors,
                  keep: Callable[[tuple, Run], None],
                  base: nn.Module | None = None
                  ) -> tuple[list[Anchor], dict[str, nn.Module | None], dict[str, nn.Module]]:
    """Score the average, the starts (with a ``base``) and every one-shot (ridge, β)
    anchor from the mean and from the best start on ``errors`` (the search's validation
    score: force and energy score, force MAE by source); ``keep(key, run)`` receives each
    run (key :attr:`Anchor.key`) so the caller can reuse it as the final merge. Returns
    the anchors, the starts of the closed form by name (``"mean"``: None, and the best
    start's kind) and the best model of every start kind tried."""
    out = []
    t0 = time.perf_counter()
    run = average_run(models, sources, refit=opts.energy_refit, frames=frames)
    f, e, per = errors(run.model)
    out.append(Anchor("average", None, 0.0, f, e, time.perf_counter() - t0, per))
    keep(("average",), run)
    starts: dict[str, nn.Module | None] = {"mean": None}
    models_by_kind: dict[str, nn.Module] = {}
    if base is not None:
        tried, models_by_kind = score_starts(models, base, errors)
        out += tried
        kind = min(models_by_kind,
                   key=lambda k: min(a.val_force_mae_mev_per_a for a in tried if a.kind == k))
        starts[kind] = models_by_kind[kind]
    sums = one_shot_sums(sources, order, infos, tangents=any(b > 0 for b in betas),
                         frames=frames, forward=forward, backend=opts.backend)
    ridges = sorted(set(ridges) | set(opts.anchor_ridges))
    for name, start in starts.items():
        for ridge in ridges:
            for beta in betas:
                t1 = time.perf_counter()
                run = one_shot_run(models, sources, order, infos, sums, opts, ridge=ridge,
                                   beta=beta, frames=frames, start=start)
                f, e, per = errors(run.model)
                a = Anchor("one-shot", ridge, beta, f, e, time.perf_counter() - t1, per,
                           start=name)
                out.append(a)
                keep(a.key, run)
    return out, starts, models_by_kind
