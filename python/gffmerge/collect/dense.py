"""The default statistics provider: a forward hook that sees a layer's full input rows."""

from __future__ import annotations

from torch import nn

import gffmerge_ext

from ..stats import LayerStats


class DenseHook:
    """Accumulate ``Σ x̃x̃ᵀ`` (and ``Σ x̃yᵀ``) from every call of one linear layer.

    Rows are all leading dimensions of the input flattened (atoms, edges, or
    ``[N, 3]`` vector components). A layer that defines ``dense_input(*args, **kwargs)``
    (e.g. :class:`~gffmerge.models.layers.EdgeConcatLinear`) is asked for its explicit
    input matrix instead of ``args[0]``.
    """

    def __init__(self, module: nn.Linear, sums: LayerStats, *, backend: str = "auto"):
        self.sums = sums
        self.backend = backend
        self.in_features = module.in_features
        self.out_features = module.out_features
        self._dense_input = getattr(module, "dense_input", None)
        self._handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        if self._dense_input is not None:
            x = self._dense_input(*args, **kwargs)
        else:
            x = args[0] if args else kwargs["input"]
        x = x.detach().reshape(-1, self.in_features)
        gffmerge_ext.gram_(self.sums.gram, x, augment=True, backend=self.backend)
        if self.sums.cross is not None:
            y = output.detach().reshape(-1, self.out_features)
            gffmerge_ext.cross_(self.sums.cross, x, y, augment_x=True, backend=self.backend)
        self.sums.rows += x.shape[0]

    def remove(self) -> None:
        self._handle.remove()


def attach_dense(model: nn.Module, layers: dict[str, LayerStats], *,
                 backend: str = "auto") -> list[DenseHook]:
    """A :class:`DenseHook` on each named layer of ``model``."""
    modules = dict(model.named_modules())
    return [DenseHook(modules[name], sums, backend=backend) for name, sums in layers.items()]

