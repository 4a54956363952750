"""The default statistics provider: a forward hook that sees a layer's full input rows."""

from __future__ import annotations

from torch import nn

from ..models.parts import GramInput, input_reader
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
        self._input = input_reader(module)
        super().__init__(module, sums, **kwargs)

    def describe(self, args: tuple, kwargs: dict) -> GramInput:
        return GramInput.dense(self._input(args, kwargs))
