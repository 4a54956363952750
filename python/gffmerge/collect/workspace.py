"""Scratch memory and index facts shared by the hooks of one measurement.

Two fixed costs per layer call that profiling found on small batches (GNS on rMD17
ethanol, 64 frames, issue 15):

* **Fresh pages.** A structured edge layer fills ``[E, d]`` float64 row buffers (the
  scatter rows ``Z = [D, 1, y]``, the gathered rows of a pair product) and ``[N, d]``
  float64 scatter sums. Freshly allocated buffers of that size come from ``mmap`` and
  are faulted in page by page on first touch: 1.9 ms for the 2.4 MB row buffer of 4 608
  edges, against 0.06 ms for the gather that fills it. :class:`Workspace` keeps one
  buffer per slot for the whole measurement (grown when a larger batch needs it), so the
  pages are faulted once.
* **Facts about an index re-derived per layer.** The edge index of a batch reaches every
  edge layer; whether a row of it is sorted, its degree counts and its range are computed
  once per forward (:meth:`Workspace.fact`) and forgotten after it
  (:meth:`Workspace.end_forward`). An index is recognised as in
  :mod:`gffmerge.collect.dedup` (identity of its base tensor, view geometry, version
  counter), so an index changed in place is never taken for the old one.

The buffers only ever hold intermediate values of one call; results are unchanged bit for
bit. Memory: the largest row buffer of a batch stays allocated until the measurement ends.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

F64 = torch.float64


def index_key(t: Tensor) -> tuple | None:
    """Identity, geometry and version of an index tensor; None when it has no version
    counter (an inference tensor), so that nothing is remembered about it."""
    try:
        version = t._version
    except RuntimeError:
        return None
    base = t._base if t._base is not None else t
    return (id(base), t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device,
            version), base


class Workspace:
    """Reusable float64 buffers (:meth:`buffer`) and per-forward index facts
    (:meth:`fact`); see the module docstring."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.device], Tensor] = {}
        self._facts: dict[tuple, tuple[weakref.ref, Any]] = {}

    def buffer(self, slot: str, rows: int, cols: int, device: torch.device) -> Tensor:
        """An uninitialised contiguous ``[rows, cols]`` float64 view of slot ``slot``'s
        buffer. A later call for the same slot returns the same memory: a caller must be
        done with a slot's view before asking for that slot again."""
        n = max(0, int(rows)) * max(0, int(cols))
        key = (slot, torch.device(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n + n // 4, dtype=F64, device=device)  # some room to grow
            self._buffers[key] = buf
        return buf[:n].view(rows, cols)

    def zeros(self, slot: str, rows: int, cols: int, device: torch.device) -> Tensor:
        """:meth:`buffer`, filled with zeros."""
        return self.buffer(slot, rows, cols, device).zero_()

    def fact(self, name: str, index: Tensor, compute: Callable[[], Any]) -> Any:
        """``compute()``, remembered for ``index`` under ``name`` until
        :meth:`end_forward` (computed every time for an index without version counter)."""
        got = index_key(index)
        if got is None:
            return compute()
        key, base = got
        entry = self._facts.get((name, key))
        if entry is not None and entry[0]() is base:
            return entry[1]
        value = compute()
        self._facts[(name, key)] = (weakref.ref(base), value)
        return value

    def end_forward(self) -> None:
        """Forget the index facts (after every forward)."""
        self._facts.clear()

    def release(self) -> None:
        """Free the buffers and forget the facts (the measurement is over)."""
        self._buffers.clear()
        self._facts.clear()
