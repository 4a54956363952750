"""Merge methods, registered by name: ``gffmerge.methods.get("gffmerge")``.

Adding a method is one module that decorates its function with :func:`register`.
"""

from . import average, gffmerge, regmean  # noqa: F401  (registration side effects)
from .registry import MergeMethod, OptionInfo, available, get, register

__all__ = ["MergeMethod", "OptionInfo", "available", "get", "register"]
