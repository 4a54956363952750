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
    over all its systems together (pass the combined validation split), or pooled over
    a list of datasets (one validation split per source: force errors pooled over all
    force components, energy errors over all frames)."""
    from ..evaluate import evaluate

    sets = list(dataset) if isinstance(dataset, (list, tuple)) else [dataset]
    if not sets:
        raise ValueError("validation_score needs at least one validation dataset")
    weight = "frames" if metric.startswith("energy") else "atoms"

    def score(model: nn.Module) -> float:
        total = count = 0.0
        for ds in sets:
            r = evaluate(model, ds, batch_size=batch_size, progress=False)["all"]
            total += r[metric] * r[weight]
            count += r[weight]
        return total / count
    return score


def grid_for(method: str, grid: str | Mapping[str, Sequence[Any]],
             fixed: Mapping[str, Any] | None = None) -> dict[str, tuple]:
    """The grid that ``grid`` names for ``method``: ``"auto"`` is the paper's
    (:data:`PAPER_GRIDS`), a mapping ``{option: values}`` is taken as given. Checked: the
    option names (against the method's), non-empty values, and no option both in the grid
    and among the ``fixed`` ones."""
    if isinstance(grid, str):
        if grid != "auto":
            raise ValueError(f"grid must be 'auto' or {{option: values}}, got {grid!r}")
        if method not in PAPER_GRIDS:
            raise ValueError(f"no default grid for method '{method}' (grids exist for "
                             f"{', '.join(sorted(PAPER_GRIDS))}); drop --grid or pass "
                             "grid={option: values}")
        points = dict(PAPER_GRIDS[method])
    elif isinstance(grid, Mapping):
        points = {str(k): tuple(v) if isinstance(v, (list, tuple)) else (v,)
                  for k, v in grid.items()}
    else:
        raise ValueError(f"grid must be 'auto' or {{option: values}}, got "
                         f"{type(grid).__name__}")
    if not points or any(len(v) == 0 for v in points.values()):
        raise ValueError("the grid must name at least one option, each with values")
    both = sorted(set(points) & set(fixed or {}))
    if both:
        raise ValueError(f"option {', '.join(both)} is both fixed and searched by the grid; "
                         "drop one of them")
    get(method).options(**{k: v[0] for k, v in points.items()}, **dict(fixed or {}))
    return points


def grid_search(method: str, models: Sequence[nn.Module], score: Callable[[nn.Module], float],
                *, grid: Mapping[str, Sequence[Any]] | None = None, stats=None,
                base: nn.Module | None = None, gradients=None, **fixed) -> GridSearch:
    """Merge ``models`` with ``method`` at every point of ``grid`` (default: the paper's,
    :data:`PAPER_GRIDS`) and keep the lowest ``score(merged model)``; ``fixed`` are options
    held constant. Ties go to the earlier point; non-finite scores never win."""
    spec = get(method)
    grid = grid_for(method, "auto" if grid is None else grid, fixed)  # checked up front
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
