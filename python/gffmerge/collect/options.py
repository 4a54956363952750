"""The settings of one measurement, as one value passed from the CLI down to the runner."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from .batches import Forward


@dataclass(frozen=True)
class MeasureOptions:
    """How :func:`gffmerge.measure` runs a model over its data (every field is optional).

    ``layers``: names or glob patterns of the linear layers to measure (default: all);
    ``limit``: graphs / batch entries, checked after each batch; ``device``: where the
    model runs (default: its own device); ``progress``: a progress bar; ``cross``: also
    record ``Σ x̃ yᵀ`` (for ``target="cross"``); ``forward``: ``forward(model, batch)``
    (default: ``model.measure_forward(batch)`` or ``model(batch)``); ``batch_size_fn``:
    graphs in a batch (default: ``num_graphs`` or the leading dimension); ``label`` and
    ``description``: names stored with the stats; ``backend``: ``"auto"``, ``"ext"`` or
    ``"torch"`` for the Gram ops; ``dense``: the dense hook on every layer; ``dedup``:
    share the Gram of an input reaching several layers (default: on unless ``dense``);
    ``distributed``: measure this process's shard and sum over all processes;
    ``shared``: an :class:`~gffmerge.collect.InputCache` passed to the measurements of
    several models, so that a layer whose input rows do not depend on the weights (a
    graph convolution on the raw features of one graph) is measured once for all of them.

    Resuming (:mod:`gffmerge.collect.partial`): ``partial``: a file where the sums so far
    are kept while measuring (written every ``partial_every`` batches or
    ``partial_seconds`` seconds, whichever comes first, and when SIGINT/SIGTERM stops the
    run; removed once the measurement succeeded; an older one there is replaced);
    ``resume``: a partial file to continue from (it must exist; it is then kept up to date
    in place of ``partial``). Under ``distributed`` each process keeps its own file
    (:func:`~gffmerge.collect.partial.rank_path`).

    Build one directly, or let :func:`gffmerge.measure` build it from keywords; unknown
    names are an error that lists the valid ones.
    """

    layers: tuple[str, ...] | None = None
    limit: int | None = None
    device: torch.device | str | None = None
    progress: bool = True
    cross: bool = False
    forward: Forward | None = None
    batch_size_fn: Callable[[Any], int] | None = None
    label: str | None = None
    description: str | None = None
    backend: str = "auto"
    dense: bool = False
    dedup: bool | None = None
    distributed: bool = False
    partial: str | os.PathLike | None = None
    resume: str | os.PathLike | None = None
    partial_every: int | None = 50
    partial_seconds: float | None = 60.0
    shared: Any = None

    def __post_init__(self):
        # a generator of names would be used up by the first model measured
        if self.layers is not None and not isinstance(self.layers, str | tuple):
            object.__setattr__(self, "layers", tuple(self.layers))
        if (self.partial is not None and self.resume is not None
                and Path(self.partial) != Path(self.resume)):
            raise ValueError(f"partial='{self.partial}' and resume='{self.resume}' name two "
                             "files; resume= keeps its own file up to date, give only it")
        if self.partial_every is not None and self.partial_every < 1:
            raise ValueError(f"partial_every must be a number of batches >= 1 (or None), got "
                             f"{self.partial_every}")
        if self.partial_seconds is not None and not self.partial_seconds > 0:
            raise ValueError(f"partial_seconds must be > 0 (or None), got "
                             f"{self.partial_seconds}")

    @property
    def partial_path(self) -> Path | None:
        """The partial file this measurement keeps (``resume`` or ``partial``), if any."""
        where = self.resume if self.resume is not None else self.partial
        return None if where is None else Path(where)

    @classmethod
    def names(cls) -> list[str]:
        """The field names, in declaration order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def build(cls, options: MeasureOptions | None = None,
              overrides: Mapping[str, Any] | None = None) -> MeasureOptions:
        """``options`` (default: all defaults) with ``overrides`` applied by field name.

        Raises ``TypeError`` naming an unknown field, the closest valid one and the list.
        """
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options= must be a MeasureOptions, got {type(options).__name__}")
        base = options if options is not None else cls()
        overrides = dict(overrides or {})
        check_names(overrides)
        return replace(base, **overrides) if overrides else base


def check_names(names: Iterable[str]) -> None:
    """Raise ``TypeError`` for the first name that is not a :class:`MeasureOptions` field."""
    valid = MeasureOptions.names()
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TypeError(f"unknown measure option '{name}'{hint}; valid options are: "
                            f"{', '.join(valid)}")
