"""One call from source models and their data to a merged model."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
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
          val_data: Sequence[Any] | None = None, **options) -> MergeResult:
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
    need it (``task_arithmetic``, ``ties``, ``emr``). Methods that need gradients
    (``fisher``) get each model's diagonal Fisher on its own (labelled) ``data``.
    Methods that run the models themselves (``progressive``) get ``data`` as it is, and
    ``val_data`` (each source's validation :class:`~gffmerge.data.AtomsDataset`) to choose
    their hyperparameters on; without it they hold out frames of ``data``.
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
    unmet = needs.beyond("stats", "cross", "base_model", "gradients", "labelled_data",
                         "data")
    if needs.base_model and base is None:
        raise ValueError(f"method '{method}' needs the pre-trained model the sources were "
                         "fine-tuned from: pass base=FOUNDATION (CLI: --base CKPT)")
    if unmet:
        raise ValueError(f"method '{method}' needs {', '.join(unmet)}, which gffmerge.merge "
                         "cannot provide yet")
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
    result = spec.invoke(models, stats, opts, base=base, gradients=gradients, data=data,
                         val_data=val_data, progress=progress)
    result.report.times["measure"] = measure_s
    result.report.times["total"] = measure_s + result.report.times.get("solve", 0.0)
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
