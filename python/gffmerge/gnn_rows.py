"""Every row option of a GNN merge from one forward per source, and its ridge path.

The row options of :mod:`gffmerge.gnn_select` (all nodes | own labelled nodes | own nodes
and their neighbours) select rows of the *same* forward: a unit's input rows on all nodes
are formed once per source (:func:`source_rows`; a first layer on the raw features, whose
rows do not depend on the weights, once for every source on the same graph), and each
option's statistics are row subsets of them. The options are nested (own ⊂ own+nbr ⊂
all), so their Grams are cumulative sums over disjoint blocks (:func:`nested_grams`): one
full Gram's work for all of them, sparse products where the rows are sparse.

:func:`option_path` solves one option's systems for every ridge with one factorisation per
distinct system (:mod:`gffmerge.solver.ridge_path`): the sources' mean where every source
has the same rows (equal weights, mean prior: exact), the dual kernel route where the
option has fewer rows than columns (a first layer on the own nodes), else the Gram route.
The systems are those of ``method="gffmerge"`` with ``ridge_mode="relative"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gffmerge_ext import gram_

from .collect.sparse import (
    coo_of_csr,
    csr_matmul,
    csr_of_dense,
    dense_of,
    has_sparse,
    joined_rows,
    quiet_sparse,
)
from .models.groups import GroupView, linear_units
from .solver.ridge_path import dual_path, primal_path, trace_of
from .solver.state import layer_theta

F64 = torch.float64

ROWS = ("all", "own", "own+nbr")
"""Row options (see :mod:`gffmerge.gnn_select`): every node, the source's labelled
training nodes, those and their neighbours."""


def row_nodes(task, rows: str) -> Tensor | None:
    """The destination nodes measured for ``task``'s source (None: all nodes)."""
    if rows not in ROWS:
        raise ValueError(f"rows={rows!r} is not valid; choose one of {', '.join(ROWS)}")
    if rows == "all" or task.is_lp:
        return None
    own = task.node_labels(task.graph.train_mask)[0]
    if rows == "own":
        return own
    mark = torch.zeros(task.graph.num_nodes, dtype=torch.bool)
    mark[own] = True
    src, dst = task.edges[0], task.edges[1]
    near = mark.clone()
    near[dst[mark[src]]] = True
    near[src[mark[dst]]] = True
    return near.nonzero().flatten()


