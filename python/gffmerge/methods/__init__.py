"""Merge methods, registered by name: ``gffmerge.methods.get("gffmerge")``.

Adding a method is one module in this package (or, in another package, one module named by
an entry point of the group ``gffmerge.methods``) that decorates its function with
:func:`register`; the registry imports it on the first lookup. A method declares what it
needs with :class:`Needs` and composes the primitives of :mod:`gffmerge.solver`.
"""

from .registry import ENTRY_POINT_GROUP, MergeMethod, Needs, OptionInfo, available, get, register

__all__ = ["ENTRY_POINT_GROUP", "MergeMethod", "Needs", "OptionInfo", "available", "get",
           "register"]
