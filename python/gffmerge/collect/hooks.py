"""The forward hook every statistics provider shares: describe the input, add the sums."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..models.parts import GramInput, StructuredInput
from ..stats import LayerStats
from .providers import sums_of

if TYPE_CHECKING:
    from .dedup import InputCache


class LayerHook:
    """Accumulate ``Σ x̃x̃ᵀ``, ``Σ x̃yᵀ`` (when ``sums.cross`` exists) and the row count
    of every call of one linear layer.

    Subclasses say what the input rows are (:meth:`describe` returns a
    :class:`~gffmerge.models.parts.GramInput`). Each call's Gram is formed in a fresh
    float64 buffer and then added to ``sums``, so a Gram shared through ``cache`` (the
    same input reaching several layers in one forward) adds exactly what recomputing
    it would.
    """

    def __init__(self, module: nn.Module, sums: LayerStats, *, backend: str = "auto",
                 cache: InputCache | None = None, chunk_rows: int | None = None):
        self.sums = sums
        self.backend = backend
        self.cache = cache
        self.chunk_rows = chunk_rows
        self.in_features = module.in_features
        self.out_features = module.out_features
        self._handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def describe(self, args: tuple, kwargs: dict) -> GramInput:
        raise NotImplementedError

    def _hook(self, module, args, kwargs, output):
        inp = self.describe(args, kwargs)
        inp.check(self.in_features)
        key = self.cache.key(inp) if self.cache is not None else None
        gram = self.cache.get(key) if key is not None else None
        y = None
        if self.sums.cross is not None:
            y = output.detach().reshape(-1, self.out_features)
        fresh, cross = sums_of(inp, y, gram=gram is None, backend=self.backend,
                               chunk_rows=self.chunk_rows)
        if gram is None:
            gram = fresh
            if key is not None:
                self.cache.put(key, gram)
        self.sums.gram.add_(gram.to(self.sums.gram.device))
        if cross is not None:
            self.sums.cross.add_(cross.to(self.sums.cross.device))
        self.sums.rows += inp.rows

    def remove(self) -> None:
        self._handle.remove()


def provider_of(module: nn.Module):
    """The module's ``gram_parts`` method, or None when it is no
    :class:`~gffmerge.models.parts.StructuredInput`."""
    return module.gram_parts if isinstance(module, StructuredInput) else None


class StructuredHook(LayerHook):
    """Statistics of a layer that describes its input with ``gram_parts(*args, **kwargs)``
    (a :class:`~gffmerge.models.parts.StructuredInput`; see
    :mod:`gffmerge.collect.providers`)."""

    def __init__(self, module: nn.Module, sums: LayerStats, **kwargs):
        self._parts = provider_of(module)
        if self._parts is None:
            raise TypeError(f"{type(module).__name__} has no gram_parts(*args, **kwargs) "
                            "method; use DenseHook")
        super().__init__(module, sums, **kwargs)

    def describe(self, args: tuple, kwargs: dict) -> GramInput:
        inp = self._parts(*args, **kwargs)
        if not isinstance(inp, GramInput):
            raise TypeError(f"gram_parts must return a GramInput, got {type(inp).__name__}")
        return inp
