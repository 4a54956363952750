"""The forward hook every statistics provider shares: describe the input, add the sums."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..models.layers import ConcatLinear, EdgeConcatLinear
from ..models.parts import Dense, Gathered, GramInput, StructuredInput
from ..stats import LayerStats
from .providers import layer_sums, route_of

if TYPE_CHECKING:
    from .dedup import InputCache
    from .workspace import Workspace


_LEARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Module -> whether its rows reached another hooked call in the last forward measured with
a cache (see :meth:`LayerHook.end_forward`); a hint for the next hooks, never a result:
the sums are the same whichever way it points."""

_ROUTES_KEPT = 64
"""Input signatures a structured hook remembers as checked (one per distinct batch shape)."""

AFFINE_LAYERS = (nn.Linear, EdgeConcatLinear, ConcatLinear)
"""Layer classes whose forward is exactly ``y = x̃ Θᵀ`` on the input rows their hooks see
(``Θ = [W, b]``); subclasses may override ``forward``, so the type must match exactly."""


def is_affine(module: nn.Module) -> bool:
    """Whether ``module``'s output rows are ``Θ x̃`` of the input rows its hook sees: one of
    :data:`AFFINE_LAYERS` exactly, not parametrized, with no forward pre-hook (which could
    change the input after the hook has read it)."""
    return (type(module) in AFFINE_LAYERS and not parametrize.is_parametrized(module)
            and not module._forward_pre_hooks)


def theta(module: nn.Module) -> Tensor:
    """``Θ = [W, b]`` of an affine layer, float64 ``[out, in + 1]`` (b = 0 without bias)."""
    w = module.weight.detach().to(torch.float64)
    b = (module.bias.detach().to(torch.float64) if module.bias is not None
         else w.new_zeros(w.shape[0]))
    return torch.cat([w, b.unsqueeze(1)], dim=1)


