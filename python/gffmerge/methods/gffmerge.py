"""GFFMerge: pooled, bias-augmented ridge regression per linear layer (the paper's recipe)."""

from __future__ import annotations

from ..report import MergeResult
from ..solver import SolveOptions, solve_with
from .registry import Needs, register

# The recipe's options are the solver's, so `gffmerge.solve(...)` and `method="gffmerge"`
# take the same options with the same defaults.
GffmergeOptions = SolveOptions


def needs(options: SolveOptions) -> Needs:
    """Statistics; with cross sums when the right-hand side comes from them."""
    return Needs(stats=True, cross=options.target == "cross")


@register("gffmerge",
          description="closed-form per-layer regression on each source's own activations "
                      "(pooled Grams, bias-augmented, ridge)",
          reference="https://arxiv.org/abs/2606.03232", options=GffmergeOptions, needs=needs)
def gffmerge(models, stats, options: SolveOptions) -> MergeResult:
    return solve_with(models, stats, options, method="gffmerge")