class UnitRows:
    """One unit's augmented input rows ``[x, 1]`` on every node of one source's graph
    (float64; sparse COO when the input is sparse), and the identity of rows that do not
    depend on the weights (``key``; None: they do).

    Given as the matrix ``x``, or (:meth:`formed`, a unit on fixed inputs such as the raw
    features) by the unit's view and input: then the rows of the nodes asked for are formed
    on demand (:meth:`take`), the whole matrix only when it is used (:attr:`x`), and
    :meth:`matmul` multiplies without forming the rows at all (the parts are linear in the
    input: ``[L₁X, …, LₚX, 1] Θ = Σᵢ Lᵢ(X Θᵢ) + θ_b``, exact)."""

    def __init__(self, x: Tensor | None, key: tuple | None):
        self._x, self.key = x, key
        self._src: tuple | None = None
        self._csr = None
        self._inputs: dict = {}

    @classmethod
    def formed(cls, view: GroupView, inp: Tensor, edges: Tensor, bias: bool,
               key: tuple) -> UnitRows:
        """Rows of ``view``'s unit on the fixed input ``inp`` (float64, sparse or dense)."""
        rows = cls(None, key)
        rows._src = (view, inp, edges, bias)
        return rows

    @property
    def x(self) -> Tensor:
        if self._x is None:
            self._x = self._form(None)
        return self._x

    @property
    def num_rows(self) -> int:
        return int(self._x.shape[0] if self._src is None else self._src[1].shape[0])

    @property
    def dim(self) -> int:
        if self._src is None:
            return int(self._x.shape[1])
        return self._src[0].in_features + int(self._src[3])

    @property
    def sparse(self) -> bool:
        if self._src is not None:
            return self._src[1].layout != torch.strided
        return self._x.layout != torch.strided

    def _form(self, nodes: Tensor | None) -> Tensor:
        from .models.pyg import node_rows

        view, inp, edges, bias = self._src
        with node_rows(nodes):
            return _augmented(view.gram_parts(inp, edges), bias)

    def matmul(self, theta: Tensor, nodes: Tensor | None = None,
               support: Tensor | None = None) -> Tensor:
        """``X̃ Θ`` on all rows (dense; a CSR product for sparse rows, converted once). Rows
        formed on demand also give it on ``nodes`` alone, with the input's products formed
        on the input rows of ``support`` alone (a boolean mask that must hold every input
        row those nodes' rows read: for one propagation, the nodes and their neighbours)."""
        if self._src is not None:
            return self._linear(theta, nodes, support)
        if nodes is not None or support is not None:
            raise ValueError("rows given as a matrix are multiplied on all nodes")
        if not self.sparse:
            return self.x @ theta
        if self._csr is None:
            with quiet_sparse():
                self._csr = self.x.to_sparse_csr()
        return csr_matmul(self._csr, theta)

    def _input_on(self, support: Tensor | None) -> Tensor:
        """The unit's input (CSR when sparse), rows outside ``support`` zero (kept)."""
        inp = self._src[1]
        key = None if support is None else id(support)
        if key not in self._inputs:
            if support is None:
                sub = inp
            elif inp.layout == torch.strided:
                sub = inp * support[:, None]
            else:
                idx, vals = inp.indices(), inp.values()
                keep = support[idx[0]]
                sub = torch.sparse_coo_tensor(idx[:, keep], vals[keep], inp.shape,
                                              is_coalesced=True, check_invariants=False)
            with quiet_sparse():
                sub = sub.to_sparse_csr() if sub.layout != torch.strided else sub
            self._inputs[key] = (sub, support)  # the mask kept alive with the entry
        return self._inputs[key][0]

    def _linear(self, theta: Tensor, nodes: Tensor | None, support: Tensor | None
                ) -> Tensor:
        from .models.pyg import node_rows

        view, inp, edges, bias = self._src
        d, out = inp.shape[1], theta.shape[1]
        n_parts = (theta.shape[0] - int(bias)) // d
        if n_parts * d + int(bias) != theta.shape[0]:
            raise ValueError(f"Θ has {theta.shape[0]} rows; the unit's rows have "
                             f"{self.dim} ({d} per part)")
        m = torch.cat([theta[i * d:(i + 1) * d] for i in range(n_parts)], 1)
        x = self._input_on(support)
        xm = csr_matmul(x, m) if x.layout != torch.strided else x @ m
        with node_rows(nodes):
            parts = view.gram_parts(xm, edges).parts
        if len(parts) != n_parts:
            raise ValueError(f"the unit's input has {len(parts)} parts, Θ {n_parts}")
        h = 0.0
        for i, p in enumerate(parts):
            blk = p.x if p.x.layout == torch.strided else p.x.to_dense()
            h = h + blk.reshape(-1, n_parts * out)[:, i * out:(i + 1) * out]
        return h + theta[-1] if bias else h

    def take(self, nodes: Tensor | None) -> Tensor:
        """The rows of ``nodes`` (None: all)."""
        if nodes is None:
            return self.x
        if self._x is None:
            return self._form(nodes)
        if self.sparse:
            return self._x.index_select(0, nodes).coalesce()
        return self._x.index_select(0, nodes)


def check_units(backbone: nn.Module) -> dict[str, GroupView]:
    """The backbone's units when every one is a linear group measured from its module's
    arguments (PyG's GCNConv / SAGEConv), else ``ValueError`` saying which is not."""
    units = linear_units(backbone)
    views = {}
    for name, unit in units.items():
        if not isinstance(unit.view, GroupView):
            raise ValueError(f"unit '{name}' is no graph convolution group; the one-pass "
                             "choice covers GCNConv / SAGEConv backbones")
        views[name] = unit.view
    return views


