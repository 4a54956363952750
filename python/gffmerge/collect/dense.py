"""The default statistics provider: a forward hook that sees a layer's full input rows."""

from __future__ import annotations

from torch import nn

from ..models.parts import DenseInput, GramInput
from ..stats import LayerStats
from .hooks import LayerHook


class DenseHook(LayerHook):
    """Accumulate ``Σ x̃x̃ᵀ`` (and ``Σ x̃yᵀ``) from every call of one linear layer.

    Rows are all leading dimensions of the input flattened (atoms, edges, or
    ``[N, 3]`` vector components). A layer that defines ``dense_input(*args, **kwargs)``
    (a :class:`~gffmerge.models.parts.DenseInput`, e.g.
    :class:`~gffmerge.models.layers.EdgeConcatLinear`) is asked for its explicit input
    matrix instead of ``args[0]``.
    """

    def __init__(self, module: nn.Module, sums: LayerStats, **kwargs):
        self._dense_input = module.dense_input if isinstance(module, DenseInput) else None
        super().__init__(module, sums, **kwargs)

    def describe(self, args: tuple, kwargs: dict) -> GramInput:
        if self._dense_input is not None:
            x = self._dense_input(*args, **kwargs)
        else:
            x = args[0] if args else kwargs["input"]
        return GramInput.dense(x)
