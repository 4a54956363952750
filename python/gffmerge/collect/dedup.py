"""Share one Gram between layers that receive the same input in one forward.

GNS feeds the updated edge features ``e'`` to both attention layers (and, after the last
block, to the force head); their Grams are identical, so the collector forms it once.
A hit must be *exactly* right, so an input is identified by

* the identity of its base tensor (``t._base`` for views), held by a weak reference: a
  freed tensor never matches, and a live one pins its memory, so an address cannot be
  reused by another tensor while its entry can still match;
* the view geometry: data pointer (storage offset included), shape, strides, dtype,
  device, layout;
* autograd's version counter, shared by a base and all its views and bumped by every
  in-place op, so an input modified in place between two layers does not match.

Inference tensors carry no version counter; inputs made under ``torch.inference_mode()``
are therefore never shared (:func:`gffmerge.measure` runs under ``torch.no_grad()``).
Writes that bypass the version counter (through ``.data``, NumPy or DLPack aliases) are
not seen. The cache is cleared after every forward.

An entry may hold no Gram: the rows were seen, but the call that saw them added their Gram
to its sums in place. Finding such an entry tells both hooks that the rows are shared
(:meth:`InputCache.get` sets ``shares``); the finder forms the Gram itself, and from the
next forward on the first reader keeps it (:meth:`~gffmerge.collect.hooks.LayerHook.
end_forward`).
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from ..models.parts import Dense, GramInput


def _tensor_key(t: Tensor | None, refs: list) -> tuple | None:
    """Identity + geometry + version of ``t``; None when it cannot be proven unchanged."""
    if t is None:
        return ("none",)
    if t.layout != torch.strided:  # sparse rows: no single storage to identify
        return None
    try:
        version = t._version
    except RuntimeError:  # inference tensors do not track versions
        return None
    base = t._base if t._base is not None else t
    refs.append(weakref.ref(base))
    return (id(base), t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device,
            t.layout, version)


class InputCache:
    """Grams of the inputs seen so far in the current forward (see the module docstring);
    kept across models instead (``measure(shared=cache)``), it holds the Grams of inputs
    that do not depend on the weights (:meth:`key_of`), with their row counts."""

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[list, Tensor]] = {}
        self.hits = 0

    def key(self, inp: GramInput) -> tuple | None:
        """A key that equals another's only for the same rows, or None (do not share)."""
        refs: list = []
        parts = []
        for p in inp.parts:
            tensors = (p.x,) if isinstance(p, Dense) else (p.src, p.index, p.gate)
            keys = tuple(_tensor_key(t, refs) for t in tensors)
            if any(k is None for k in keys):
                return None
            parts.append((type(p).__name__, p.width, keys))
        return (inp.rows, tuple(parts)), refs

    def dense_key(self, x: Tensor) -> tuple | None:
        """:meth:`key` of ``GramInput.dense(x)`` (the rows of a plain linear layer), without
        building the description: the same key, so a structured layer's dense part finds it."""
        refs: list = []
        k = _tensor_key(x, refs)
        if k is None:
            return None
        width = int(x.shape[-1]) if x.dim() else 0
        rows = x.numel() // width if width else 0
        return (rows, (("Dense", width, (k,)),)), refs

    def key_of(self, tag: tuple, tensors) -> tuple | None:
        """A key for the rows a call forms from ``tensors`` (in order) under ``tag`` (the
        settings that, with the tensors, determine them), or None (do not share)."""
        refs: list = []
        keys = tuple(_tensor_key(t, refs) for t in tensors)
        if any(k is None for k in keys):
            return None
        return ("call", tag, keys), refs

    def get(self, key, user=None) -> Tensor | None:
        """The Gram kept under ``key`` (None when there is none, or when the call that
        saw these rows did not keep their Gram). Finding the entry sets ``shares`` on the
        hook that put it and on ``user``: both learn that their Grams are shared."""
        if key is None:
            return None
        k, _ = key
        entry = self._entries.get(k)
        if entry is None:
            return None
        refs, gram, owner = entry
        if any(r() is None for r in refs):
            del self._entries[k]
            return None
        if owner is not None:
            owner.shares = True
        if user is not None:
            user.shares = True
        if gram is not None:
            self.hits += 1
        return gram

    def put(self, key, gram: Tensor | None, owner=None) -> None:
        """Keep ``gram`` under ``key`` until :meth:`clear` (None: the rows were seen, their
        Gram was not kept); ``owner.shares`` is set when another call finds the entry."""
        if key is not None:
            k, refs = key
            self._entries[k] = (refs, gram, owner)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
