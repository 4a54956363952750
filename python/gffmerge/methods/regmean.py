"""RegMean: per-model mean Grams with off-diagonal shrinkage; biases averaged."""

from __future__ import annotations

from dataclasses import dataclass

from ..report import MergeResult
from ..solver import SolveOptions, solve_with
from ..solver.options import RidgeMode
from .registry import register


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


@register("regmean", description="per-model mean Grams, α-shrunk off-diagonals, "
                                 "no intercept (biases averaged)",
          reference="https://arxiv.org/abs/2212.09849", options=RegMeanOptions)
def regmean(models, stats, options: RegMeanOptions) -> MergeResult:
    opts = SolveOptions(weighting="per_model", ridge=options.ridge,
                        ridge_mode=options.ridge_mode, prior="zero", alpha=options.alpha,
                        intercept="never", target="weights", jitter=options.ridge > 0,
                        condition=options.condition)
    return solve_with(models, stats, opts, method="regmean")
