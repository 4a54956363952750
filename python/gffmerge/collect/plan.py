"""A :class:`~gffmerge.models.parts.GramInput` prepared for the block formulas of
:mod:`gffmerge.collect.providers`: parts grouped, columns laid out, scatter groups shared,
plus the chunking that bounds the extra memory."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

import gffmerge_ext

from ..models.parts import Dense, Gathered, GramInput, aggregate_rows
from ..models.parts import gate_of as _gate
from .workspace import Workspace

CHUNK_BYTES = 1 << 23
"""Float64 bytes of one row-chunk buffer (8 MiB): bounds the extra memory."""

F64 = torch.float64


def chunks(n: int, step: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, step):
        yield s, min(n, s + step)


WORKSPACE_CHUNK_BYTES = 1 << 21
"""Float64 bytes of a row chunk kept in a :class:`~gffmerge.collect.workspace.Workspace`
(2 MiB): the buffer outlives the call (no fresh pages per call), so it is kept small to
bound what it adds to the peak memory of a measurement."""


def step_rows(width: int, chunk_rows: int | None, rows: int,
              budget: int = CHUNK_BYTES) -> int:
    """Rows per chunk: ``budget`` bytes of float64 at most, else all rows in one chunk (few
    scatters per layer and batch: profiled on GNS/LiPS20, 16 chunks of a sixteenth of the
    rows per call cost 6 080 ``scatter_add_`` calls where the forward makes 320)."""
    if chunk_rows is not None:
        return max(1, int(chunk_rows))
    return max(1, min(budget // (8 * max(1, width)), rows))


# ---------------------------------------------------------------- block formulas
def bincount(index: Tensor, weights: Tensor | None, n: int) -> Tensor:
    """Float64 ``[n]`` sums of ``weights`` (1 when None) per index value."""
    if weights is None:
        return torch.bincount(index, minlength=n).to(F64)
    return torch.bincount(index, weights=weights, minlength=n)


def same_index(a: Tensor, b: Tensor) -> bool:
    if a is b:
        return True
    if a.shape != b.shape or a.device != b.device:
        return False
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
        return True
    return bool(torch.equal(a, b))


def _same_gate(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.equal(a, b))


def gates_product(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a * b


class Plan:
    """A :class:`GramInput` prepared for the block formulas.

    Dense (and formed aggregated) parts are grouped first, gathered parts after them,
    the ones column last ("internal" order); ``layout[j]`` is the weight column of
    internal column ``j``. Gathered parts with the same index and gate share their
    scatter sums (``group``).
    """

    def __init__(self, inp: GramInput, *, backend: str, chunk_rows: int | None,
                 workspace: Workspace | None = None):
        self.rows = inp.rows
        self.ws = workspace
        self.budget = CHUNK_BYTES if workspace is None else WORKSPACE_CHUNK_BYTES
        self.backend = backend
        self.chunk_rows = chunk_rows
        self.dense: list[Tensor] = []
        self.gathered: list[tuple[Tensor, Tensor, Tensor | None]] = []
        dense_cols: list[int] = []
        gathered_cols: list[int] = []
        col = 0
        for p in inp.parts:
            cols = list(range(col, col + p.width))
            col += p.width
            if isinstance(p, Gathered):
                self.gathered.append((p.src.detach(), p.index.long(), _gate(p.gate)))
                gathered_cols += cols
            elif isinstance(p, Dense):
                self.dense.append(p.x.detach().reshape(-1, p.width))
                dense_cols += cols
            else:
                self.dense.append(aggregate_rows(p, inp.rows,
                                                 step_rows(p.width, chunk_rows, p.src.shape[0])))
                dense_cols += cols
        self.width = col
        self.d_dense = len(dense_cols)
        internal = dense_cols + gathered_cols + [col]
        self.layout = None if internal == list(range(col + 1)) else torch.tensor(internal)
        self.offsets = []
        off = self.d_dense
        for h, _, _ in self.gathered:
            self.offsets.append(off)
            off += h.shape[1]
        # group[q]: the first gathered part with q's index and gate (shared scatter sums)
        self.group = []
        for q, (_, i, g) in enumerate(self.gathered):
            self.group.append(next(p for p in range(q + 1) if p == q or (
                self.group[p] == p and same_index(self.gathered[p][1], i)
                and _same_gate(self.gathered[p][2], g))))
        self.device = (self.dense[0] if self.dense else self.gathered[0][0]).device

    # -- helpers ---------------------------------------------------------------
    def buffer(self, slot: str, rows: int, cols: int) -> Tensor:
        """An uninitialised float64 ``[rows, cols]`` scratch buffer (the workspace's slot,
        else fresh): valid until this plan asks for ``slot`` again."""
        if self.ws is None:
            return torch.empty(rows, cols, dtype=F64, device=self.device)
        return self.ws.buffer(slot, rows, cols, self.device)

    def zeros(self, slot: str, rows: int, cols: int) -> Tensor:
        return self.buffer(slot, rows, cols).zero_()

    def is_sorted(self, index: Tensor) -> bool:
        if self.ws is None:
            return is_sorted(index)
        return self.ws.fact("sorted", index, lambda: is_sorted(index))

    def count(self, index: Tensor, weights: Tensor | None, n: int) -> Tensor:
        """:func:`bincount`; without weights, once per index and forward (read-only)."""
        if weights is not None or self.ws is None:
            return bincount(index, weights, n)
        return self.ws.fact(f"count:{n}", index, lambda: bincount(index, None, n))

    def scatter(self, acc: Tensor, index: Tensor, src: Tensor) -> None:
        """:func:`scatter_rows` with the index's sortedness known per forward."""
        scatter_rows(acc, index, src, self.is_sorted(index) if _long_cpu(acc, src) else None)

    def to_layout(self, m: Tensor, square: bool) -> Tensor:
        if self.layout is None:
            return m
        out = torch.empty_like(m)
        idx = self.layout.to(m.device)
        if square:
            out[idx.unsqueeze(1), idx.unsqueeze(0)] = m
        else:
            out[idx] = m
        return out

    def xty(self, x: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
        """Fresh float64 ``Σ_n w_n x_n y_nᵀ`` (node-level operands; dtypes may differ)."""
        acc = torch.zeros(x.shape[1], y.shape[1], dtype=F64, device=x.device)
        gffmerge_ext.cross_(acc, x, y, weight=weight, backend=self.backend)
        return acc

    def xtx(self, x: Tensor, weight: Tensor | None) -> Tensor:
        acc = torch.zeros(x.shape[1], x.shape[1], dtype=F64, device=x.device)
        gffmerge_ext.gram_(acc, x, weight=weight, backend=self.backend)
        return acc

    def rows_f64(self, s: int, e: int, y: Tensor | None, ones: bool, z: Tensor) -> Tensor:
        """Fill ``z`` (a reused ``[chunk, width]`` float64 buffer) with ``Z = [D, 1, y]`` of
        rows ``s:e`` (the dense group and its ones column only when ``ones``, ``y`` only
        when given) and return the filled rows."""
        z = z[:e - s]
        col = 0
        if ones:
            for x in self.dense:
                z[:, col:col + x.shape[1]].copy_(x[s:e])
                col += x.shape[1]
            z[:, col].fill_(1.0)
            col += 1
        if y is not None:
            z[:, col:].copy_(y[s:e])
        return z

    def join_dense(self) -> None:
        """Concatenate several dense parts into one ``[R, d_dense]`` tensor (in their
        promoted dtype, the size of the layer's input in the forward), so that the dense
        group costs one ``gram_`` and one ``cross_`` instead of a product per pair."""
        if len(self.dense) > 1:
            self.dense = [torch.cat(self.dense, dim=1)]

    def dense_products(self, s: int, e: int, y: Tensor | None, acc_g: Tensor | None,
                       acc_c: Tensor | None) -> None:
        """Add rows ``s:e`` of the dense group to ``acc_g`` (``[D, 1]`` Gram, blockwise:
        ``gram_`` per part, ``cross_`` per pair) and ``acc_c`` (``[D, 1]`` × ``y``)."""
        dd = self.d_dense
        if len(self.dense) == 1:  # straight into the accumulators: their layout is [D, 1]
            x = self.dense[0][s:e]
            if acc_g is not None:
                gffmerge_ext.gram_(acc_g, x, augment=True, backend=self.backend)
            if acc_c is not None:
                gffmerge_ext.cross_(acc_c, x, y[s:e], augment_x=True, backend=self.backend)
            return
        col = 0
        for i, x in enumerate(self.dense):
            w, xi = x.shape[1], x[s:e]
            si = slice(col, col + w)
            if acc_g is not None:
                blk = torch.zeros(w + 1, w + 1, dtype=F64, device=self.device)
                gffmerge_ext.gram_(blk, xi, augment=True, backend=self.backend)
                acc_g[si, si] += blk[:w, :w]
                acc_g[si, dd] += blk[:w, w]
                acc_g[dd, si] += blk[w, :w]
                if i == 0:
                    acc_g[dd, dd] += blk[w, w]
                other = col + w
                for x2 in self.dense[i + 1:]:
                    w2 = x2.shape[1]
                    blk = torch.zeros(w, w2, dtype=F64, device=self.device)
                    gffmerge_ext.cross_(blk, xi, x2[s:e], backend=self.backend)
                    acc_g[si, other:other + w2] += blk
                    acc_g[other:other + w2, si] += blk.T
                    other += w2
            if acc_c is not None:
                blk = torch.zeros(w + 1, y.shape[1], dtype=F64, device=self.device)
                gffmerge_ext.cross_(blk, xi, y[s:e], augment_x=True, backend=self.backend)
                acc_c[si] += blk[:w]
                if i == 0:
                    acc_c[dd] += blk[w]
            col += w

    def pair_product(self, p: int, q: int, gate: Tensor | None) -> Tensor:
        """The ``[d_p, d_q]`` block ``Σ_r g_r H_p[i_p[r]] H_q[i_q[r]]ᵀ`` of two gathered
        parts with different indices, as ``H_pᵀ M`` with ``M = index_add_{i_p}(g H_q[i_q])``
        (or its mirror image when only ``i_q`` is sorted: a sorted scatter is faster),
        chunked over rows."""
        hp, ip, _ = self.gathered[p]
        hq, iq, _ = self.gathered[q]
        flip = self.is_sorted(iq) and not self.is_sorted(ip)
        (ha, ia), (hb, ib) = ((hq, iq), (hp, ip)) if flip else ((hp, ip), (hq, iq))
        m = self.zeros("pair", ha.shape[0], hb.shape[1])
        step = step_rows(hb.shape[1], self.chunk_rows, self.rows, self.budget)
        # node level: gathering float64 rows saves a pass over the edges
        hb64 = self.buffer("node", hb.shape[0], hb.shape[1]).copy_(hb)
        rows64 = self.buffer("rows", min(step, self.rows), hb.shape[1])
        for s, e in chunks(self.rows, step):
            v = torch.index_select(hb64, 0, ib[s:e], out=rows64[:e - s])
            if gate is not None:
                v.mul_(gate[s:e, None])
            if s == 0 and e == self.rows:
                self.scatter(m, ia, v)
            else:
                scatter_rows(m, ia[s:e], v)
        blk = self.xty(ha, m)
        return blk.T if flip else blk


def _long_cpu(acc: Tensor, src: Tensor) -> bool:
    return acc.device.type == "cpu" and src.shape[0] > 16384


def scatter_rows(acc: Tensor, index: Tensor, src: Tensor, sorted_: bool | None = None
                 ) -> None:
    """``acc[index[r]] += src[r]`` for every row r (float64). ``index_add_`` on CPU measured
    1.9x slower than an accumulating ``index_put_`` for ~27 000 rows of 65 columns with an
    unsorted index (3.6 against 2.0 ms), and faster for sorted or short ones. ``sorted_``:
    whether ``index`` is sorted, when the caller knows."""
    if _long_cpu(acc, src) and not (is_sorted(index) if sorted_ is None else sorted_):
        acc.index_put_((index,), src, accumulate=True)
    else:
        acc.index_add_(0, index, src)


def copies_rows(backend: str, device: torch.device) -> bool:
    """Whether ``gram_``/``cross_`` would make float64 copies of whole inputs (the
    pure-torch reference), so that the dense group must be fed in row chunks."""
    backends = getattr(gffmerge_ext, "available_backends", None)
    return backend == "torch" or backends is None or "ext" not in backends(device)


def is_sorted(index: Tensor) -> bool:
    return index.numel() < 2 or bool((index[1:] >= index[:-1]).all())
