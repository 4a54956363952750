"""Progressive, force-aware closed-form merge (RegMean++-style inputs, tangent rows).

The one-shot closed form (:mod:`gffmerge.methods.gffmerge`) fits every layer on inputs
produced by each *source* model, but the merged model feeds each layer with inputs from
*merged* earlier layers. The progressive merge solves the layers stage by stage in forward
order (:mod:`gffmerge.collect.order`): for stage s, the model merged so far runs on each
source k's own frames and gives the layer inputs ``x``; source k's own outputs ``y`` of
the same layers on the same batch are the targets (:mod:`gffmerge.collect.progressive`).
Per layer, with ``x̃ = [x, 1]`` for layers with a bias, pooled over the sources,

    G = Σ_k Σ x̃ x̃ᵀ + w Σ_k Σ ẋ ẋᵀ,     C = Σ_k Σ x̃ yᵀ + w Σ_k Σ ẋ ẏᵀ,
    (G + λI) Θ = C + λ Θ̄,               λ = ridge · tr(G) / dim  (relative),

where ``Θ̄`` is the sources' mean ``[Wᵀ; bᵀ]`` and the tangent rows ``ẋ, ẏ`` (derivatives
along one displacement direction per frame, :mod:`gffmerge.collect.tangents`) make the
merged layer match derivatives as well as values: forces of conservative models are
derivatives. ``w = β · tr(Gₓ)/tr(Gₜ)`` makes β a scale-free weight of the derivative
rows against the value rows. Every other parameter (embeddings, LayerNorm) is the mean.

Cost: ``stages`` passes of the merged model per source (each stops after the stage's last
layer) plus one pass of each source for the targets; with tangents every pass is a
forward-mode pass on the energy path (about 2–3× a plain forward).

Hyperparameters from data (``ridge="auto"``, ``beta="auto"``, ``tangents="auto"`` on a
conservative model with either of them automatic): points of the grid (``ridge_grid`` ×
tangent weights, ``0`` meaning no tangent rows) are merged on a reduced budget of
``search_frames`` frames per source and scored by the merged model's force MAE on the
sources' own validation frames (``val_frames`` per source; ``val_score``: by default the
mean over sources of each source's force MAE, so every system counts once; or pooled
over force components); the best point is then merged with the full ``frames`` budget.
With ``anchors`` (the default) the search also scores the sources' average and the
one-shot closed form at every ridge (plus the large ``anchor_ridges``) and β, from one
shared statistics pass (:mod:`gffmerge.methods._progressive_anchors`), and keeps the best
candidate of all; given the foundation (``base``), it also scores the foundation, task
arithmetic and TIES and runs the closed form (one-shot and staged) from the best of them
as well. A final model that scores worse on validation than the average or the best of
those starts is replaced by it (reported). ``staged`` sets how many staged points are tried (a
grid, or one at the best anchor for adapter models, whose forwards are costly). When both
the ridge and β are searched, the search is coordinate-wise (every β at the middle ridge,
then every other ridge at the best β: ``|β| + |ridge| − 1`` merges instead of ``|β| ·
|ridge|``). Stage statistics depend on the earlier stages' solutions, so they cannot be
shared between grid points; the reduced budget is what keeps the search cheap.
Test data is never used.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from torch import nn

from ..architecture import check_same_architecture
from ..collect.batches import default_forward
from ..collect.holdout import agreement_error, graphs, hold_out
from ..collect.order import LayerOrder, layer_order, mergeable_layers
from ..collect.progressive import (
    Source,
    derives_targets,
    prepare_sources,
    refit_reference_energies,
    stage_sums,
)
from ..collect.tangents import is_conservative
from ..evaluate import combine_errors, system_errors
from ..report import MergeReport, MergeResult
from ..solver import build_model, mean_state_dict
from ..solver.stage import solve_stage
from ._progressive_anchors import (
    Anchor,
    Run,
    average_run,
    one_shot_run,
    one_shot_sums,
    score_anchors,
    start_model,
)
from ._progressive_options import BETA_GRID, RIDGE_GRID, GridPoint, ProgressiveOptions
from .registry import Needs, register

__all__ = ["BETA_GRID", "RIDGE_GRID", "GridPoint", "ProgressiveOptions", "progressive",
           "progressive_merge"]

def _merge_once(models: Sequence[nn.Module], sources: list[Source], order: LayerOrder,
                infos: dict, opts: ProgressiveOptions, *, ridge: float, beta: float,
                frames: int | None, forward, progress: bool, desc: str,
                start: nn.Module | None = None) -> Run:
    from tqdm.auto import tqdm

    merged = start_model(models, start)
    run = Run(merged)
    tangents = beta > 0
    if opts.mode == "one-shot":
        stages = [tuple(order.order)]
    else:
        stages = list(order.stages)
    for stage in tqdm(stages, desc=desc, unit="stage", leave=False, disable=not progress):
        per_source = stage_sums(None if opts.mode == "one-shot" else merged, sources,
                                list(stage), infos, calls=order.calls, tangents=tangents,
                                forward=forward, backend=opts.backend, frames=frames)
        reports, warns = solve_stage(merged, models, stage, infos, per_source, ridge=ridge,
                                     beta=beta, weighting=opts.weighting,
                                     ridge_mode=opts.ridge_mode, prior=opts.prior,
                                     start=start)
        run.layers += reports
        run.warnings += warns
    if opts.energy_refit:
        run.energy_shift = refit_reference_energies(merged, sources, frames=frames)
    return run


def _val_sets(val_data: Sequence[Any], n: int | None, seed: int) -> list[Any]:
    out = []
    for ds in val_data:
        if n is not None and len(ds) > n:
            ds = ds.subset(n, seed=seed)
        out.append(ds)
    return out


def progressive_merge(models: Sequence[nn.Module], data: Sequence[Iterable[Any]],
                      options: ProgressiveOptions | None = None, *,
                      val_data: Sequence[Any] | None = None, progress: bool = True,
                      labels: Sequence[str] | None = None, forward=None,
                      layers: Iterable[str] | None = None, base: nn.Module | None = None,
                      **kwargs) -> MergeResult:
    """Merge ``models`` progressively (see the module docstring).

    ``data[k]`` iterates source k's own training batches (e.g.
    ``dataset.for_system(s).subset(n).batches_for(model, 8)``); up to ``options.frames``
    graphs of it are used. ``val_data[k]`` is source k's validation
    :class:`~gffmerge.data.AtomsDataset`, needed when anything is ``"auto"``. Keyword
    arguments override fields of ``options``. Layers the forward never reaches keep the
    sources' mean (or the chosen start's values). ``base``: the foundation the sources
    were fine-tuned from; with it (and ``starts="auto"``) the search also scores the
    foundation, task arithmetic (also one λ per source, each source by itself included)
    and TIES, and the closed form from the best of them
    (:mod:`gffmerge.methods._progressive_anchors`). The report's ``options`` also records
    the stages, the chosen point, and the validation error of every grid point.
    """
    t_start, c_start = time.perf_counter(), time.process_time()
    opts = options or ProgressiveOptions()
    if kwargs:
        opts = ProgressiveOptions(**{**asdict(opts), **kwargs})
    models = list(models)
    data = list(data)
    if len(data) != len(models):
        raise ValueError(f"got {len(models)} models but {len(data)} data sources; pass one "
                         "batch iterable per model (its own training frames)")
    check_same_architecture(models)
    forward = forward or default_forward
    conservative = is_conservative(models[0])
    grid = opts.candidates(conservative)
    search = len(grid) > 1
    holdout = None
    if search and val_data is None:  # score on held-out frames of each source's own data
        data, holdout = zip(*(hold_out(d, opts.frames, opts.val_frames) for d in data))
        data = list(data)
        if not all(holdout):
            raise ValueError("ridge/beta/tangents='auto' picks them on validation frames, "
                             "and some source's data has too few batches to hold any out: "
                             "pass val_data=[each source's validation dataset], more data, "
                             "or fix them, e.g. ridge=1e-2, beta=1.0")
    if val_data is not None and len(val_data) != len(models):
        raise ValueError(f"val_data has {len(val_data)} entries for {len(models)} models; "
                         "pass one validation dataset per model")
    infos = mergeable_layers(models[0], layers, norms=opts.norms)
    need_tangents = any(b > 0 for _, b in grid)

    t0, c0 = time.perf_counter(), time.process_time()
    sources = prepare_sources(models, data, frames=opts.frames, names=list(infos),
                              tangents=need_tangents, direction=opts.directions,
                              draws=opts.draws,
                              seed=opts.seed, labels=labels, forward=forward,
                              device=next(models[0].parameters()).device,
                              # one-shot sums record the targets in their own pass
                              outputs=opts.mode == "progressive")
    targets_s, targets_c = time.perf_counter() - t0, time.process_time() - c0
    probe = build_model(models[0], mean_state_dict(models))
    order = layer_order(probe, sources[0].batches[0], forward=forward, layers=layers,
                        seed=opts.seed, norms=opts.norms)
    order_s = time.perf_counter() - t0 - targets_s

    points: list[GridPoint] = []
    val_sets = _val_sets(val_data, opts.val_frames, opts.seed) if val_data is not None else None

    def errors(model: nn.Module) -> tuple[float, float, list[float]]:
        """(force score, energy score, force MAE by source) under ``opts.val_score``."""
        if val_sets is not None:
            rows = system_errors(model, val_sets)
            return (*combine_errors(rows, opts.val_score),
                    [r["force_mae_mev_per_a"] for r in rows])
        return (agreement_error(model, models, holdout, forward, how=opts.val_score),
                math.nan, [])
    t_search, c_search = time.perf_counter(), time.process_time()
    reduced = opts.search_frames
    if opts.frames is not None and reduced is not None:
        reduced = min(reduced, opts.frames)
    full = reduced is None or (opts.frames is not None and reduced >= opts.frames)
    runs: dict[tuple, Run] = {}  # candidates merged on the full budget, by key
    use_base = base is not None and opts.starts == "auto"
    starts: dict[str, nn.Module | None] = {"mean": None}  # starts of the closed form
    start_models: dict[str, nn.Module] = {}  # the best model of every start kind scored

    def keep(key: tuple, run: Run) -> None:
        if full:
            runs[key] = run

    def score(ridge: float, beta: float, start: str = "mean") -> GridPoint:
        t1 = time.perf_counter()
        run = _merge_once(models, sources, order, infos, opts, ridge=ridge, beta=beta,
                          frames=reduced, forward=forward, progress=progress,
                          desc=f"search ridge {ridge:g} beta {beta:g}", start=starts[start])
        f, e, per = errors(run.model)
        keep(("progressive", ridge, beta, start), run)
        point = GridPoint(ridge, beta, f, e, time.perf_counter() - t1, per, start)
        points.append(point)
        return point

    anchors: list[Anchor] = []
    best: tuple = ("progressive", *grid[0], "mean")
    staged = opts.staged_points(models[0]) if search else "grid"
    if search:
        ridges = sorted({r for r, _ in grid})
        betas = sorted({b for _, b in grid})
        if opts.anchors:
            anchors, starts, start_models = score_anchors(
                models, sources, order, infos, opts, ridges=ridges, betas=betas,
                frames=reduced, forward=forward, errors=errors, keep=keep,
                base=base if use_base else None)
        shots = [a for a in anchors if a.kind == "one-shot" and a.ridge in ridges]
        # the staged points begin where the one-shot closed form did best
        start = min(shots, key=lambda a: a.val_force_mae_mev_per_a).start if shots else "mean"
        if staged == "one":  # one staged merge, at the best one-shot point
            if shots:
                a = min(shots, key=lambda a: a.val_force_mae_mev_per_a)
                score(a.ridge, a.beta, a.start)
            else:
                score(*grid[len(grid) // 2])
        elif staged == "grid" and len(ridges) > 1 and len(betas) > 1:
            # coordinate search: β (and tangents on/off) at the middle ridge, then the ridge
            mid = ridges[len(ridges) // 2]
            b_best = min((score(mid, b, start) for b in betas),
                         key=lambda p: p.val_force_mae_mev_per_a).beta
            for r in ridges:
                if r != mid:
                    score(r, b_best, start)
        elif staged == "grid":
            for ridge, beta in grid:
                score(ridge, beta, start)
        cands = [(("progressive", p.ridge, p.beta, p.start), p.val_force_mae_mev_per_a)
                 for p in points]
        # return_base=False: the foundation (or one source by itself) may start the closed
        # form but is not returned
        cands += [(a.key, a.val_force_mae_mev_per_a) for a in anchors
                  if opts.return_base or a.key not in UNMERGED]
        best = min(cands, key=lambda c: c[1])[0]
    search_s, search_c = time.perf_counter() - t_search, time.process_time() - c_search
    t_final, c_final = time.perf_counter(), time.process_time()

    def final(key: tuple) -> Run:
        if key[0] == "average":
            return average_run(models, sources, refit=opts.energy_refit, frames=opts.frames)
        if key[0] == "start":  # a task-vector start as it is, reference energies refitted
            run = Run(start_model(models, start_models[key[1]]))
            if opts.energy_refit:
                run.energy_shift = refit_reference_energies(run.model, sources,
                                                            frames=opts.frames)
            return run
        if key[0] == "one-shot":
            sums = one_shot_sums(sources, order, infos, tangents=key[2] > 0,
                                 frames=opts.frames, forward=forward, backend=opts.backend)
            return one_shot_run(models, sources, order, infos, sums, opts, ridge=key[1],
                                beta=key[2], frames=opts.frames, start=starts[key[3]])
        return _merge_once(models, sources, order, infos, opts, ridge=key[1], beta=key[2],
                           frames=opts.frames, forward=forward, progress=progress,
                           desc="merge", start=starts[key[3]])
    run = runs.get(best) or final(best)
    val = errors(run.model) if (val_sets is not None or holdout is not None) else None
    fallback = None
    # the average and the starts depend on no frame budget: their search scores stand
    fixed = [a for a in anchors if a.kind != "one-shot"
             and (a.kind == "average" or a.key[1] in start_models)
             and (opts.return_base or a.key not in UNMERGED)]
    safe = min(fixed, key=lambda a: a.val_force_mae_mev_per_a) if fixed else None
    if safe is not None and best != safe.key and val[0] > safe.val_force_mae_mev_per_a:
        name = "the average" if safe.kind == "average" else f"the {safe.kind} start"
        fallback = (f"the pick {best} merged on the full budget scored "
                    f"{val[0]:.4g} on validation ({opts.val_score}), worse than "
                    f"{name}'s {safe.val_force_mae_mev_per_a:.4g}: {name} is returned")
        best = safe.key
        run = runs.get(best) or final(best)
        run.warnings = [*run.warnings, fallback]
        val = errors(run.model)
    if best == ("start", "base"):
        run.warnings = [*run.warnings, "the foundation (base) itself scored best on validation "
                        f"({val[0]:.4g}, {opts.val_score}) of every merge tried: it is "
                        "returned unchanged (reference energies refitted); no merge of these "
                        "fine-tunes kept more of their systems than it lost"]
    if best == ("start", "source"):
        k = min((a for a in anchors if a.key == best),
                key=lambda a: a.val_force_mae_mev_per_a).params["lams"].index(1.0)
        who = f"source {k}" + (f" ({labels[k]})" if labels else "")
        run.warnings = [*run.warnings, f"{who} by itself scored best on validation "
                        f"({val[0]:.4g}, {opts.val_score}) of every merge tried: it is "
                        "returned (its parameters unchanged, reference energies refitted); "
                        "no merge of these fine-tunes did better than it (return_base=False "
                        "returns the best merge instead)"]
    alternatives: dict[str, nn.Module] = {}
    alt_record: dict[str, dict] = {}
    t_alt = time.perf_counter()
    if opts.alternatives and search:
        scored = [(("progressive", p.ridge, p.beta, p.start), p.val_force_mae_mev_per_a)
                  for p in points]
        scored += [(a.key, a.val_force_mae_mev_per_a) for a in anchors
                   if a.key[0] != "start" or a.key[1] in start_models]
        for label, (key, val_score) in _family_bests(scored).items():
            if label == _family(best):
                continue
            alt = runs.get(key) or final(key)
            alternatives[label] = alt.model
            alt_record[label] = {"key": list(key), "val_force_mae_mev_per_a": val_score}
    alt_s = time.perf_counter() - t_alt
    final_s, final_c = time.perf_counter() - t_final - alt_s, time.process_time() - c_final

    modules = dict(models[0].named_modules())
    reached = [modules[n] for n in order.order]
    report = MergeReport(method=f"progressive ({opts.mode})", options=asdict(opts),
                         num_models=len(models), layers=run.layers, warnings=run.warnings)
    report.note_unsolved(infos, order.unreached)
    if order.back:
        report.warnings.append(f"{len(order.back)} dependencies point against call order "
                               "(a layer called again later) and were ignored: "
                               + ", ".join(f"{a}→{b}" for a, b in order.back[:5]))
    solved = {lr.name for lr in run.layers if lr.solved}
    report.averaged = [k for k in run.model.state_dict()
                       if k.rsplit(".", 1)[0] not in solved]
    report.options.update(
        # one-shot targets (anchors, one-shot mode) taken from the Grams and the layers'
        # weights where that is exact (collect.progressive, cross="auto"), else measured
        one_shot_targets={"derived": sum(map(derives_targets, reached)),
                          "measured": len(reached) - sum(map(derives_targets, reached))},
        conservative=conservative, chosen=best[0] if best[0] != "start" else best[1],
        chosen_ridge=best[1] if len(best) > 2 else None,
        chosen_beta=best[2] if len(best) > 2 else 0.0,
        chosen_start=best[3] if len(best) > 3 else None,
        starts_tried=[k for k in starts if k != "mean"], staged_search=staged,
        anchors_tried=[asdict(a) for a in anchors], fallback=fallback,
        stages=[list(s) for s in (order.stages if opts.mode == "progressive"
                                  else (tuple(order.order),))],
        frames_used=[s.frames for s in sources],
        targets_cached=[s.targets is not None for s in sources],
        energy_shift_ev=run.energy_shift,
        grid=[asdict(p) for p in points],
        validation=("val_data (labelled validation frames)" if val_sets is not None else
                    f"disagreement with each source on {[graphs(h) for h in holdout]} "
                    "held-out frames of its own data (no val_data given)"
                    if holdout is not None else "none (nothing to choose)"),
        val_score=opts.val_score, alternatives=alt_record,
        val_force_mae_mev_per_a=val[0] if val else None,
        val_energy_mae_mev_per_atom=val[1] if val else None,
        val_force_mae_per_system=val[2] if val else None)
    report.times.update(targets=targets_s, order=order_s, search=search_s, merge=final_s,
                        alternatives=alt_s,
                        total=time.perf_counter() - t_start, targets_cpu=targets_c,
                        search_cpu=search_c, merge_cpu=final_c,
                        total_cpu=time.process_time() - c_start)
    for w in report.warnings:  # told, not only recorded (as the one-shot solves do)
        warnings.warn(w, stacklevel=2)
    return MergeResult(run.model, report, alternatives)


# Candidates that are no merge: returned only with return_base=True.
UNMERGED = (("start", "base"), ("start", "source"))


def _family(key: tuple) -> str:
    """The family of a search candidate, by its key: ``"foundation"``, ``"single source"``,
    ``"task-vector start"`` (task arithmetic, also per source, or TIES), ``"average"``, or
    ``"closed form from the mean"`` (``"... from the foundation"``, ``"... from the ties
    start"``, …)."""
    if key[0] == "average":
        return "average"
    if key[0] == "start":
        return {"base": "foundation", "source": "single source"}.get(key[1],
                                                                      "task-vector start")
    return ("closed form from the mean" if key[3] == "mean" else
            "closed form from the foundation" if key[3] == "base" else
            f"closed form from the {key[3]} start")


def _family_bests(scored: Sequence[tuple[tuple, float]]) -> dict[str, tuple[tuple, float]]:
    """The best-scoring (key, score) of every family among ``scored``."""
    best: dict[str, tuple[tuple, float]] = {}
    for key, val in scored:
        fam = _family(key)
        if math.isfinite(val) and (fam not in best or val < best[fam][1]):
            best[fam] = (key, val)
    return best


@register("progressive",
          description="progressive closed form: layers solved stage by stage on inputs of the "
                      "partly merged model, tangent rows for conservative force fields, "
                      "ridge and β chosen on validation data (the package default)",
          reference="https://arxiv.org/abs/2508.03121",
          options=ProgressiveOptions,
          needs=Needs(stats=False, data=True, base_model=False, base_optional=True))
def progressive(models, stats, options: ProgressiveOptions, *, data, val_data=None,
                progress: bool = True, base=None) -> MergeResult:
    result = progressive_merge(models, data, options, val_data=val_data, progress=progress,
                               base=base)
    result.report.method = "progressive"
    return result
