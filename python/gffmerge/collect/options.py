"""The settings of one measurement, as one value passed from the CLI down to the runner."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
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
    ``distributed``: measure this process's shard and sum over all processes.

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

    def __post_init__(self):
        # a generator of names would be used up by the first model measured
        if self.layers is not None and not isinstance(self.layers, str | tuple):
            object.__setattr__(self, "layers", tuple(self.layers))

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
