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

On the CPU, the Gram of an input that is at most one dense part followed by
gathered parts (GNS's edge layers, ``[e, h[sender], h[receiver]]``) is one compiled call,
``gffmerge_ext.parts_gram_``: the same blocks from the same float64 node-level sums, formed
in one pass over the rows with no float64 row chunks, scatters or Python per block
(profiled on GNS / rMD17 ethanol: ~4.6 ms of Python and torch calls per edge layer and batch
before, issue 15).

Sparse dense parts (bag-of-words rows) go to :mod:`gffmerge.collect.sparse` instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

import gffmerge_ext

from ..models.parts import Dense, Gathered, GramInput
from .plan import (
    CHUNK_BYTES,
    F64,
    Plan,
    chunks,
    copies_rows,
    gates_product,
    same_index,
    scatter_rows,
    step_rows,
)
from .sparse import has_sparse, sparse_sums
from .workspace import Workspace

__all__ = ["CHUNK_BYTES", "cross_of", "gram_of", "sums_of"]


def _output_rows(y: Tensor | None, rows: int) -> Tensor | None:
    if y is None:
        return None
    y = y.detach()
    y = y.reshape(-1, y.shape[-1]) if y.dim() != 2 else y
    if y.shape[0] != rows:
        raise ValueError(f"layer output has {y.shape[0]} rows but its GramInput {rows}")
    return y


def _one_dense(inp: GramInput, y: Tensor | None, gram: bool, backend: str,
               into: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """The sums of dense parts only (a plain ``nn.Linear``, or GNS's node-MLP
    ``ConcatLinear`` on ``[h, received, sent]``): one ``gram_`` and one ``cross_`` on the rows
    as they are (several parts concatenated in their promoted dtype first), the same products
    as the general path makes for them. ``into``: the Gram is added there (None returned)."""
    parts = inp.parts
    if len(parts) == 1:
        x = parts[0].x.detach().reshape(-1, parts[0].width)
    else:
        x = torch.cat([p.x.detach().reshape(-1, p.width) for p in parts], dim=1)
    width = x.shape[1]
    y = _output_rows(y, inp.rows)
    g = c = None
    if gram and into is not None:
        gffmerge_ext.gram_(into, x, augment=True, backend=backend)
    elif gram:
        g = torch.zeros(width + 1, width + 1, dtype=F64, device=x.device)
        gffmerge_ext.gram_(g, x, augment=True, backend=backend)
    if y is not None:
        c = torch.zeros(width + 1, y.shape[1], dtype=F64, device=x.device)
        gffmerge_ext.cross_(c, x, y, augment_x=True, backend=backend)
    return g, c


def _fusable(inp: GramInput, backend: str) -> bool:
    """Whether the compiled ``parts_gram_`` forms this input's Gram: gathered parts after at
    most one dense part (so the weight columns are already in the op's order), on a device
    the op has a kernel for."""
    parts = inp.parts
    first = 1 if isinstance(parts[0], Dense) else 0
    if backend not in ("auto", "ext") or first == len(parts) or not all(
            type(p) is Gathered for p in parts[first:]):
        return False
    return _device(inp).type in gffmerge_ext.parts_gram_devices()


def _flat_gate(gate: Tensor | None) -> Tensor | None:
    if gate is None:
        return None
    gate = gate.detach().reshape(-1)
    return gate if gate.dtype in (torch.float32, F64) else gate.to(F64)


_DENSE_BLOCKS: dict[tuple[int, int, torch.device], Tensor] = {}


def _dense_block(width: int, n: int, device: torch.device) -> Tensor:
    """Flat positions in an ``[n, n]`` Gram of its ``[D, 1]`` block, ``D`` its first
    ``width`` columns (row-major ``[width + 1, width + 1]`` order; kept): one
    ``index_add_``/``index_copy_``/``take`` per call instead of a broadcast advanced index
    (profiled on GNS / rMD17 ethanol: ~90 against ~11 µs per edge layer call, issue 15)."""
    key = (width, n, device)
    flat = _DENSE_BLOCKS.get(key)
    if flat is None:
        cols = torch.cat([torch.arange(width), torch.tensor([n - 1])])
        flat = _DENSE_BLOCKS[key] = (cols.unsqueeze(1) * n + cols).reshape(-1).to(device)
    return flat


def _parts_gram(inp: GramInput, backend: str, dense_gram: Tensor | None,
                into: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """The Gram of a :func:`_fusable` input in one ``parts_gram_`` call, and the ``[D, 1]``
    Gram of its dense part (None without one). A known ``dense_gram`` is put in place and
    not formed again. ``into``: the Gram is added there instead (None returned, and the
    part's Gram only when it was known): the op adds to each entry once, so the sums are
    those of adding a fresh Gram, bit for bit."""
    parts = inp.parts
    dense = parts[0] if isinstance(parts[0], Dense) else None
    gathered = parts[1:] if dense is not None else parts
    x = None if dense is None else dense.x.detach().reshape(-1, dense.width)
    n = inp.width + 1
    g = torch.zeros(n, n, dtype=F64, device=_device(inp)) if into is None else into
    known = dense_gram is not None and dense is not None
    flat = None if dense is None else _dense_block(dense.width, n, g.device)
    if known:
        # each entry of the block receives its sum once: the same additions (or, into a
        # fresh zero Gram, the same values) as an element-wise add or assignment
        block = dense_gram.reshape(-1).to(g.dtype)
        if into is None:
            g.view(-1).index_copy_(0, flat, block)
        else:
            g.view(-1).index_add_(0, flat, block)
    gffmerge_ext.parts_gram_(g, x, [p.src.detach() for p in gathered],
                             [p.index for p in gathered], [_flat_gate(p.gate) for p in gathered],
                             not known, backend=backend)
    if dense is None:
        return (None if into is not None else g), None
    if into is not None:
        return None, dense_gram if known else None
    side = dense.width + 1
    return g, dense_gram if known else g.reshape(-1).take(flat).reshape(side, side)


def one_dense_part(inp: GramInput) -> bool:
    return len(inp.parts) == 1 and isinstance(inp.parts[0], Dense)


def dense_parts_only(inp: GramInput) -> bool:
    return all(isinstance(p, Dense) for p in inp.parts)


def route_of(inp: GramInput, backend: str, chunk_rows: int | None) -> str:
    """Which path of :func:`_sums` forms ``inp``'s sums: ``"sparse"``, ``"dense"`` (dense
    parts only, compiled ops), ``"fused"`` (``parts_gram_`` for the Gram) or ``"blocks"``.
    It depends on the parts' types, layouts and device only (what
    :meth:`~gffmerge.models.parts.GramInput.signature` records), so a hook may keep it
    per signature."""
    if has_sparse(inp):
        return "sparse"
    if dense_parts_only(inp) and chunk_rows is None and not copies_rows(backend, _device(inp)):
        return "dense"
    if chunk_rows is None and _fusable(inp, backend):
        return "fused"
    return "blocks"


def _sums(inp: GramInput, y: Tensor | None, *, gram: bool, backend: str,
          chunk_rows: int | None, workspace: Workspace | None = None,
          dense_gram: Tensor | None = None, into: Tensor | None = None,
          route: str | None = None
          ) -> tuple[Tensor | None, Tensor | None, Tensor | None, bool]:
    """One pass over the rows for the Gram (when ``gram``) and the cross sums with ``y``;
    also returns the ``[D, 1]`` Gram of the dense group when it is one dense part (what
    a plain layer on that part forms; ``dense_gram`` gives it instead of forming it), and
    whether the Gram was added to ``into`` (the compiled one-call paths; then None is
    returned for it) rather than returned."""
    if route is None:
        route = route_of(inp, backend, chunk_rows)
    if route == "sparse":
        g, c = sparse_sums(inp, y, gram=gram)
        return g, c, None, False
    if route == "dense":
        g, c = _one_dense(inp, y, gram, backend, into)
        return g, c, g if len(inp.parts) == 1 else None, gram and into is not None
    if gram and route == "fused":
        # the Gram from one call whether or not cross sums are asked for (the same Gram
        # either way); cross sums with y from the block path below
        g, part = _parts_gram(inp, backend, dense_gram, into)
        c = None if y is None else _sums(inp, y, gram=False, backend=backend, chunk_rows=None,
                                         workspace=workspace)[1]
        return g, c, part, into is not None
    plan = Plan(inp, backend=backend, chunk_rows=chunk_rows, workspace=workspace)
    dd = plan.d_dense
    dev = plan.device
    n = plan.width + 1
    y = _output_rows(y, plan.rows)
    out = 0 if y is None else y.shape[1]
    single = len(plan.dense) == 1 and isinstance(next(
        p for p in inp.parts if not isinstance(p, Gathered)), Dense)
    leaders = [q for q in range(len(plan.gathered)) if plan.group[q] == q]

    # -- dense group: Gram and cross sums from the parts as they are --------------------
    # (gram_/cross_ convert rows to float64 block by block; in row chunks when the backend
    # would copy whole inputs to float64, i.e. the pure-torch reference)
    known = dense_gram is not None and gram and single
    acc_g = torch.zeros(dd + 1, dd + 1, dtype=F64, device=dev) if (
        gram and dd and not known) else None
    acc_c = torch.zeros(dd + 1, out, dtype=F64, device=dev) if y is not None and dd else None
    if acc_g is not None or acc_c is not None:
        chunked = chunk_rows is not None or copies_rows(backend, dev)
        if not chunked:
            plan.join_dense()
        step = step_rows(dd + 1 + out, chunk_rows, plan.rows) if chunked else plan.rows
        for s, e in chunks(plan.rows, max(step, 1)):
            plan.dense_products(s, e, y, acc_g, acc_c)
    if known:
        acc_g = dense_gram

    # -- scatter sums per gathered index: one pass over float64 chunks Z = [D, 1, y] -----
    cols_p = dd + 1 if gram and dd else 0
    width = cols_p + out
    y_sum = torch.zeros(out, dtype=F64, device=dev) if y is not None and not dd else None
    scat = {q: plan.zeros(f"scatter{q}", plan.gathered[q][0].shape[0], width)
            for q in leaders} if width else {}
    if scat or y_sum is not None:
        # buffers reused across chunks (fresh pages for every chunk cost more than the copy)
        step = step_rows(width, chunk_rows, plan.rows, plan.budget)
        z_buf = plan.buffer("rows", min(step, plan.rows), width)
        gated = any(plan.gathered[q][2] is not None for q in scat)
        g_buf = plan.buffer("gated", z_buf.shape[0], width) if gated else None
        for s, e in chunks(plan.rows, step):
            z = plan.rows_f64(s, e, y, bool(cols_p), z_buf)
            if y_sum is not None:
                y_sum += z[:, cols_p:].sum(0)
            for q in scat:
                _, index, gate = plan.gathered[q]
                src = z if gate is None else torch.mul(z, gate[s:e, None], out=g_buf[:e - s])
                if s == 0 and e == plan.rows:
                    plan.scatter(scat[q], index, src)
                else:
                    scatter_rows(scat[q], index[s:e], src)
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
            g_out[sq, sq] = plan.xtx(h, plan.count(index, None if gate is None else gate * gate,
                                                    n_nodes))
            if dd:
                # P = index_add_i(g · [D, 1]); PᵀH: dense × gathered and ones × gathered
                blk = plan.xty(scat_p[plan.group[q]], h)
                g_out[:dd, sq] = blk[:dd]
                g_out[sq, :dd] = blk[:dd].T
                col_sum = blk[dd]
            else:
                col_sum = plan.xty(h, plan.count(index, gate, n_nodes).unsqueeze(1))[:, 0]
            g_out[-1, sq] = col_sum
            g_out[sq, -1] = col_sum
            for p in range(q):
                h1, i1, g1 = plan.gathered[p]
                s1 = slice(plan.offsets[p], plan.offsets[p] + h1.shape[1])
                gg = gates_product(g1, gate)
                if same_index(i1, index):
                    blk = plan.xty(h1, h, weight=plan.count(i1, gg, h1.shape[0]))
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
    return g_out, c_out, acc_g if single else None, False


def _device(inp: GramInput) -> torch.device:
    p = inp.parts[0]
    return (p.x if isinstance(p, Dense) else p.src).device


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
            backend: str = "auto", chunk_rows: int | None = None,
            workspace: Workspace | None = None) -> tuple[Tensor | None, Tensor | None]:
    """``(gram_of(inp), cross_of(inp, y))`` in one pass over the rows; either may be
    skipped (``gram=False``, ``y=None``) and is then None. ``workspace``: scratch buffers
    and index facts shared across calls (:mod:`gffmerge.collect.workspace`)."""
    return _sums(inp, y, gram=gram, backend=backend, chunk_rows=chunk_rows,
                 workspace=workspace)[:2]


def layer_sums(inp: GramInput, y: Tensor | None, *, gram: bool, backend: str,
               chunk_rows: int | None, workspace: Workspace | None,
               dense_gram: Tensor | None, into: Tensor | None = None,
               route: str | None = None
               ) -> tuple[Tensor | None, Tensor | None, Tensor | None, bool]:
    """:func:`sums_of` for a layer hook: also returns the augmented Gram ``[D, 1]`` of the
    input's dense part when there is exactly one (else None), and takes it as
    ``dense_gram`` when another layer of the same forward formed it already (GNS: the
    edge features ``e`` of an edge layer are the previous block's attention input).
    ``into`` (the layer's Gram sums, when no other call shares this Gram): the compiled
    one-call paths add the Gram there, and the last element says whether that happened
    (the Gram returned is then None); other paths return it as usual. ``route``: that
    of :func:`route_of` for this input, when the caller kept it."""
    return _sums(inp, y, gram=gram, backend=backend, chunk_rows=chunk_rows,
                 workspace=workspace, dense_gram=dense_gram, into=into, route=route)
