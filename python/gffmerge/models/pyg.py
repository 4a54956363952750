"""PyTorch Geometric models merged as they are: the units of PyG's layers.

Imported by :func:`gffmerge.models.groups.linear_units` when ``torch_geometric`` is loaded
(install the extra ``gffmerge[pyg]``); it registers one adapter that recognises

* ``torch_geometric.nn.Linear`` (no ``nn.Linear``): a unit measured on its input, like
  ``nn.Linear``; this covers the MLP Linears of ``GINConv`` and the per-Linear relaxation of
  ``GATConv``/``GATv2Conv`` (their attention vectors and biases are averaged with every
  other parameter outside the units);
* ``GCNConv``: ``Â (H Wᵀ) + b`` is the linear map ``[Â H, 1] Θ`` with ``Θ = [Wᵀ; bᵀ]``, so the
  unit ``conv[lin.weight|bias]`` is measured on the rows of ``Â H`` (the propagated input
  the layer-wise objective of GNNMerge matches), formed with one sparse product per call
  (``Â`` as a sparse matrix, never dense);
* ``SAGEConv``: ``lin_l(agg_N(h)) + lin_r(h)`` is one group over ``[agg_N(h), h]``
  (``conv[lin_l.weight+lin_r.weight|lin_l.bias]``), the neighbour aggregate (mean or sum)
  again one sparse product; with ``project=True`` the projection ``lin`` is a unit of its
  own. ``normalize=True`` matches the output before the L2 normalisation.

The graph comes as ``edge_index [2, E]`` or, for large graphs, as PyG's sparse ``adj_t``:
torch's own ``torch.sparse_csr`` (or ``sparse_coo``) tensor ``[N_dst, N_src]`` with entry
``(i, j)`` for the edge ``j → i`` (``torch_geometric.transforms.ToSparseTensor(
layout=torch.sparse_csr)``). PyG's convolutions then aggregate with one sparse-dense product
instead of gathering ``[E, d]`` messages, and the propagation matrix measured here *is*
``adj_t`` (its values are the edge weights), normalised as the convolution normalises it:
``gcn_norm`` of ``adj_t`` for GCN, rows divided by their number of stored entries for SAGE's
mean (torch's ``sparse.mm(..., "mean")``). Prefer CSR: PyG's ``gcn_norm`` marks a COO
``adj_t`` coalesced in place, a new version of the tensor, so a COO graph is measured right
but its normalisation is neither kept nor shared between sources. ``torch_sparse.SparseTensor``
is not supported (a one-line error names the CSR alternative).

Every statistic is node-level (``[N, d]``): no ``[E, d]`` tensor and no dense adjacency is
formed.
"""

from __future__ import annotations

import contextlib
import warnings
from contextvars import ContextVar

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, SAGEConv
from torch_geometric.nn import Linear as PygLinear
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from gffmerge_ext import dense_csr_count_, row_gram_devices

from ..architecture import LinearInfo
from .groups import GroupView, LinearView, Unit, group_name, register_adapter
from .parts import Dense, GramInput

SPARSE_DENSITY = 0.1
"""Inputs with at most this fraction of non-zeros (bag-of-words features: Cora 1.3 %,
CiteSeer 0.9 %) are measured as sparse rows: the propagation and the Gram are sparse
products in float64 (:mod:`gffmerge.collect.sparse`), exact and far cheaper than dense."""

_ROWS: ContextVar[Tensor | None] = ContextVar("gffmerge_pyg_rows", default=None)


@contextlib.contextmanager
def node_rows(nodes: Tensor | None):
    """Inside this context every GCNConv / SAGEConv is measured on the rows of ``nodes``
    only (a 1-D index of destination nodes; ``None``: all nodes): GNNMerge's objective on
    a source's own nodes. The propagation still uses the whole graph (degrees, neighbours);
    only the rows of the regression are selected."""
    index = None if nodes is None else torch.as_tensor(nodes).long()
    if index is not None and index.dim() != 1:  # a 1-D index stays the same object
        index = index.reshape(-1)
    token = _ROWS.set(index)
    try:
        yield index
    finally:
        _ROWS.reset(token)


def _rows_key(rows: Tensor | None) -> tuple:
    """The selected rows as a hashable value (part of a shared input's key)."""
    return ("all",) if rows is None else ("rows", tuple(rows.tolist()))


def _sparse(x: Tensor) -> Tensor | None:
    """``x`` as a float64 sparse COO tensor when it is sparse enough, else None."""
    if x.dim() != 2 or x.numel() == 0:
        return None
    if x.layout != torch.strided:
        return x.to_sparse_coo().to(torch.float64)
    if _nonzeros(x) > SPARSE_DENSITY * x.numel():
        return None
    return x.detach().to_sparse().to(torch.float64)


