"""Closed-form merge of K source models from their per-layer statistics (the GFFMerge recipe)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict

from torch import nn

from ..report import MergeReport, MergeResult
from ..stats import Stats
from .assemble import assemble
from .cholesky import SINGULAR_COND, solve_systems  # noqa: F401  (older import path)
from .diagnose import DRIFT_WARNING, conclude, diagnose  # noqa: F401  (older import path)
from .options import SolveOptions
from .state import mean_state_dict, write_back


def _as_stats(stats: Stats | Sequence[Stats]) -> Stats:
    return stats if isinstance(stats, Stats) else Stats.concat(stats)


def solve(models: Sequence[nn.Module], stats: Stats | Sequence[Stats], *,
          method: str = "solve", options: SolveOptions | None = None,
          **values) -> MergeResult:
    """Merge ``models`` layer by layer from ``stats`` measured on them (same order).

    For every measured linear layer, with ``Θ_k = [W_kᵀ; b_kᵀ]`` and ``G_k`` the
    (augmented when fitting an intercept) Gram of model k, solve by Cholesky

        (Σ_k c_k G̃_k + λI) Θ = Σ_k c_k G̃_k Θ_k  [+ λ Θ̄ with prior="mean"]

    where ``c_k`` is 1 (pooled) or ``1/n_k`` (per_model) and ``G̃_k`` is ``G_k`` with its
    off-diagonal scaled by ``alpha``. Every other state-dict entry is the mean of the
    sources. Pass the options of :class:`~gffmerge.solver.SolveOptions` as keywords, or
    as one ``options=SolveOptions(...)``; they and their defaults are those of
    ``method="gffmerge"`` (``gffmerge.methods.get("gffmerge")``), and ``method`` only names
    the merge in the report. Returns the merged model (a copy of ``models[0]``) and a
    :class:`MergeReport`.
    """
    if options is not None and values:
        raise TypeError(f"pass either options= or keyword options, not both (got "
                        f"{', '.join(sorted(values))} as keywords)")
    return solve_with(models, _as_stats(stats), options or SolveOptions(**values),
                      method=method)


def solve_with(models: Sequence[nn.Module], stats: Stats, opts: SolveOptions, *,
               method: str) -> MergeResult:
    """:func:`solve` with validated options: assemble, solve, write back, diagnose."""
    t0 = time.perf_counter()
    systems = assemble(models, stats, weighting=opts.weighting, alpha=opts.alpha,
                       intercept=opts.fit_intercept, target=opts.target, ridge=opts.ridge,
                       ridge_mode=opts.ridge_mode, prior=opts.prior)
    solutions = solve_systems(systems, jitter=opts.jitter, condition=opts.condition)
    merged, written = write_back(models[0], mean_state_dict(models),
                                 {name: sol.x for name, sol in solutions.items()})
    report = diagnose(MergeReport(method, asdict(opts), len(models)), stats, models, merged,
                      systems, solutions, written)
    return conclude(merged, report, t0, stats)
