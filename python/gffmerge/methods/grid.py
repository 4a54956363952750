"""Choosing a method's options from a small grid by a score of the merged model.

The GFFMerge paper tunes the vision/language baselines on the *combined validation split*
(never on test): :func:`grid_search` merges once per grid point and keeps the options
whose merged model scores lowest, and :func:`validation_score` is that score (the combined
validation force MAE)::

    val = load_dataset(systems).split("val")
    found = grid_search("ties", models, validation_score(val), base=foundation)
    found.best, found.result.model, found.table
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..report import MergeResult
from .registry import get

# The paper's grids (§7 of the research notes): TIES as for ORB; the task-arithmetic λ grid
# is TIES's; the Fisher floor grid is ours (the paper only thresholds at 1e-6).
PAPER_GRIDS: dict[str, dict[str, tuple]] = {
    "ties": {"density": (0.05, 0.1, 0.2, 0.3, 0.4), "lam": (0.3, 0.5, 0.8, 1.0, 1.2)},
    "task_arithmetic": {"lam": (0.3, 0.5, 0.8, 1.0, 1.2)},
    "fisher": {"floor": (0.0, 1e-6, 1e-4, 1e-2)},
}


@dataclass
class GridSearch:
    """The best options, their score and merge, and every grid point's score."""

    method: str
    best: dict[str, Any]
    score: float
    result: MergeResult
    table: list[tuple[dict[str, Any], float]] = field(default_factory=list)


def validation_score(dataset, *, metric: str = "force_mae_mev_per_a",
                     batch_size: int = 8) -> Callable[[nn.Module], float]:
    """``score(model)``: ``metric`` of :func:`gffmerge.evaluate.evaluate` on ``dataset``
    over all its systems together (pass the combined validation split)."""
    from ..evaluate import evaluate

    def score(model: nn.Module) -> float:
        return float(evaluate(model, dataset, batch_size=batch_size, progress=False)
                     ["all"][metric])
    return score


def grid_search(method: str, models: Sequence[nn.Module], score: Callable[[nn.Module], float],
                *, grid: Mapping[str, Sequence[Any]] | None = None, stats=None,
                base: nn.Module | None = None, gradients=None, **fixed) -> GridSearch:
    """Merge ``models`` with ``method`` at every point of ``grid`` (default: the paper's,
    :data:`PAPER_GRIDS`) and keep the lowest ``score(merged model)``; ``fixed`` are options
    held constant. Ties go to the earlier point; non-finite scores never win."""
    spec = get(method)
    if grid is None:
        if method not in PAPER_GRIDS:
            raise ValueError(f"no default grid for method '{method}' (defaults exist for "
                             f"{', '.join(sorted(PAPER_GRIDS))}); pass grid={{option: values}}")
        grid = PAPER_GRIDS[method]
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ValueError("the grid must name at least one option, each with values")
    spec.options(**{k: v[0] for k, v in grid.items()}, **fixed)  # names checked up front
    table: list[tuple[dict[str, Any], float]] = []
    best: tuple[float, dict[str, Any], MergeResult] | None = None
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        result = spec(models, stats, base=base, gradients=gradients, **point, **fixed)
        value = float(score(result.model))
        table.append((point, value))
        if math.isfinite(value) and (best is None or value < best[0]):
            best = (value, point, result)
    if best is None:
        raise ValueError(f"every point of the {method} grid scored NaN or Inf; check the "
                         "score function and the sources")
    return GridSearch(method, {**fixed, **best[1]}, best[0], best[2], table)