_COUNTED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _nonzeros(x: Tensor) -> int:
    """``count_nonzero(x)`` of a dense 2-D ``x``; on the CPU by the row counts of
    :func:`gffmerge_ext.dense_csr_count_` (one vectorised pass: 8x torch's count on a
    2 708 x 256 float64 hidden layer, which the density test reads at every propagation)."""
    if x.device.type in row_gram_devices() and x.dtype in _COUNTED:
        crow = torch.empty(x.shape[0] + 1, dtype=torch.int64, device=x.device)
        dense_csr_count_(crow, x.detach())
        return int(crow[-1])
    return int(torch.count_nonzero(x))


_ADJ_LAYOUTS = (torch.sparse_csr, torch.sparse_coo)
_CSR_HINT = ("torch's sparse CSR adj_t: torch_geometric.transforms.ToSparseTensor("
             "layout=torch.sparse_csr) or torch_geometric.utils.to_torch_csr_tensor("
             "edge_index.flip(0), size=(N, N))")


def _is_adj_t(graph) -> bool:
    """Whether ``graph`` is a torch sparse adjacency (CSR or COO) rather than edge_index."""
    return isinstance(graph, Tensor) and graph.layout in _ADJ_LAYOUTS


def _check_graph(graph) -> None:
    """Raise a one-line ``ValueError`` unless ``graph`` is an integer ``edge_index [2, E]``
    or a 2-D torch sparse ``adj_t`` in CSR or COO layout."""
    if type(graph).__name__ == "SparseTensor":
        raise ValueError("torch_sparse.SparseTensor is not supported by the PyG adapter; pass "
                         f"{_CSR_HINT} (the same sparse-dense product in PyG)")
    if isinstance(graph, Tensor):
        if graph.layout == torch.strided and graph.dim() == 2 and graph.shape[0] == 2 \
                and not graph.is_floating_point():
            return
        if graph.layout in _ADJ_LAYOUTS and graph.dim() == 2 and graph.dense_dim() == 0:
            return
        if graph.layout != torch.strided:
            raise ValueError(f"the PyG adapter takes a sparse adj_t in torch.sparse_csr or "
                             f"torch.sparse_coo layout (got {graph.layout} with shape "
                             f"{tuple(graph.shape)}); convert it with adj_t.to_sparse_csr()")
    raise ValueError("the PyG adapter needs the graph as edge_index, a [2, E] integer tensor, "
                     f"or as {_CSR_HINT}; pass data.edge_index or data.adj_t")


def propagate(edge_index: Tensor, weight: Tensor | None, x: Tensor, n_dst: int, *,
              flow: str = "source_to_target", mean: bool = False,
              rows: Tensor | None = None) -> Tensor:
    """``out[i] = Σ_{(j→i)} w_ji x_j`` (``mean``: divided by the in-degree, 0 for isolated
    nodes) as one sparse product; ``edge_index [2, E]`` in PyG's convention, or a torch
    sparse ``adj_t [n_dst, N_src]`` whose values are the weights (``weight`` must then be
    None; ``mean`` divides by each row's number of stored entries, as torch's
    ``sparse.mm(adj_t, x, "mean")`` in PyG). ``rows``: only the destination nodes ``rows``
    (in that order). A sparse ``x`` gives a sparse float64 result."""
    _check_graph(edge_index)
    if _is_adj_t(edge_index):
        if flow != "source_to_target":
            raise ValueError("a sparse adj_t propagates source to target only (PyG's rule); "
                             "pass the transposed adjacency instead of flow="
                             f"{flow!r}")
        if weight is not None:
            raise ValueError("with a sparse adj_t the edge weights are its values; pass "
                             "edge_weight=None")
        if edge_index.shape[0] != n_dst or edge_index.shape[1] != x.shape[0]:
            raise ValueError(f"adj_t has shape {tuple(edge_index.shape)}, expected "
                             f"[{n_dst}, {x.shape[0]}] = [destination nodes, source nodes]")
        adj = _adj_t_matrix(edge_index, mean, rows, x.dtype, x.device, x.layout != torch.strided)
    else:
        adj = _adjacency(edge_index, weight, n_dst, x.shape[0], flow, mean, rows, x.dtype,
                         x.device)
    if x.layout != torch.strided:
        with warnings.catch_warnings():  # torch's notice that invariant checks are off
            warnings.filterwarnings("ignore", message=r"Sparse (CSR tensor support|invariant)")
            return torch.sparse.mm(adj[0], x).coalesce()
    return torch.sparse.mm(adj[1], x.contiguous())


