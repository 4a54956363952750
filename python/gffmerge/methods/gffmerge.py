"""GFFMerge: pooled, bias-augmented ridge regression per linear layer (the paper's recipe)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..report import MergeResult
from ..solver import SolveOptions, solve_with
from .registry import register


@dataclass(frozen=True)
class GffmergeOptions(SolveOptions):
    """:class:`~gffmerge.solve.SolveOptions` with the official recipe as defaults.

    ``official_quirks=True`` also fits an intercept for bias-free layers and drops it,
    exactly as the authors' scripts do (``intercept="always"``).
    """

    official_quirks: bool = False

    __option_help__ = {
        "weighting": "pooled (row-count weighted, official) or per_model (mean Grams)",
        "ridge": "λ added to the diagonal (official 1e-6, absolute)",
        "ridge_mode": "absolute, or relative to trace(A)/dim",
        "prior": "zero (official) or mean: shrink toward the sources' mean",
        "alpha": "RegMean off-diagonal shrinkage of each Gram (1 = none)",
        "intercept": "auto (bias layers), always, never",
        "target": "weights (Σ G_k Θ_k) or cross (measured Σ x̃ yᵀ)",
        "jitter": "rescue failed Cholesky factorisations (recorded, warned)",
        "condition": "report cond₂ of every solved system",
        "official_quirks": "fit and drop an intercept on bias-free layers, as upstream",
    }

    def solve_options(self) -> SolveOptions:
        values = asdict(self)
        quirks = values.pop("official_quirks")
        if quirks:
            values["intercept"] = "always"
        return SolveOptions(**values)


@register("gffmerge",
          description="closed-form per-layer regression on each source's own activations "
                      "(pooled Grams, bias-augmented, ridge)",
          reference="https://arxiv.org/abs/2606.03232", options=GffmergeOptions)
def gffmerge(models, stats, options: GffmergeOptions) -> MergeResult:
    return solve_with(models, stats, options.solve_options(), method="gffmerge")
