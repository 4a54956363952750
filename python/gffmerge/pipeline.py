"""One call from source models and their data to a merged model."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from . import methods
from .architecture import check_same_architecture
from .collect import MeasureOptions, measure
from .report import MergeResult
from .stats import Stats


def merge(models: Sequence[nn.Module], data: Sequence[Iterable[Any]] | None = None, *,
          method: str | None = None, limit: int | None = None,
          device: torch.device | str | None = None, progress: bool = True,
          layers: Iterable[str] | None = None, forward=None, labels: Sequence[str] | None = None,
          backend: str = "auto", dense: bool = False,
          measure_options: MeasureOptions | None = None, base: nn.Module | None = None,
          val_data: Sequence[Any] | None = None,
          grid: str | Mapping[str, Sequence[Any]] | None = None, **options) -> MergeResult:
    """Measure each model on its own data (``data[k]`` for ``models[k]``), then merge.

    ``method`` names a registered method (``gffmerge.methods.available()``; default
    :data:`gffmerge.methods.DEFAULT_METHOD`, the progressive force-aware merge; the paper's
    recipe is ``method="gffmerge"``); ``options``
    are that method's options, validated before any work is done, as is the architecture
    of the models. Methods that need no statistics (``"average"``) ignore ``data``.
    ``limit``, ``device``, ``layers``, ``forward``, ``backend`` and ``dense`` are passed to
    :func:`gffmerge.measure` for every model; or pass them (and any other setting) as one
    :class:`~gffmerge.collect.MeasureOptions` in ``measure_options``. ``label`` comes from
    ``labels`` and ``cross`` from the method.

    ``base``: the pre-trained model the sources were fine-tuned from, for methods that
    need it (``task_arithmetic``, ``ties``, ``emr``) or use it when given (the default,
    ``progressive``: it then also tries starting from those merges). Methods that need gradients
    (``fisher``) get each model's diagonal Fisher on its own (labelled) ``data``.
    Methods that run the models themselves (``progressive``) get ``data`` as it is, and
    ``val_data`` (each source's validation :class:`~gffmerge.data.AtomsDataset`) to choose
    their hyperparameters on; without it they hold out frames of ``data``.

    ``grid``: ``"auto"`` chooses the options of ``ties``, ``task_arithmetic`` and ``fisher``
    from the paper's grid (:data:`gffmerge.methods.grid.PAPER_GRIDS`; or pass
    ``{option: values}``) by the force MAE pooled over ``val_data``, never the test split;
    ``options`` stay fixed. The report's options record the grid, every point's score
    and the choice; ``times["grid"]`` is the search's wall time.
    """
    method = method or methods.DEFAULT_METHOD
    mopts = _measure_base(measure_options, limit=limit, device=device, progress=progress,
                          layers=layers, forward=forward, backend=backend, dense=dense)
    spec = methods.get(method)
    opts = spec.options(**options)
    check_same_architecture(models)
    stats = None
    measure_s = 0.0
    needs = spec.needs_for(opts)
    unmet = needs.beyond("stats", "cross", "base_model", "base_optional", "gradients",
                         "labelled_data", "data")
    if needs.base_model and base is None:
        raise ValueError(f"method '{method}' needs the pre-trained model the sources were "
                         "fine-tuned from: pass base=FOUNDATION (CLI: --base CKPT)")
    if unmet:
        raise ValueError(f"method '{method}' needs {', '.join(unmet)}, which gffmerge.merge "
                         "cannot provide yet")
    points = _grid_points(method, grid, options, needs, val_data)
    if (needs.stats or needs.gradients or needs.data) and (data is None
                                                           or len(data) != len(models)):
        got = "no data" if data is None else f"{len(data)} data sources"
        raise ValueError(f"method '{method}' measures each model on its own data: pass "
                         f"one data iterable per model ({len(models)} models, {got})")
    if needs.stats and (mopts.partial is not None or mopts.resume is not None):
        raise ValueError("merge measures every model in one call, so it keeps no partial "
                         "file (partial=/resume= in measure_options): for resumable "
                         "measuring run gffmerge.measure(model, data, partial=PATH) per "
                         "model, then gffmerge.solve(models, stats)")
    if needs.stats:
        cross = needs.cross
        t0 = time.perf_counter()
        stats = Stats.concat(
            measure(m, d, options=mopts, cross=cross,
                    label=labels[k] if labels else f"model {k}")
            for k, (m, d) in enumerate(zip(models, data)))
        measure_s = time.perf_counter() - t0
    gradients = None
    if needs.gradients:
        from .collect.fisher import diagonal_fisher

        t0 = time.perf_counter()
        gradients = [diagonal_fisher(m, d, limit=mopts.limit, device=mopts.device,
                                     progress=progress,
                                     label=labels[k] if labels else f"model {k}")
                     for k, (m, d) in enumerate(zip(models, data))]
        measure_s += time.perf_counter() - t0
    if val_data is not None and len(val_data) != len(models):
        raise ValueError(f"val_data has {len(val_data)} entries for {len(models)} models: "
                         "pass one validation dataset per model, in the same order")
    if needs.data and mopts.limit is not None:
        raise ValueError(f"method '{method}' takes its frame budget from its own options "
                         "(e.g. frames=200), not from limit=")
    if points is not None:
        result = _grid_merge(method, models, stats, points, base, gradients, val_data,
                             options)
    else:
        result = spec.invoke(models, stats, opts, base=base, gradients=gradients, data=data,
                             val_data=val_data, progress=progress)
    result.report.times["measure"] = measure_s
    times = result.report.times
    # a method that times itself end to end (progressive: targets, search, merge) sets "total"
    times["total"] = measure_s + times.get("grid", times.get("total", times.get("solve", 0.0)))
    return result


def _grid_points(method: str, grid, options: dict[str, Any], needs,
                 val_data) -> dict[str, tuple] | None:
    """The checked grid of ``merge(grid=...)`` (None without one)."""
    if grid is None:
        return None
    from .methods.grid import grid_for

    points = grid_for(method, grid, options)
    if needs.data:
        raise ValueError(f"method '{method}' chooses its own options on val_data; grid= is "
                         "for methods that merge from statistics or weights (ties, "
                         "task_arithmetic, fisher)")
    if val_data is None:
        raise ValueError("grid= chooses the options on validation frames: pass val_data "
                         "(one validation dataset per model; CLI: --grid auto with "
                         "--split train)")
    return points


def _grid_merge(method: str, models, stats, points, base, gradients, val_data,
                options: dict[str, Any]) -> MergeResult:
    """Merge at every grid point; keep the lowest pooled validation force MAE."""
    from .methods.grid import grid_search, validation_score

    t0 = time.perf_counter()
    found = grid_search(method, models, validation_score(list(val_data)), grid=points,
                        stats=stats, base=base, gradients=gradients, **options)
    result = found.result
    result.report.options = {**result.report.options, "grid": {k: list(v) for k, v in
                                                               points.items()},
                             "grid_scores": [{**p, "val_force_mae_mev_per_a": v}
                                             for p, v in found.table],
                             "chosen": found.best}
    result.report.times["grid"] = time.perf_counter() - t0
    return result


def _measure_base(options: MeasureOptions | None, **given: Any) -> MeasureOptions:
    """``options``, or the measuring keywords of :func:`merge` as options (not both)."""
    if options is None:
        return MeasureOptions.build(None, given)
    defaults = MeasureOptions()
    changed = [f"{k}=" for k, v in given.items() if v != getattr(defaults, k)]
    if changed:
        raise ValueError(f"merge got measure_options and also {', '.join(changed)}; pass "
                         "these settings in measure_options only")
    return options