_ADJ_KEEP = 16
# Propagation matrices and the last normalisation, kept only inside `kept_propagations()`
# (a merge propagates on one graph many times); nothing outlives that block.
_KEPT: ContextVar[dict | None] = ContextVar("gffmerge_pyg_kept", default=None)


@contextlib.contextmanager
def kept_propagations():
    """Within this block, propagation matrices and ``gcn_norm`` results of unchanged edge
    tensors are reused (at most 16 matrices); they are dropped when the block ends, so a
    large graph's matrices are not held after a merge."""
    token = _KEPT.set(_KEPT.get() if _KEPT.get() is not None else {"adj": {}, "norm": []})
    try:
        yield
    finally:
        _KEPT.reset(token)


def _adjacency(edge_index: Tensor, weight: Tensor | None, n_dst: int, n_src: int, flow: str,
               mean: bool, rows: Tensor | None, dtype, device) -> tuple[Tensor, Tensor]:
    """The propagation matrix ``[len(rows) or n_dst, n_src]`` as coalesced COO and CSR,
    kept for later calls on the same, unchanged tensors (identity and version counters;
    not for weights that require gradients)."""
    parts = (edge_index, weight, rows)
    key = (tuple((id(t), t._version) if t is not None else None for t in parts),
           n_dst, n_src, flow, mean, dtype, device)
    adj_kept, hit = _kept_lookup(key, parts)
    if hit is not None:
        return hit
    src, dst = (edge_index[0], edge_index[1]) if flow == "source_to_target" else (
        edge_index[1], edge_index[0])
    src, dst = src.long(), dst.long()
    w = (torch.ones(src.shape[0], dtype=dtype, device=device) if weight is None
         else weight.to(dtype))
    if mean:
        deg = torch.bincount(dst, minlength=n_dst).to(dtype)
        w = w / deg.clamp_min(1)[dst]
    n_out = n_dst
    if rows is not None:
        where = torch.full((n_dst,), -1, dtype=torch.long, device=dst.device)
        where[rows.to(dst.device)] = torch.arange(rows.shape[0], device=dst.device)
        keep = where[dst] >= 0
        src, dst, w, n_out = src[keep], where[dst[keep]], w[keep], rows.shape[0]
    with warnings.catch_warnings():  # torch's notice that sparse CSR support is beta
        warnings.filterwarnings("ignore", message=r"Sparse (CSR tensor support|invariant)")
        coo = torch.sparse_coo_tensor(torch.stack([dst, src]), w, (n_out, n_src),
                                      check_invariants=False).coalesce()
        out = (coo, coo.to_sparse_csr())
    if adj_kept is not None and (weight is None or not weight.requires_grad):
        if len(adj_kept) >= _ADJ_KEEP:
            adj_kept.pop(next(iter(adj_kept)))
        adj_kept[key] = (out, parts)
    return out


def _kept_lookup(key, parts):
    kept = _KEPT.get()
    adj_kept = kept["adj"] if kept is not None else None
    hit = adj_kept.get(key) if adj_kept is not None else None
    if hit is not None and all(a is b for a, b in zip(hit[1], parts)):
        return adj_kept, hit[0]
    return adj_kept, None


