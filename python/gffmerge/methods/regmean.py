"""RegMean: per-model mean Grams with off-diagonal shrinkage; biases averaged."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from ..report import MergeReport, MergeResult
from ..solver import assemble, conclude, diagnose, mean_state_dict, solve_systems, write_back
from ..solver.options import RidgeMode, validate
from .registry import Needs, register


@dataclass(frozen=True)
class RegMeanOptions:
    """RegMean solves ``W = (Σ G̃_k)⁻¹ Σ G̃_k W_k`` with ``G̃_k = α G_k/n_k + (1-α) diag``."""

    alpha: float = 0.9
    ridge: float = 0.0
    ridge_mode: RidgeMode = "absolute"
    condition: bool = True

    __option_help__ = {
        "alpha": "off-diagonal scaling of each mean Gram (1 = plain, 0 = diagonal)",
        "ridge": "λ added to the diagonal (RegMean uses none)",
        "ridge_mode": "absolute, or relative to trace(A)/dim",
        "condition": "report cond₂ of every solved system",
    }

    def __post_init__(self):
        validate(self)


@register("regmean", description="per-model mean Grams, α-shrunk off-diagonals, "
                                 "no intercept (biases averaged)",
          reference="https://arxiv.org/abs/2212.09849", options=RegMeanOptions,
          needs=Needs(stats=True))
def regmean(models, stats, options: RegMeanOptions) -> MergeResult:
    t0 = time.perf_counter()
    systems = assemble(models, stats, weighting="per_model", alpha=options.alpha,
                       intercept="never", ridge=options.ridge, ridge_mode=options.ridge_mode)
    solutions = solve_systems(systems, jitter=options.ridge > 0, condition=options.condition)
    merged, written = write_back(models[0], mean_state_dict(models),
                                 {name: sol.x for name, sol in solutions.items()})
    report = diagnose(MergeReport("regmean", asdict(options), len(models)), stats, models,
                      merged, systems, solutions, written)
    return conclude(merged, report, t0, stats)