def _augmented(inp, bias: bool) -> Tensor:
    if has_sparse(inp):
        with quiet_sparse():
            x = joined_rows(inp)
            return coo_of_csr(_with_ones(x) if bias else x)
    x = inp.materialize().to(F64)
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], 1) if bias else x


def _with_ones(x: Tensor) -> Tensor:
    """CSR rows ``[x, 1]``: a column of ones after the last one, appended to every row by
    index arithmetic (the entries of the coalesced ``cat([x, ones], 1)``, no sort)."""
    crow, col, val = x.crow_indices(), x.col_indices(), x.values()
    rows, width = x.shape
    counts = crow[1:] - crow[:-1]
    row_of = torch.repeat_interleave(torch.arange(rows), counts, output_size=col.shape[0])
    new_crow = crow + torch.arange(rows + 1)
    new_col = torch.empty(col.shape[0] + rows, dtype=col.dtype)
    new_val = torch.empty(col.shape[0] + rows, dtype=val.dtype)
    at = torch.arange(col.shape[0]) + row_of  # each row's entries, shifted by the ones before
    new_col[at], new_val[at] = col, val
    new_col[new_crow[1:] - 1], new_val[new_crow[1:] - 1] = width, 1.0
    return torch.sparse_csr_tensor(new_crow, new_col, new_val, (rows, width + 1),
                                   check_invariants=False)


def _stacked(blocks: Sequence[Tensor]) -> Tensor:
    """Coalesced COO row blocks one under another, coalesced (the entries stay in row, then
    column order: no sort)."""
    if len(blocks) == 1:
        return blocks[0].coalesce()
    blocks = [b.coalesce() for b in blocks]
    offsets = [0]
    for b in blocks[:-1]:
        offsets.append(offsets[-1] + b.shape[0])
    idx = torch.cat([b.indices() + torch.tensor([[o], [0]]) for b, o in zip(blocks, offsets)],
                    1)
    shape = (offsets[-1] + blocks[-1].shape[0], blocks[0].shape[1])
    return torch.sparse_coo_tensor(idx, torch.cat([b.values() for b in blocks]), shape,
                                   is_coalesced=True, check_invariants=False)


