"""Model registry: ``build_model(name, **config)`` over :data:`MODELS`."""

from __future__ import annotations

from typing import Any

from .base import ForceField
from .gns import GNS
from .painn import PaiNN
from .schnet import SchNet

MODELS: dict[str, type[ForceField]] = {cls.name: cls for cls in (SchNet, PaiNN, GNS)}


def build_model(name: str, **config: Any) -> ForceField:
    """A fresh model of architecture ``name`` ("schnet", "painn", "gns") from its config."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(MODELS)}") from None
    return cls(**config)