class LayerHook:
    """Accumulate ``Σ x̃x̃ᵀ``, ``Σ x̃yᵀ`` (when ``sums.cross`` exists) and the row count
    of every call of one linear layer.

    Subclasses say what the input rows are (:meth:`describe` returns a
    :class:`~gffmerge.models.parts.GramInput`). A Gram shared through ``cache`` (the same
    input reaching several layers in one forward) is formed in a fresh float64 buffer and
    added to ``sums``; one that no other call reads is added by the compiled op to ``sums``
    in place (:meth:`end_forward`). Either way each entry receives the same one-pass sum,
    so the sums are those of recomputing it, bit for bit.

    Cross sums of an affine layer (:func:`is_affine`) are not measured unless
    ``measured_cross``: its output rows are ``y = Θ x̃``, so ``Σ x̃ yᵀ = (Σ x̃ x̃ᵀ) Θᵀ``, formed
    once in float64 from the Gram this hook added (:meth:`remove`). That is the exact
    value of the sums; the measured ones carry the model's own rounding of ``y`` (float32:
    ~1e-7 relative), and the two agree to float64 rounding for a float64 model. The
    weights must not change while the hook is attached (they do not in ``measure``).
    With ``derive_from_zero`` the derived sums are formed from the whole Gram in ``sums``
    (a resumed measurement whose kept cross sums are the raw ones), else from what this
    hook adds.

    ``shared`` (an :class:`~gffmerge.collect.dedup.InputCache` kept across models): a
    layer whose view gives an ``input_key`` (rows that do not depend on the weights, e.g.
    a graph convolution on the raw features) adds the Gram another model measured on the
    same, unchanged tensors instead of forming it again (exact: the same rows). A view
    with ``output_rows`` selects the output rows its input rows describe.
    """

    def __init__(self, module: nn.Module, sums: LayerStats, *, backend: str = "auto",
                 cache: InputCache | None = None, chunk_rows: int | None = None,
                 measured_cross: bool = False, derive_from_zero: bool = False,
                 workspace: Workspace | None = None,
                 shared: InputCache | None = None):
        self.sums = sums
        self.workspace = workspace
        self.shared = shared
        self.backend = backend
        self.cache = cache
        self.chunk_rows = chunk_rows
        self.in_features = module.in_features
        self.out_features = module.out_features
        self._module = module
        self._gram_before = None
        # Whether this layer's rows reach another call of the same forward (set by the
        # cache when one finds them, or when this hook finds another's): such Grams are
        # formed apart and kept for the others; the others go straight into the sums. What
        # a forward showed is remembered per module (:data:`_LEARNED`) for later hooks.
        learned = _LEARNED.get(module) if cache is not None else None
        self.shares = learned is True
        self._keyed = False  # a call of this forward went through the cache
        self._solo = cache is None or learned is False  # no keys: add into the sums
        if sums.cross is not None and not measured_cross and is_affine(module):
            self._gram_before = (torch.zeros_like(sums.gram) if derive_from_zero
                                 else sums.gram.clone())
        # Routes (providers.route_of) of the input signatures checked so far; None: every
        # call checked and routed afresh (a DenseHook's one dense part: nothing to keep).
        self._routes: dict[tuple, str] | None = self._routes_kept()
        self._handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _routes_kept(self) -> dict | None:
        return None

    def describe(self, args: tuple, kwargs: dict) -> GramInput:
        raise NotImplementedError

    def _shared_key(self, args: tuple, kwargs: dict):
        if self.shared is None or not hasattr(self._module, "input_key"):
            return None
        found = self._module.input_key(*args, **kwargs)
        if found is None:
            return None
        tag, tensors = found
        return self.shared.key_of((self.in_features, *tag), tensors)

    def _hook(self, module, args, kwargs, output):
        need_y = self.sums.cross is not None and self._gram_before is None
        skey = self._shared_key(args, kwargs)
        hit = self.shared.get(skey) if skey is not None else None
        if hit is not None and not need_y:  # rows another model measured: add its sums
            gram, rows = hit
            self.sums.gram.add_(gram.to(self.sums.gram.device))
            self.sums.rows += rows
            return
        inp = self.describe(args, kwargs)
        ws = self.workspace
        # An input of a signature this hook has checked before needs its index ranges
        # tested only, and takes the route kept for it (profiled on GNS / rMD17 ethanol:
        # ~60 µs of checks and ~40 µs of routing per structured call, issue 15).
        sig = inp.signature() if self._routes is not None else None
        route = None if sig is None else self._routes.get(sig)
        inp.check(self.in_features, None if ws is None else lambda i: ws.fact(
            "range", i, lambda: (int(i.min()), int(i.max()))), structure=route is None)
        if sig is not None and route is None:
            if len(self._routes) >= _ROUTES_KEPT:  # batches of ever new sizes: start over
                self._routes.clear()
            route = self._routes[sig] = route_of(inp, self.backend, self.chunk_rows)
        solo = self._solo and skey is None and not need_y
        key = self.cache.key(inp) if self.cache is not None and not solo else None
        gram = hit[0] if hit is not None else (self.cache.get(key, user=self)
                                               if key is not None else None)
        if key is not None:
            self._keyed = True
        y = None
        if need_y:
            y = output.detach()
            if hasattr(self._module, "output_rows"):
                y = self._module.output_rows(y)
            y = y.reshape(-1, self.out_features)
        part_key = part_gram = None
        if gram is None and self.cache is not None:
            part = dense_part(inp)  # the dense part alone may be another's input
            if part is not None:
                part_key = self.cache.key(GramInput((part,)))
                part_gram = self.cache.get(part_key)
        acc = self.sums.gram
        keep = key is not None and self.shares  # another call of this forward reads it
        into = (acc if gram is None and not keep and skey is None
                and acc.device == _device_of(inp) else None)
        fresh, cross, fresh_part, added = layer_sums(
            inp, y, gram=gram is None, backend=self.backend, chunk_rows=self.chunk_rows,
            workspace=ws, dense_gram=part_gram, into=into, route=route)
        if part_key is not None and part_gram is None:
            self.cache.put(part_key, fresh_part if self.shares else None, owner=self)
        if gram is None:
            gram = fresh
            if key is not None:
                self.cache.put(key, gram if keep else None, owner=self)
            if skey is not None:
                self.shared.put(skey, (gram, inp.rows))
        if not added:
            acc.add_(gram.to(acc.device))
        if cross is not None:
            self.sums.cross.add_(cross.to(self.sums.cross.device))
        self.sums.rows += inp.rows

    def end_forward(self) -> None:
        """Called after every forward (:meth:`~gffmerge.collect.runner.Collector.end_forward`).

        A layer whose rows no other call of the forward met (nor it another's) adds its
        Grams to the sums directly from then on: no cache key, no separate buffer, no add
        (profiled on GNS and SchNet / rMD17 ethanol: ~30-150 µs a call, ~0.1× the forward
        over all layers, issue 15), and its module is remembered as such for later
        measurements. The first forward keys every call but keeps a Gram only once its rows
        have met another call (the first call on them adds its Gram to the sums directly;
        the second forms it again and keeps it for a third), so it holds no more memory
        than the later ones. Another layer on the same
        rows then forms that Gram itself: the same products, the same sums, bit for bit
        (the compiled ops add each entry's one-pass sum to the accumulator they are given,
        a fresh zero buffer or the sums alike)."""
        if self._keyed:
            if not self.shares:
                self._solo = True
            _LEARNED[self._module] = self.shares
        self._keyed = False

    def flush(self) -> None:
        """Bring an affine layer's cross sums up to date: add ``(G - G₀) Θᵀ``, with ``G₀``
        the Gram at attach time or at the last flush. Call before reading or saving
        ``sums`` while the hook stays attached (e.g. a checkpoint of a partial run);
        :meth:`remove` flushes."""
        if self._gram_before is not None:
            added = self.sums.gram - self._gram_before.to(self.sums.gram.device)
            t = theta(self._module).to(added.device)
            self.sums.cross.add_(added @ t.T)
            self._gram_before = self.sums.gram.clone()

    def remove(self) -> None:
        """Detach the hook and :meth:`flush` the cross sums."""
        self._handle.remove()
        self.flush()
        self._gram_before = None


def _device_of(inp: GramInput) -> torch.device:
    p = inp.parts[0]
    return (p.x if isinstance(p, Dense) else p.src).device


def dense_part(inp: GramInput) -> Dense | None:
    """The one dense part of a structured input whose other parts are all gathered (its
    Gram is then a block of the layer's Gram that another layer may share), else None."""
    rest = [p for p in inp.parts if not isinstance(p, Gathered)]
    if len(rest) == 1 and len(inp.parts) > 1 and isinstance(rest[0], Dense):
        return rest[0]
    return None


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

    def _routes_kept(self) -> dict | None:
        return {}

    def describe(self, args: tuple, kwargs: dict) -> GramInput:
        inp = self._parts(*args, **kwargs)
        if not isinstance(inp, GramInput):
            raise TypeError(f"gram_parts must return a GramInput, got {type(inp).__name__}")
        return inp