def _input64(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """``x`` in float64, as a coalesced sparse COO tensor when it is sparse enough (the
    threshold of :data:`gffmerge.models.pyg.SPARSE_DENSITY`), and its CSR form when one was
    made on the way (dense ``x``: :func:`~gffmerge.collect.sparse.csr_of_dense`; the COO
    tensor shares its columns and values), else None."""
    from .models.pyg import SPARSE_DENSITY

    if x.layout != torch.strided:
        return x.to_sparse_coo().to(F64).coalesce(), None
    if x.dim() == 2:
        csr = csr_of_dense(x, SPARSE_DENSITY)
        if csr is not None:
            return coo_of_csr(csr), csr
    return x.to(F64), None


@torch.no_grad()
def source_rows(backbone: nn.Module, x: Tensor, edges: Tensor,
                shared: dict | None = None, thetas: dict[str, Tensor] | None = None,
                products: dict | None = None) -> dict[str, UnitRows]:
    """Every unit's input rows on all nodes of ``backbone`` on ``(x, edges)``, formed layer
    by layer in float64 (the :class:`~gffmerge.gnn_tasks.Backbone` forward: every unit
    followed by a ReLU); ``shared`` (a dict kept across sources) holds the rows that do not
    depend on the weights (the first unit's, on the raw features), so another source on
    the same tensors reuses them. The first unit's rows are formed only where they are
    used (:meth:`UnitRows.formed`); its output is ``Σᵢ Lᵢ(X Θᵢ) + θ_b`` from the sparse
    features (no dense first layer, no float32 rounding). ``thetas``: the unit weights
    (default: the backbone's); ``products``: a dict that receives the first unit's output
    under ``(id(rows), id(Θ), None)`` (the scoring cache of
    :func:`gffmerge.gnn_one_pass.fast_accuracy`)."""
    from .solver.state import layer_theta

    views = check_units(backbone)
    infos = {n: u.info for n, u in linear_units(backbone).items()}
    state = backbone.state_dict()
    shared = {} if shared is None else shared
    found: dict[str, UnitRows] = {}
    h = x
    for i, (name, view) in enumerate(views.items()):
        bias = infos[name].has_bias
        key = view.input_key(h, edges) if i == 0 else None
        if key is not None:
            tag, tensors = key
            key = (name, tag, tuple(id(t) for t in tensors))
            if key not in shared:  # the tensors are kept alive with the entry
                inp, csr = _input64(h)
                formed = UnitRows.formed(view, inp, edges, bias, key)
                if csr is not None:  # the input's CSR form for products on all rows
                    formed._inputs[None] = (csr, None)
                shared[key] = (formed, tensors)
            rows = shared[key][0]
        else:
            rows = UnitRows(_augmented(view.gram_parts(h, edges), bias), None)
        found[name] = rows
        if i < len(views) - 1:
            theta = thetas[name] if thetas is not None else layer_theta(state, name)[:rows.dim]
            h = rows.matmul(theta)
            if i == 0 and products is not None and rows.key is not None:
                products[(id(rows), id(theta), None)] = (h, theta)  # Θ kept: its id unique
            h = h.relu()
    return found


def gram(block: Tensor) -> Tensor:
    """``XᵀX`` of rows ``X`` (dense float64; a sparse product for sparse rows)."""
    if block.layout == torch.strided:
        acc = torch.zeros(block.shape[1], block.shape[1], dtype=F64, device=block.device)
        gram_(acc, block)  # the lower triangle only: 2x less than XᵀX (2 708 x 257, 1 thread)
        return acc
    with quiet_sparse():
        csr = block.to_sparse_csr()
        prod = csr.t().to_sparse_csr() @ csr
        return dense_of(prod) if prod.layout == torch.sparse_csr else prod.to_dense()


def nested_grams(rows: UnitRows, sets: Sequence[Tensor | None]) -> list[Tensor]:
    """The Gram of each node set of ``sets`` (None: all nodes), each set a subset of the
    next: disjoint blocks, cumulative sums."""
    n = rows.num_rows
    out, done = [], torch.zeros(n, dtype=torch.bool)
    acc = torch.zeros(rows.dim, rows.dim, dtype=F64)
    dense = rows._src is None and not rows.sparse  # rows held as a dense matrix
    for s in sets:
        mark = torch.ones(n, dtype=torch.bool) if s is None else torch.zeros(n, dtype=torch.bool)
        if s is not None:
            mark[s] = True
        if bool((done & ~mark).any()):
            raise ValueError("nested_grams needs each node set to contain the previous one")
        new = (mark & ~done).nonzero().flatten()
        if len(new) and dense:  # gathered by the op, accumulated in place
            gram_(acc, rows.x, None if len(new) == n else new)
        elif len(new):
            acc += gram(rows.take(new))
        out.append(acc.clone())
        done = mark
    return out


@dataclass
class Source:
    """One source for :func:`option_path`: its model, its units' rows, the nodes of the
    option (None: all) and, optionally, ``grams(unit)``: the option's Gram of a unit (a
    cache that returns the same object for sources with the same rows and nodes),
    ``thetas``: its unit weights (default: from its state dict) and ``outputs``: per unit,
    ``(Θ, rows.matmul(Θ))``, the unit's output on all nodes before its activation for the
    weights ``Θ`` (the products :func:`source_rows` forms anyway)."""

    model: nn.Module
    rows: dict[str, UnitRows]
    nodes: Tensor | None
    grams: Callable[[str], Tensor] | None = None
    thetas: dict[str, Tensor] | None = None
    outputs: dict[str, tuple[Tensor, Tensor]] | None = None


def _dual_residuals(sources: Sequence[Source], name: str, thetas: Sequence[Tensor],
                    coefs: Sequence[float], prior: str) -> Tensor | None:
    """``Y − ZΘ̄`` of the dual route from the sources' unit outputs, without a product:
    block ``k`` is ``√c_k (out_k − mean_j out_j)`` on source ``k``'s nodes, where ``out_j``
    is source ``j``'s output on all nodes (``Z_k Θ_j``: the rows are one matrix). None
    unless every source has its output for its weights, the rows are the same and the
    prior is the mean."""
    if prior != "mean" or any(s.outputs is None or name not in s.outputs for s in sources):
        return None
    outs = []
    for s, th in zip(sources, thetas):
        theta, out = s.outputs[name]
        if theta is not th:
            return None
        outs.append(out)
    first = sources[0].rows[name]
    if first.key is None or any(s.rows[name].key != first.key for s in sources[1:]):
        return None
    mean = torch.stack(outs).mean(0)
    blocks = []
    for s, out, c in zip(sources, outs, coefs):
        diff = out - mean if s.nodes is None else (out[s.nodes] - mean[s.nodes])
        blocks.append(diff * c ** 0.5)
    return torch.cat(blocks, 0)


def _same_rows(a: Source, b: Source, name: str) -> bool:
    ra, rb = a.rows[name], b.rows[name]
    if ra.key is None or ra.key != rb.key:
        return False
    if a.nodes is None or b.nodes is None:
        return a.nodes is None and b.nodes is None
    return torch.equal(a.nodes, b.nodes)


def option_path(sources: Sequence[Source], ridges: Sequence[float], *,
                weighting: str = "per_model", prior: str = "mean") -> dict[str, list[Tensor]]:
    """Per unit, ``Θ`` (``[in+1, out]``, biased units) for every relative ridge of
    ``ridges``: the closed form of ``method="gffmerge"`` (``ridge_mode="relative"``,
    ``target="weights"``, ``alpha=1``) on the option's rows, one factorisation per system."""
    if weighting not in ("per_model", "pooled") or prior not in ("mean", "zero"):
        raise ValueError("weighting must be per_model or pooled and prior mean or zero")
    states = [s.model.state_dict() if s.thetas is None else None for s in sources]
    out = {}
    for name in sources[0].rows:
        dim = sources[0].rows[name].dim
        thetas = [layer_theta(sd, name)[:dim] if s.thetas is None else s.thetas[name]
                  for s, sd in zip(sources, states)]
        counts = [s.rows[name].num_rows if s.nodes is None else len(s.nodes)
                  for s in sources]
        coefs = [1.0 / max(n, 1) if weighting == "per_model" else 1.0 for n in counts]
        mean = torch.stack(thetas).mean(0) if prior == "mean" else None
        if (mean is not None and len(set(coefs)) == 1
                and all(_same_rows(sources[0], s, name) for s in sources[1:])):
            out[name] = [mean] * len(ridges)  # (A + λI) Θ̄ = B + λ Θ̄ exactly (one object)
            continue
        if sum(counts) < dim:
            blocks = [s.rows[name].take(s.nodes) * c ** 0.5 for s, c in zip(sources, coefs)]
            z = _stacked(blocks) if blocks[0].layout != torch.strided else torch.cat(blocks, 0)
            scale = trace_of(z) / dim
            resid = _dual_residuals(sources, name, thetas, coefs, prior)
            if resid is not None:  # Y and ZΘ̄ from the outputs formed by the sources' pass
                out[name] = dual_path(z, None, mean, [r * scale for r in ridges], resid=resid)
                continue
            y = torch.cat([(torch.sparse.mm(b, th) if b.layout != torch.strided else b @ th)
                           for b, th in zip(blocks, thetas)], 0)
            out[name] = dual_path(z, y, mean, [r * scale for r in ridges])
            continue
        grams = [s.grams(name) if s.grams is not None else gram(s.rows[name].take(s.nodes))
                 for s in sources]
        a = sum(c * g for c, g in zip(coefs, grams))
        b = torch.zeros_like(thetas[0])
        for k, g in enumerate(grams):
            if not any(grams[j] is g for j in range(k)):  # one product per distinct Gram
                b += g @ sum(cj * tj for cj, gj, tj in zip(coefs, grams, thetas) if gj is g)
        scale = a.trace().item() / dim
        out[name] = primal_path(a, b, mean, [r * scale for r in ridges])
    return out