def _csr_rows(crow: Tensor, col: Tensor, val: Tensor, rows: Tensor):
    """The CSR arrays of the rows ``rows`` (in that order) of a CSR matrix."""
    rows = rows.to(crow.device)
    start = crow[rows]
    count = crow[rows + 1] - start
    new_crow = torch.zeros(rows.shape[0] + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(count, 0, out=new_crow[1:])
    nnz = int(new_crow[-1])
    pos = torch.repeat_interleave(start - new_crow[:-1], count, output_size=nnz)
    pos += torch.arange(nnz, dtype=pos.dtype, device=pos.device)
    return new_crow, col[pos], val[pos]


def _adj_t_matrix(adj_t: Tensor, mean: bool, rows: Tensor | None, dtype, device,
                  need_coo: bool) -> tuple[Tensor | None, Tensor]:
    """The propagation matrix of a torch sparse ``adj_t`` as (COO or None, CSR) in ``dtype``:
    ``adj_t`` itself (a COO is coalesced by the conversion, duplicate entries summed, as
    PyG's ``spmm`` converts it), rows divided by their stored-entry count for ``mean``,
    the rows ``rows`` selected. The COO form only when ``need_coo`` (sparse features).
    Kept like :func:`_adjacency` inside :func:`kept_propagations`."""
    parts = (adj_t, rows)
    key = (tuple((id(t), t._version) if t is not None else None for t in parts),
           "adj_t", mean, dtype, device, need_coo)
    adj_kept, hit = _kept_lookup(key, parts)
    if hit is not None:
        return hit
    with warnings.catch_warnings():  # torch's notices that CSR support is beta / no checks
        warnings.filterwarnings("ignore", message=r"Sparse (CSR tensor support|invariant)")
        csr = adj_t if adj_t.layout == torch.sparse_csr else adj_t.to_sparse_csr()
        crow, col, val = csr.crow_indices(), csr.col_indices(), csr.values()
        if val.dtype != dtype or val.device != device:
            val = val.to(device=device, dtype=dtype)
        n_src = csr.shape[1]
        if rows is not None:
            crow, col, val = _csr_rows(crow, col, val, rows)
        if mean:
            count = crow[1:] - crow[:-1]
            scale = 1.0 / count.clamp_min(1).to(dtype)
            val = val * torch.repeat_interleave(scale, count, output_size=val.shape[0])
        out_csr = torch.sparse_csr_tensor(crow, col, val, (crow.shape[0] - 1, n_src),
                                          check_invariants=False)
        coo = out_csr.to_sparse_coo().coalesce() if need_coo else None
    out = (coo, out_csr)
    if adj_kept is not None:
        if len(adj_kept) >= _ADJ_KEEP:
            adj_kept.pop(next(iter(adj_kept)))
        adj_kept[key] = (out, parts)
    return out


def _pick(x: Tensor, rows: Tensor | None) -> Tensor:
    if rows is None:
        return x
    if x.layout != torch.strided:
        return x.index_select(0, rows.to(x.device)).coalesce()
    return x.index_select(0, rows.to(x.device))


def _output_rows(out: Tensor) -> Tensor:
    rows = _ROWS.get()
    return out if rows is None else out.index_select(0, rows.to(out.device))


def _graph_tensors(graph: Tensor, edge_weight: Tensor | None) -> tuple | None:
    """The tensors that identify a graph in a shared-input key: ``edge_index`` (and the
    weights), or the values of a sparse ``adj_t`` (a view of it: the key holds the adjacency
    itself and its version counter, which in-place changes of the values bump)."""
    if not _is_adj_t(graph):
        return (graph,) if edge_weight is None else (graph, edge_weight)
    if graph.layout == torch.sparse_coo and not graph.is_coalesced():
        return None  # the values of an uncoalesced COO are no view of it
    return (graph.values(),)


def _key(tag: tuple, x, edge_index, edge_weight=None) -> tuple | None:
    """What the rows of one call depend on besides the weights (see ``input_key``)."""
    if not isinstance(x, Tensor) or not isinstance(edge_index, Tensor):
        return None
    graph = _graph_tensors(edge_index, edge_weight)
    if graph is None:
        return None
    if _is_adj_t(edge_index):  # the structure: layout, shape and number of entries
        tag = tag + ("adj_t", edge_index.layout, tuple(edge_index.shape),
                     edge_index._nnz())
    return tag + _rows_key(_ROWS.get()), (x, *graph)


def _normalised(edge_index: Tensor, edge_weight: Tensor | None, n: int, conv: GCNConv,
                dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``gcn_norm`` of the graph, PyG's own (for a sparse ``adj_t``: the normalised ``adj_t``
    and None, as GCNConv forms it); inside :func:`kept_propagations`, kept for the next call
    on the same, unchanged ``edge_index`` or ``adj_t`` (no edge weights) and settings: a
    merge measures, multiplies and scores on one graph many times (one entry; an in-place
    change of the edges is noticed by the tensor's version counter)."""
    settings = (n, conv.improved, conv.add_self_loops, conv.flow, dtype)
    kept = _KEPT.get()
    last = kept["norm"] if kept is not None else None  # [((edge_index, version, settings), result)]
    if edge_weight is None and last:
        (ei, version, kept_settings), result = last[0]
        if ei is edge_index and version == edge_index._version and kept_settings == settings:
            return result
    result = gcn_norm(edge_index, edge_weight, n, conv.improved, conv.add_self_loops,
                      conv.flow, dtype)
    if edge_weight is None and last is not None:
        last[:] = [((edge_index, edge_index._version, settings), result)]
    return result


def _gcn_parts(conv: GCNConv):
    def parts(x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> GramInput:
        if isinstance(x, tuple | list):
            raise ValueError("GCNConv takes one node-feature tensor; bipartite inputs are "
                             "not supported by GCNConv itself")
        n = x.shape[0]
        _check_graph(edge_index)
        if _is_adj_t(edge_index):
            edge_weight = None  # PyG's GCNConv ignores it: the values of adj_t are the weights
        if conv.normalize:
            edge_index, edge_weight = _normalised(edge_index, edge_weight, n, conv, x.dtype)
        xs = _sparse(x)
        src = x if xs is None else xs
        return GramInput((Dense(propagate(edge_index, edge_weight, src, n, flow=conv.flow,
                                          rows=_ROWS.get())),))

    def key(x, edge_index, edge_weight=None):
        if _is_adj_t(edge_index):
            edge_weight = None
        return _key(("gcn", conv.normalize, conv.improved, conv.add_self_loops, conv.flow),
                    x, edge_index, edge_weight)
    return parts, key


def _sage_parts(conv: SAGEConv):
    aggr = conv.aggr if isinstance(conv.aggr, str) else None
    if aggr not in ("mean", "add", "sum"):
        raise ValueError(f"SAGEConv with aggr={conv.aggr!r} is not linear in its input; the "
                         "closed form covers aggr='mean' and aggr='add'/'sum'")

    def parts(x, edge_index: Tensor, size=None) -> GramInput:
        xs, xr = (x, x) if isinstance(x, Tensor) else tuple(x)
        if conv.project and hasattr(conv, "lin"):
            xs = conv.lin(xs).relu()
        _check_graph(edge_index)
        if _is_adj_t(edge_index):
            n_dst = edge_index.shape[0]
        else:
            n_dst = xr.shape[0] if xr is not None else (size[1] if size else xs.shape[0])
        rows = _ROWS.get()
        sparse_s = _sparse(xs)
        agg = propagate(edge_index, None, xs if sparse_s is None else sparse_s, n_dst,
                        flow=conv.flow, mean=aggr == "mean", rows=rows)
        cols = [Dense(agg)]
        if conv.root_weight and xr is not None:
            sparse_r = sparse_s if xr is xs else _sparse(xr)
            cols.append(Dense(_pick(xr if sparse_r is None else sparse_r, rows)))
        return GramInput(tuple(cols))

    def key(x, edge_index, size=None):
        if conv.project or not isinstance(x, Tensor) or size is not None:
            return None  # the projection's weights enter the rows
        return _key(("sage", aggr, conv.root_weight, conv.flow), x, edge_index)
    return parts, key


def _check_initialised(name: str, lin: PygLinear) -> None:
    if lin.in_channels <= 0 or isinstance(lin.weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"PyG Linear '{name}' is lazy (in_channels=-1) and not initialised; "
                         "run one forward pass before measuring")


def _pyg_units(name: str, module: nn.Module) -> tuple[list[Unit], bool] | None:
    def sub(child: str) -> str:
        return f"{name}.{child}" if name else child

    if isinstance(module, PygLinear):
        _check_initialised(name, module)
        info = LinearInfo(name, module.in_channels, module.out_channels, module.bias is not None)
        return [Unit(info, LinearView(module, module.in_channels, module.out_channels))], True
    if isinstance(module, GCNConv):
        _check_initialised(sub("lin"), module.lin)
        bias = "bias" if module.bias is not None else None
        unit = group_name(name, ["lin.weight"], bias)
        d_in, d_out = module.lin.in_channels, module.lin.out_channels
        info = LinearInfo(unit, d_in, d_out, bias is not None)
        parts, key = _gcn_parts(module)
        view = GroupView(module, d_in, d_out, parts, input_key=key, output_rows=_output_rows)
        return [Unit(info, view)], True
    if isinstance(module, SAGEConv):
        units = []
        if module.project and hasattr(module, "lin"):
            units += _pyg_units(sub("lin"), module.lin)[0]
        _check_initialised(sub("lin_l"), module.lin_l)
        weights, d_in = ["lin_l.weight"], module.lin_l.in_channels
        if module.root_weight:
            _check_initialised(sub("lin_r"), module.lin_r)
            weights.append("lin_r.weight")
            d_in += module.lin_r.in_channels
        bias = "lin_l.bias" if module.lin_l.bias is not None else None
        d_out = module.lin_l.out_channels
        unit = group_name(name, weights, bias)
        info = LinearInfo(unit, d_in, d_out, bias is not None)
        parts, key = _sage_parts(module)
        units.append(Unit(info, GroupView(module, d_in, d_out, parts, input_key=key,
                                          output_rows=_output_rows)))
        return units, True
    return None


register_adapter(_pyg_units)
