"""How measurement feeds batches to a model: device moves, the forward call, batch sizes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..models.parts import MeasureForward


def move_to(batch: Any, device: torch.device | str | None) -> Any:
    """Move tensors in ``batch`` (tensor, mapping, sequence, or object with ``.to``)."""
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return type(batch)((k, move_to(v, device)) for k, v in batch.items())
    if isinstance(batch, tuple | list):
        return type(batch)(move_to(v, device) for v in batch)
    to = getattr(batch, "to", None)
    return to(device) if callable(to) else batch


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model.measure_forward(batch)`` when the model is a
    :class:`~gffmerge.models.parts.MeasureForward`, else ``model(batch)``.

    Mappings are passed as keyword arguments and tuples/lists as positional arguments;
    pass ``forward=`` to :func:`gffmerge.measure` for anything else (e.g. ``(x, y)`` pairs
    whose labels the model must not see: ``forward=lambda m, b: m(b[0])``).
    """
    if isinstance(model, MeasureForward):
        return model.measure_forward(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, tuple | list):
        return model(*batch)
    return model(batch)


def batch_entries(batch: Any) -> int:
    """How many graphs / samples a batch holds, for ``limit=``.

    ``num_graphs`` when the batch has it (graph batches), else the leading dimension of
    the (first) tensor.
    """
    n = getattr(batch, "num_graphs", None)
    if n is not None:
        return int(n)
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, tuple | list):
        for v in batch:
            if isinstance(v, torch.Tensor) or hasattr(v, "num_graphs"):
                return batch_entries(v)
    raise TypeError(f"cannot tell how many samples a {type(batch).__name__} batch holds; "
                    "pass `batch_size_fn=` to measure()")


Forward = Callable[[nn.Module, Any], Any]


def describe(data: Any) -> str:
    """A short description of a data source for the statistics' metadata."""
    describe = getattr(data, "describe", None)
    if callable(describe):
        return str(describe())
    try:
        return f"{type(data).__name__} of {len(data)} batches"
    except TypeError:
        return type(data).__name__


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def all_on(model: nn.Module, device: torch.device) -> bool:
    """Whether every parameter and buffer of ``model`` is on ``device`` already."""
    return all(t.device == device for t in model.parameters()) and all(
        t.device == device for t in model.buffers())
