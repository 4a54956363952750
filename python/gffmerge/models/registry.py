"""The model registry: ``@register_model`` fills it, ``build_model(name, **config)`` reads it.

A model class registers itself under its ``name`` class attribute::

    @register_model
    class MyModel(ForceField):
        name = "mymodel"
        ...

Checkpoints name their model by this registered name and are rebuilt only from registered
classes, never from an import path stored in a file. ``gffmerge.models`` imports every module
in its folder, so a new model is one new file there.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, TypeVar

from .base import ForceField

_REGISTRY: dict[str, type[ForceField]] = {}

MODELS: MappingProxyType[str, type[ForceField]] = MappingProxyType(_REGISTRY)
"""Read-only, live view ``name -> class`` of the registered models, in registration order."""

M = TypeVar("M", bound=type[ForceField])


def register_model(cls: M) -> M:
    """Class decorator: register a ``ForceField`` subclass under ``cls.name``.

    The name must be a non-empty string not already taken by another class; registering
    the same class twice (a module imported again) is harmless.
    """
    if not (isinstance(cls, type) and issubclass(cls, ForceField)):
        raise TypeError(f"@register_model needs a ForceField subclass, got {cls!r}")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__qualname__} needs its own class attribute `name = \"...\"` "
                         "to be registered (the name checkpoints store)")
    known = _REGISTRY.get(name)
    if known is not None and _qualified(known) != _qualified(cls):
        raise ValueError(f"model name {name!r} of {_qualified(cls)} is already registered "
                         f"by {_qualified(known)}; pick another name")
    _REGISTRY[name] = cls
    return cls


def model_class(name: str) -> type[ForceField]:
    """The class registered as ``name``; ``KeyError`` listing the registered names if none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown model {name!r}; known models: {sorted(_REGISTRY)}") from None


def build_model(name: str, **config: Any) -> ForceField:
    """A fresh model of the registered architecture ``name`` ("schnet", "painn", "gns", ...)."""
    return model_class(name)(**config)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
