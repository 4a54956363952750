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

Every statistic is node-level (``[N, d]``): no ``[E, d]`` tensor is formed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, SAGEConv
from torch_geometric.nn import Linear as PygLinear
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from ..architecture import LinearInfo
from .groups import GroupView, LinearView, Unit, group_name, register_adapter
from .parts import Dense, GramInput


def propagate(edge_index: Tensor, weight: Tensor | None, x: Tensor, n_dst: int, *,
              flow: str = "source_to_target", mean: bool = False) -> Tensor:
    """``out[i] = Σ_{(j→i)} w_ji x_j`` (``mean``: divided by the in-degree, 0 for isolated
    nodes) as one sparse product; ``edge_index [2, E]`` in PyG's convention."""
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError("the PyG adapter needs edge_index as a [2, E] integer tensor (not a "
                         "SparseTensor or adjacency); pass data.edge_index")
    src, dst = (edge_index[0], edge_index[1]) if flow == "source_to_target" else (
        edge_index[1], edge_index[0])
    src, dst = src.long(), dst.long()
    w = (torch.ones(src.shape[0], dtype=x.dtype, device=x.device) if weight is None
         else weight.to(x.dtype))
    if mean:
        deg = torch.bincount(dst, minlength=n_dst).to(x.dtype)
        w = w / deg.clamp_min(1)[dst]
    adj = torch.sparse_coo_tensor(torch.stack([dst, src]), w, (n_dst, x.shape[0]),
                                  check_invariants=False)
    return torch.sparse.mm(adj, x.contiguous())


def _gcn_parts(conv: GCNConv):
    def parts(x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> GramInput:
        if isinstance(x, tuple | list):
            raise ValueError("GCNConv takes one node-feature tensor; bipartite inputs are "
                             "not supported by GCNConv itself")
        n = x.shape[0]
        if conv.normalize:
            if not isinstance(edge_index, Tensor):
                propagate(edge_index, None, x, n)  # raises the one-line error
            edge_index, edge_weight = gcn_norm(edge_index, edge_weight, n, conv.improved,
                                               conv.add_self_loops, conv.flow, x.dtype)
        return GramInput((Dense(propagate(edge_index, edge_weight, x, n, flow=conv.flow)),))
    return parts


def _sage_parts(conv: SAGEConv):
    aggr = conv.aggr if isinstance(conv.aggr, str) else None
    if aggr not in ("mean", "add", "sum"):
        raise ValueError(f"SAGEConv with aggr={conv.aggr!r} is not linear in its input; the "
                         "closed form covers aggr='mean' and aggr='add'/'sum'")

    def parts(x, edge_index: Tensor, size=None) -> GramInput:
        xs, xr = (x, x) if isinstance(x, Tensor) else tuple(x)
        if conv.project and hasattr(conv, "lin"):
            xs = conv.lin(xs).relu()
        n_dst = xr.shape[0] if xr is not None else (size[1] if size else xs.shape[0])
        agg = propagate(edge_index, None, xs, n_dst, flow=conv.flow, mean=aggr == "mean")
        cols = [Dense(agg)]
        if conv.root_weight and xr is not None:
            cols.append(Dense(xr))
        return GramInput(tuple(cols))
    return parts


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
        return [Unit(info, GroupView(module, d_in, d_out, _gcn_parts(module)))], True
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
        units.append(Unit(info, GroupView(module, d_in, d_out, _sage_parts(module))))
        return units, True
    return None


register_adapter(_pyg_units)
