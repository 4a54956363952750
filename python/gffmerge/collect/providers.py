"""Structured statistics providers: a layer describes its input rows as parts.

A linear layer whose input row ``r`` is a concatenation ``x_r = [part_1(r), part_2(r), ...]``
of

* **dense** rows (:class:`Dense`): an explicit ``[R, d]`` tensor (edge features, or
  node-level tensors when the rows are nodes);
* **gathered** rows (:class:`Gathered`): ``g_r · H[i_r]`` with node features ``H [N, d]``,
  an index ``i [R]`` and an optional per-row scalar gate ``g [R]`` (attention × cutoff);
* **aggregated** rows (:class:`Aggregated`): ``Σ_{s: i_s = r} g_s · X_s``, a scatter-sum of
  ``S`` source rows into the ``R`` rows of the layer,

opts in to structured statistics by defining ``gram_parts(*args, **kwargs) -> GramInput``,
called with the arguments of its forward. The collector then forms every block of the
augmented Gram ``Σ x̃x̃ᵀ`` (``x̃ = [x, 1]``) but dense × dense from node-level tensors,
degree weights and scatter sums, with no ``[R, d]`` row tensor of gathered parts:

=================================  ===================================================
block                              formed as
=================================  ===================================================
dense D × dense D'                 ``Σ_r D_r D'_rᵀ`` (``gram_`` over chunks of rows)
dense D × gathered (H, i, g)       ``Pᵀ H``, ``P = index_add_i(g · D)``  ``[N, d_D]``
gathered × gathered, same index    ``H₁ᵀ diag(w) H₂``, ``w = index_add_i(g₁ g₂)``  ``[N]``
gathered × gathered, i₁ ≠ i₂       ``H₁ᵀ M``, ``M = index_add_{i₁}(g₁ g₂ H₂[i₂])``
ones × dense D                     ``Σ_r D_r``; ones × gathered: ``Hᵀ c``, ``c = index_add_i(g)``
ones × ones                        ``R``
=================================  ===================================================

and the cross sums ``Σ x̃ yᵀ`` with the layer output ``y [R, out]``: ``Σ_r D_r y_rᵀ`` for
dense parts, ``Hᵀ Q`` with ``Q = index_add_i(g · y)`` for gathered parts, ``Σ y`` for the
ones row. An edge layer on ``[e, h_src, h_dst]`` thus costs ``O(E·d_e² + E·d + N·d²)``
instead of ``O(E·(d_e + 2d)²)``. Aggregated parts are formed in float64 (``[R, d]``, node
level) and then treated as dense.

Every sum is float64. Dense parts go to ``gram_``/``cross_`` as they are (blockwise: one
``gram_`` per part, one ``cross_`` per pair; the compiled ops convert row blocks to float64
internally, and the pure-torch reference gets row chunks). The scatter sums come from one
pass over float64 row chunks ``Z = [D, 1, y]`` of at most :data:`CHUNK_BYTES` (reused
buffers), so no ``[E, d]`` float64 copy is made; the extra memory is ``O(N·d)`` for the
node-level sums plus one chunk. Gates are applied in float64 to the exact model values;
for a float32 model this is *more* exact than a dense hook on ``g * H[i]`` materialised in
float32 (which rounds each product).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

import gffmerge_ext

from ..models.parts import Aggregated, Dense, Gathered, GramInput
from ..models.parts import gate_of as _gate

CHUNK_BYTES = 1 << 23
"""Float64 bytes of one row-chunk buffer (8 MiB): bounds the extra memory."""

F64 = torch.float64


def _chunks(n: int, step: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, step):
        yield s, min(n, s + step)


def _step(width: int, chunk_rows: int | None, rows: int) -> int:
    """Rows per chunk: ``CHUNK_BYTES`` of float64 at most, and at most a sixteenth of the
    rows (at least 512), so the temporaries stay small next to small inputs too."""
    if chunk_rows is not None:
        return max(1, int(chunk_rows))
    return max(1, min(CHUNK_BYTES // (8 * max(1, width)), max(512, -(-rows // 16))))


def _aggregate(p: Aggregated, rows: int, chunk_rows: int | None) -> Tensor:
    """``[rows, d]`` float64 ``Σ_{s: index[s] = r} gate[s] src[s]``, chunked over ``s``."""
    src, index, gate = p.src.detach(), p.index.long(), _gate(p.gate)
    out = torch.zeros(rows, p.width, dtype=F64, device=src.device)
    for s, e in _chunks(src.shape[0], _step(p.width, chunk_rows, src.shape[0])):
        v = src[s:e].to(F64)
        out.index_add_(0, index[s:e], v if gate is None else v * gate[s:e, None])
    return out


# ---------------------------------------------------------------- block formulas
def _bincount(index: Tensor, weights: Tensor | None, n: int) -> Tensor:
    """Float64 ``[n]`` sums of ``weights`` (1 when None) per index value."""
    if weights is None:
        return torch.bincount(index, minlength=n).to(F64)
    return torch.bincount(index, weights=weights, minlength=n)


def _same_index(a: Tensor, b: Tensor) -> bool:
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


def _gates_product(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a * b


class _Plan:
    """A :class:`GramInput` prepared for the block formulas.

    Dense (and formed aggregated) parts are grouped first, gathered parts after them,
    the ones column last ("internal" order); ``layout[j]`` is the weight column of
    internal column ``j``. Gathered parts with the same index and gate share their
    scatter sums (``group``).
    """

    def __init__(self, inp: GramInput, *, backend: str, chunk_rows: int | None):
        self.rows = inp.rows
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
                self.dense.append(_aggregate(p, inp.rows, chunk_rows))
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
                self.group[p] == p and _same_index(self.gathered[p][1], i)
                and _same_gate(self.gathered[p][2], g))))
        self.device = (self.dense[0] if self.dense else self.gathered[0][0]).device

    # -- helpers ---------------------------------------------------------------
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

    def dense_products(self, s: int, e: int, y: Tensor | None, acc_g: Tensor | None,
                       acc_c: Tensor | None) -> None:
        """Add rows ``s:e`` of the dense group to ``acc_g`` (``[D, 1]`` Gram, blockwise:
        ``gram_`` per part, ``cross_`` per pair) and ``acc_c`` (``[D, 1]`` × ``y``)."""
        dd = self.d_dense
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
        flip = _is_sorted(iq) and not _is_sorted(ip)
        (ha, ia), (hb, ib) = ((hq, iq), (hp, ip)) if flip else ((hp, ip), (hq, iq))
        m = torch.zeros(ha.shape[0], hb.shape[1], dtype=F64, device=self.device)
        step = _step(hb.shape[1], self.chunk_rows, self.rows)
        rows = torch.empty(min(step, self.rows), hb.shape[1], dtype=hb.dtype, device=self.device)
        rows64 = torch.empty(rows.shape, dtype=F64, device=self.device)
        for s, e in _chunks(self.rows, step):
            v = torch.index_select(hb, 0, ib[s:e], out=rows[:e - s])
            v = rows64[:e - s].copy_(v)
            if gate is not None:
                v.mul_(gate[s:e, None])
            m.index_add_(0, ia[s:e], v)
        blk = self.xty(ha, m)
        return blk.T if flip else blk


def _copies_rows(backend: str, device: torch.device) -> bool:
    """Whether ``gram_``/``cross_`` would make float64 copies of whole inputs (the
    pure-torch reference), so that the dense group must be fed in row chunks."""
    backends = getattr(gffmerge_ext, "available_backends", None)
    return backend == "torch" or backends is None or "ext" not in backends(device)


def _is_sorted(index: Tensor) -> bool:
    return index.numel() < 2 or bool((index[1:] >= index[:-1]).all())


def _sums(inp: GramInput, y: Tensor | None, *, gram: bool, backend: str,
          chunk_rows: int | None) -> tuple[Tensor | None, Tensor | None]:
    """One pass over the rows for the Gram (when ``gram``) and the cross sums with ``y``."""
    plan = _Plan(inp, backend=backend, chunk_rows=chunk_rows)
    dd = plan.d_dense
    dev = plan.device
    n = plan.width + 1
    if y is not None:
        y = y.detach()
        y = y.reshape(-1, y.shape[-1]) if y.dim() != 2 else y
        if y.shape[0] != plan.rows:
            raise ValueError(f"layer output has {y.shape[0]} rows but its GramInput "
                             f"{plan.rows}")
    out = 0 if y is None else y.shape[1]
    leaders = [q for q in range(len(plan.gathered)) if plan.group[q] == q]

    # -- dense group: Gram and cross sums from the parts as they are --------------------
    # (gram_/cross_ convert rows to float64 block by block; in row chunks when the backend
    # would copy whole inputs to float64, i.e. the pure-torch reference)
    acc_g = torch.zeros(dd + 1, dd + 1, dtype=F64, device=dev) if gram and dd else None
    acc_c = torch.zeros(dd + 1, out, dtype=F64, device=dev) if y is not None and dd else None
    if acc_g is not None or acc_c is not None:
        step = (_step(dd + 1 + out, chunk_rows, plan.rows)
                if chunk_rows is not None or _copies_rows(backend, dev) else plan.rows)
        for s, e in _chunks(plan.rows, max(step, 1)):
            plan.dense_products(s, e, y, acc_g, acc_c)

    # -- scatter sums per gathered index: one pass over float64 chunks Z = [D, 1, y] -----
    cols_p = dd + 1 if gram and dd else 0
    width = cols_p + out
    y_sum = torch.zeros(out, dtype=F64, device=dev) if y is not None and not dd else None
    scat = {q: torch.zeros(plan.gathered[q][0].shape[0], width, dtype=F64, device=dev)
            for q in leaders} if width else {}
    if scat or y_sum is not None:
        # buffers reused across chunks (fresh pages for every chunk cost more than the copy)
        step = _step(width, chunk_rows, plan.rows)
        z_buf = torch.empty(min(step, plan.rows), width, dtype=F64, device=dev)
        gated = any(plan.gathered[q][2] is not None for q in scat)
        g_buf = torch.empty_like(z_buf) if gated else None
        for s, e in _chunks(plan.rows, step):
            z = plan.rows_f64(s, e, y, bool(cols_p), z_buf)
            if y_sum is not None:
                y_sum += z[:, cols_p:].sum(0)
            for q in scat:
                _, index, gate = plan.gathered[q]
                src = z if gate is None else torch.mul(z, gate[s:e, None], out=g_buf[:e - s])
                scat[q].index_add_(0, index[s:e], src)
    # column views (gram_/cross_ take any strides)
    scat_p = {q: t[:, :cols_p] for q, t in scat.items()} if cols_p else {}
    scat_y = {q: t[:, cols_p:] for q, t in scat.items()} if y is not None else {}

    # -- node-level products -------------------------------------------------------------
    g_out = None
    if gram:
        g_out = torch.zeros(n, n, dtype=F64, device=dev)
        if acc_g is not None:
            g_out[:dd, :dd] = acc_g[:dd, :dd]
            g_out[:dd, -1] = acc_g[:dd, dd]
            g_out[-1, :dd] = acc_g[dd, :dd]
            g_out[-1, -1] = acc_g[dd, dd]
        else:
            g_out[-1, -1] = float(plan.rows)
        for q, (h, index, gate) in enumerate(plan.gathered):
            sq = slice(plan.offsets[q], plan.offsets[q] + h.shape[1])
            n_nodes = h.shape[0]
            g_out[sq, sq] = plan.xtx(h, _bincount(index, None if gate is None else gate * gate,
                                                  n_nodes))
            if dd:
                # P = index_add_i(g · [D, 1]); PᵀH: dense × gathered and ones × gathered
                blk = plan.xty(scat_p[plan.group[q]], h)
                g_out[:dd, sq] = blk[:dd]
                g_out[sq, :dd] = blk[:dd].T
                col_sum = blk[dd]
            else:
                col_sum = plan.xty(h, _bincount(index, gate, n_nodes).unsqueeze(1))[:, 0]
            g_out[-1, sq] = col_sum
            g_out[sq, -1] = col_sum
            for p in range(q):
                h1, i1, g1 = plan.gathered[p]
                s1 = slice(plan.offsets[p], plan.offsets[p] + h1.shape[1])
                gg = _gates_product(g1, gate)
                if _same_index(i1, index):
                    blk = plan.xty(h1, h, weight=_bincount(i1, gg, h1.shape[0]))
                else:
                    blk = plan.pair_product(p, q, gg)
                g_out[s1, sq] = blk
                g_out[sq, s1] = blk.T
        g_out = plan.to_layout(g_out, square=True)

    c_out = None
    if y is not None:
        c_out = torch.zeros(n, out, dtype=F64, device=dev)
        if acc_c is not None:
            c_out[:dd] = acc_c[:dd]
            c_out[-1] = acc_c[dd]
        else:
            c_out[-1] = y_sum
        for q, (h, _, _) in enumerate(plan.gathered):
            off = plan.offsets[q]
            c_out[off:off + h.shape[1]] = plan.xty(h, scat_y[plan.group[q]])
        c_out = plan.to_layout(c_out, square=False)
    return g_out, c_out


def gram_of(inp: GramInput, *, backend: str = "auto", chunk_rows: int | None = None) -> Tensor:
    """The augmented Gram ``Σ_r x̃_r x̃_rᵀ`` of ``inp``'s rows: a fresh ``[W+1, W+1]`` float64.

    ``W`` is ``inp.width``; the last row/column is the ones column (its corner is R).
    Blocks follow the module docstring; ``chunk_rows`` overrides the row chunk size.
    """
    return _sums(inp, None, gram=True, backend=backend, chunk_rows=chunk_rows)[0]


def cross_of(inp: GramInput, y: Tensor, *, backend: str = "auto",
             chunk_rows: int | None = None) -> Tensor:
    """The cross sums ``Σ_r x̃_r y_rᵀ`` of ``inp``'s rows with ``y [R, out]``: a fresh
    ``[W+1, out]`` float64 (last row: ``Σ y``)."""
    return _sums(inp, y, gram=False, backend=backend, chunk_rows=chunk_rows)[1]


def sums_of(inp: GramInput, y: Tensor | None = None, *, gram: bool = True,
            backend: str = "auto", chunk_rows: int | None = None
            ) -> tuple[Tensor | None, Tensor | None]:
    """``(gram_of(inp), cross_of(inp, y))`` in one pass over the rows; either may be
    skipped (``gram=False``, ``y=None``) and is then None."""
    return _sums(inp, y, gram=gram, backend=backend, chunk_rows=chunk_rows)
