"""The default statistics provider: a forward hook that sees a layer's full input rows."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import gffmerge_ext

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
        self._lean = self.chunk_rows is None and self.backend in ("auto", "ext")
        self._compiled: dict[str, bool] = {}  # device type -> a compiled kernel exists

    def describe(self, args: tuple, kwargs: dict) -> GramInput:
        return GramInput.dense(self._input(args, kwargs))

    def _hook(self, module, args, kwargs, output):
        """The Gram of plain rows straight through the compiled op (profiled: the general
        path's descriptions and checks cost ~50 µs a call, as much as the Gram of a small
        layer); anything else, and every error message, goes through the general path.
        Same products, same sums, bit for bit: ``gram_`` adds its one-pass result to the
        accumulator it is given, a fresh zero one or the sums themselves alike."""
        x = self._input(args, kwargs)
        y_needed = self.sums.cross is not None and self._gram_before is None
        if y_needed or not self._lean or not _plain(x, self.in_features) or not self._has_op(
                x.device):
            return super()._hook(module, args, kwargs, output)
        rows = x.detach().reshape(-1, self.in_features)
        acc = self.sums.gram
        if self._solo and acc.device == x.device:
            torch.ops.gffmerge.gram_(acc, rows, None, None, True)
            self.sums.rows += rows.shape[0]
            return
        key = self.cache.dense_key(x) if self.cache is not None else None
        gram = self.cache.get(key, user=self) if key is not None else None
        if key is not None:
            self._keyed = True
        if gram is None:
            if key is None or not self.shares:  # no other call of this forward reads it
                if acc.device == x.device:
                    torch.ops.gffmerge.gram_(acc, rows, None, None, True)
                else:
                    self._fresh(acc, rows)
                if key is not None:
                    self.cache.put(key, None, owner=self)
                self.sums.rows += rows.shape[0]
                return
            n = self.in_features + 1
            gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
            torch.ops.gffmerge.gram_(gram, rows, None, None, True)
            self.cache.put(key, gram, owner=self)
        acc.add_(gram.to(acc.device))
        self.sums.rows += rows.shape[0]

    def _fresh(self, acc: Tensor, rows: Tensor) -> None:
        n = self.in_features + 1
        gram = torch.zeros(n, n, dtype=torch.float64, device=rows.device)
        torch.ops.gffmerge.gram_(gram, rows, None, None, True)
        acc.add_(gram.to(acc.device))

    def _has_op(self, device: torch.device) -> bool:
        ok = self._compiled.get(device.type)
        if ok is None:
            ok = self._compiled[device.type] = "ext" in gffmerge_ext.available_backends(device)
        return ok


def _plain(x, width: int) -> bool:
    """Rows the lean path takes: a strided floating tensor ``[..., width]``."""
    return (isinstance(x, Tensor) and x.layout == torch.strided and x.dim() >= 1
            and x.shape[-1] == width and width > 0 and x.is_floating_point())
