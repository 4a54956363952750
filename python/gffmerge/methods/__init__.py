"""Merge methods, registered by name: ``gffmerge.methods.get("gffmerge")``.

A method is one module that decorates ``fn(models, stats, options) -> MergeResult`` with
:func:`register`, giving a typed options dataclass and what it needs (:class:`Needs`); it
composes the primitives of :mod:`gffmerge.solver` (assemble, solve, write back, diagnose).
The registry imports every module of this package itself on the first lookup or listing,
and, from other packages, every module named by an entry point of the group
``gffmerge.methods``::

    # my_package/scaled_mean.py
    @register("scaled_mean", description="the mean, scaled", reference="https://...",
              options=ScaledMeanOptions, needs=Needs(stats=False))
    def scaled_mean(models, stats, options): ...

    # my_package's pyproject.toml
    [project.entry-points."gffmerge.methods"]
    scaled_mean = "my_package.scaled_mean"

A plugin that fails to import is skipped with a warning naming it. A method that runs the
models itself declares ``Needs(stats=False, data=True)`` and is called as
``fn(models, None, options, data=..., val_data=..., progress=...)``.
``DEFAULT_METHOD`` names what :func:`gffmerge.merge` runs when no method is given.
"""

from .registry import (
    DEFAULT_METHOD,
    ENTRY_POINT_GROUP,
    MergeMethod,
    Needs,
    OptionInfo,
    available,
    get,
    register,
)

__all__ = ["DEFAULT_METHOD", "ENTRY_POINT_GROUP", "MergeMethod", "Needs", "OptionInfo",
           "available", "get", "register"]
