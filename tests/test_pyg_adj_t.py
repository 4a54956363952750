"""PyG models measured on a torch sparse adj_t (CSR and COO) instead of edge_index: the same
statistics and merged weights, float64 dense references built here, and the refusals."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("torch_geometric")
from torch_geometric.nn import MLP, GATConv, GCNConv, GINConv, SAGEConv  # noqa: E402
from torch_geometric.utils import coalesce  # noqa: E402

import gffmerge  # noqa: E402
from gffmerge.collect import InputCache  # noqa: E402
from gffmerge.models import pyg  # noqa: E402
from gffmerge.models.groups import linear_units  # noqa: E402
from gffmerge.solver.state import layer_theta  # noqa: E402

F64 = torch.float64
LAYOUTS = ["csr", "coo"]

pytestmark = pytest.mark.filterwarnings("ignore:Sparse (CSR tensor support|invariant)")


def graph(n: int, e: int, seed: int, d: int = 6):
    """Features and an undirected graph without self loops or repeated edges (PyG builds
    adj_t with each edge once, so a repeated edge_index entry would be another graph)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    return x, coalesce(torch.cat([ei, ei.flip(0)], 1), num_nodes=n)


def adj_t(ei: torch.Tensor, n: int, layout: str, weight: torch.Tensor | None = None):
    """PyG's adj_t: entry (i, j) for the edge j → i, built here with torch alone."""
    w = torch.ones(ei.shape[1], dtype=F64) if weight is None else weight
    coo = torch.sparse_coo_tensor(ei.flip(0), w, (n, n)).coalesce()
    return coo if layout == "coo" else coo.to_sparse_csr()


def dense_adj(ei: torch.Tensor, n: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    a = torch.zeros(n, n, dtype=F64)
    w = torch.ones(ei.shape[1], dtype=F64) if weight is None else weight
    a.index_put_((ei[1], ei[0]), w, accumulate=True)
    return a


def gcn_matrix(a: torch.Tensor, *, normalize=True, improved=False, loops=True):
    if not normalize:
        return a
    a = a + (2.0 if improved else 1.0) * torch.eye(len(a), dtype=F64) if loops else a
    d = a.sum(1).rsqrt()
    d[torch.isinf(d)] = 0
    return d[:, None] * a * d[None, :]


def aug_gram(r: torch.Tensor) -> torch.Tensor:
    r1 = torch.cat([r, torch.ones(len(r), 1, dtype=F64)], 1)
    return r1.T @ r1


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


class Stack(nn.Module):
    def __init__(self, make):
        super().__init__()
        self.c1, self.c2 = make(6, 5), make(5, 3)

    def forward(self, x, graph, *weight):
        return self.c2(self.c1(x, graph, *weight).relu(), graph, *weight)


def sources(make, k=2):
    out = []
    for s in range(k):
        torch.manual_seed(20 + s)
        m = Stack(make).double()
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.endswith("bias"):
                    p.normal_()
        out.append(m)
    return out


CONVS = {
    "gcn": (lambda i, o: GCNConv(i, o), lambda a: gcn_matrix(a)),
    "gcn_plain": (lambda i, o: GCNConv(i, o, normalize=False),
                  lambda a: gcn_matrix(a, normalize=False)),
    "gcn_no_loops": (lambda i, o: GCNConv(i, o, add_self_loops=False),
                     lambda a: gcn_matrix(a, loops=False)),
    "sage_mean": (lambda i, o: SAGEConv(i, o), None),
    "sage_add": (lambda i, o: SAGEConv(i, o, aggr="add"), None),
    "sage_no_root": (lambda i, o: SAGEConv(i, o, root_weight=False), None),
}


def first_rows(kind: str, x, a):
    """Dense float64 rows of the first layer's regression (without the intercept)."""
    if kind.startswith("gcn"):
        return CONVS[kind][1](a) @ x
    agg = a if kind == "sage_add" else a / a.sum(1, keepdim=True).clamp_min(1)
    return agg @ x if kind == "sage_no_root" else torch.cat([agg @ x, x], 1)


def assert_same_stats(a, b, tol=1e-10):
    assert list(a.layers) == list(b.layers)
    for name in a.layers:
        la, lb = a.models[0].layers[name], b.models[0].layers[name]
        assert la.rows == lb.rows
        assert rel(la.gram, lb.gram) <= tol, name
        if la.cross is not None:
            assert rel(la.cross, lb.cross) <= tol, name


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", list(CONVS))
def test_adj_t_statistics_and_merge_equal_the_edge_index_path(kind, layout):
    graphs = [graph(40, 110, 0), graph(30, 80, 1)]
    models = sources(CONVS[kind][0])
    by_ei = [gffmerge.measure(m, [g], progress=False, cross=True)
             for m, g in zip(models, graphs)]
    by_adj = [gffmerge.measure(m, [(x, adj_t(ei, len(x), layout))], progress=False, cross=True)
              for m, (x, ei) in zip(models, graphs)]
    for a, b, (x, ei) in zip(by_adj, by_ei, graphs):
        assert_same_stats(a, b)
        name = next(iter(a.layers))  # the first layer against a dense float64 reference
        ref = aug_gram(first_rows(kind, x, dense_adj(ei, len(x))))
        assert rel(a.models[0].layers[name].gram, ref) < 1e-12
    merged_adj = gffmerge.solve(models, by_adj, ridge=1e-6).model.state_dict()
    merged_ei = gffmerge.solve(models, by_ei, ridge=1e-6).model.state_dict()
    for key, value in merged_ei.items():
        assert rel(merged_adj[key], value) < 1e-10, key
    assert not torch.allclose(merged_ei["c1.bias" if kind.startswith("gcn")
                                        else "c1.lin_l.bias"],
                              models[0].state_dict()["c1.bias" if kind.startswith("gcn")
                                                     else "c1.lin_l.bias"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_improved_gcn_on_adj_t_is_what_the_conv_computes(layout):
    """PyG 2.8's gcn_norm honours improved=True (self loops of weight 2) on a sparse adj_t;
    the rows measured are those of the dense D^-1/2 (A + 2I) D^-1/2, which the conv itself
    reproduces with identity weights."""
    x, ei = graph(30, 90, 2)
    n = len(x)
    adj = adj_t(ei, n, layout)
    ref = gcn_matrix(dense_adj(ei, n), improved=True) @ x
    conv = GCNConv(6, 6, improved=True, bias=False).double()
    with torch.no_grad():
        conv.lin.weight.copy_(torch.eye(6, dtype=F64))
        assert rel(conv(x, adj), ref) < 1e-12
    stats = gffmerge.measure(conv, [(x, adj)], progress=False)
    assert rel(stats.models[0].layers["[lin.weight]"].gram, aug_gram(ref)) < 1e-12


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("normalize", [True, False])
def test_weighted_gcn_adj_t_values_are_the_edge_weights(layout, normalize):
    x, ei = graph(35, 100, 3)
    n = len(x)
    w = torch.rand(ei.shape[1], generator=torch.Generator().manual_seed(4), dtype=F64) + 0.1
    models = sources(lambda i, o: GCNConv(i, o, normalize=normalize))
    by_ei = gffmerge.measure(models[0], [(x, ei, w)], progress=False, cross=True)
    by_adj = gffmerge.measure(models[0], [(x, adj_t(ei, n, layout, w))], progress=False,
                              cross=True)
    assert_same_stats(by_adj, by_ei)
    ref = gcn_matrix(dense_adj(ei, n, w), normalize=normalize) @ x
    assert rel(by_adj.models[0].layers["c1[lin.weight|bias]"].gram, aug_gram(ref)) < 1e-12


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["gcn", "sage_mean", "sage_add"])
def test_selected_rows_on_adj_t(kind, layout):
    x, ei = graph(40, 120, 5)
    n = len(x)
    model = sources(CONVS[kind][0], k=1)[0]
    nodes = torch.tensor([7, 0, 19, 33, 2, 38])

    def forward(m, batch):
        with pyg.node_rows(nodes):
            return m(*batch)

    by_adj = gffmerge.measure(model, [(x, adj_t(ei, n, layout))], progress=False, cross=True,
                              forward=forward)
    by_ei = gffmerge.measure(model, [(x, ei)], progress=False, cross=True, forward=forward)
    assert_same_stats(by_adj, by_ei)
    layer1 = by_adj.models[0].layers[next(iter(by_adj.layers))]
    r = first_rows(kind, x, dense_adj(ei, n))[nodes]
    assert layer1.rows == len(nodes)
    assert rel(layer1.gram, aug_gram(r)) < 1e-12
    with torch.no_grad():
        y = model.c1(x, ei)[nodes]
    assert rel(layer1.cross, torch.cat([r, torch.ones(len(r), 1, dtype=F64)], 1).T @ y) < 1e-12


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sparse_features_on_adj_t(layout):
    """Bag-of-words features take the sparse float64 route; the propagation matrix is then
    the COO form of adj_t."""
    g = torch.Generator().manual_seed(6)
    n, d = 50, 30
    x = (torch.rand(n, d, generator=g) < 0.06).to(F64)
    _, ei = graph(n, 140, 7)
    for make in (lambda i, o: GCNConv(i, o), lambda i, o: SAGEConv(i, o)):
        torch.manual_seed(0)
        model = nn.ModuleDict({"c1": make(d, 4)}).double()

        def forward(m, batch):
            return m["c1"](*batch)

        a = gffmerge.measure(model, [(x, adj_t(ei, n, layout))], progress=False, forward=forward)
        b = gffmerge.measure(model, [(x, ei)], progress=False, forward=forward)
        assert_same_stats(a, b)


@pytest.mark.parametrize(("kind", "layout"), [("gcn", "csr"), ("sage_mean", "csr"),
                                             ("sage_mean", "coo"), ("gcn", "coo")])
def test_first_layer_gram_is_shared_between_sources_on_one_adj_t(kind, layout,
                                                                layer_sum_widths):
    x, ei = graph(40, 120, 8)
    adj = adj_t(ei, len(x), layout)
    models = sources(CONVS[kind][0], k=3)
    widths = layer_sum_widths
    shared = InputCache()
    together = [gffmerge.measure(m, [(x, adj)], progress=False, shared=shared) for m in models]
    w1, w2 = (6, 5) if kind == "gcn" else (12, 10)
    if (kind, layout) != ("gcn", "coo"):
        assert widths == [w1, w2, w2, w2]  # layer 1 once, layer 2 per source
    else:  # PyG's gcn_norm marks a COO coalesced in place (a new version): never shared
        assert widths == [w1, w2] * 3
    apart = [gffmerge.measure(m, [(x, ei)], progress=False) for m in models]
    for t, a in zip(together, apart):
        assert_same_stats(t, a)
    # changed edge weights (the values, in place) are another graph: no stale hit
    adj.values().mul_(2.0)
    widths.clear()
    again = gffmerge.measure(models[0], [(x, adj)], progress=False, shared=shared)
    assert widths == [w1, w2]
    doubled = gffmerge.measure(models[0], [(x, adj_t(ei, len(x), layout, 2 * torch.ones(
        ei.shape[1], dtype=F64)))], progress=False)
    assert_same_stats(again, doubled)


def test_kept_propagations_reuse_and_follow_in_place_changes_of_adj_t():
    x, ei = graph(12, 30, 9, d=3)
    adj = adj_t(ei, len(x), "csr")
    view = next(iter(linear_units(GCNConv(3, 2).double()).values())).view

    def rows():
        return view.gram_parts(x, adj).parts[0].x.clone()

    with pyg.kept_propagations():
        first = rows()
        assert len(pyg._KEPT.get()["adj"]) == 1 and pyg._KEPT.get()["norm"]
        assert torch.equal(rows(), first)
        assert len(pyg._KEPT.get()["adj"]) == 1
        adj.values()[0] = 5.0  # one edge weight changed in place: recomputed
        changed = rows()
    assert pyg._KEPT.get() is None
    fresh = view.gram_parts(x, adj.clone()).parts[0].x
    assert not torch.allclose(changed, first)
    assert torch.allclose(changed, fresh, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", ["gin", "gat"])
def test_gin_and_gat_on_adj_t_merge_like_edge_index(kind):
    """GIN's MLP and GAT's projections are measured on their own inputs; PyG takes the
    sparse adj_t itself (GAT adds its self loops on it too), so the merge is the same."""
    make = {"gin": lambda i, o: GINConv(MLP([i, 8, o], norm=None)),
            "gat": lambda i, o: GATConv(i, o, heads=2, concat=False)}[kind]
    graphs = [graph(30, 80, 10), graph(25, 60, 11)]
    models = sources(make)
    by_ei = [gffmerge.measure(m, [g], progress=False) for m, g in zip(models, graphs)]
    by_adj = [gffmerge.measure(m, [(x, adj_t(ei, len(x), "csr"))], progress=False)
              for m, (x, ei) in zip(models, graphs)]
    for a, b in zip(by_adj, by_ei):
        assert_same_stats(a, b)
    state_adj = gffmerge.solve(models, by_adj, ridge=1e-8).model.state_dict()
    state_ei = gffmerge.solve(models, by_ei, ridge=1e-8).model.state_dict()
    units = linear_units(models[0])
    for n in units:
        assert rel(layer_theta(state_adj, n), layer_theta(state_ei, n)) < 1e-9


def test_graph_inputs_that_are_refused_say_what_to_pass():
    from torch_geometric.typing import SparseTensor

    x, ei = graph(10, 20, 12, d=3)
    adj = adj_t(ei, 10, "csr")
    fake = object.__new__(SparseTensor)  # torch_sparse is not installed: PyG's placeholder
    with pytest.raises(ValueError, match=r"torch_sparse.SparseTensor is not supported.*"
                                         r"ToSparseTensor\(layout=torch.sparse_csr\)"):
        pyg.propagate(fake, None, x, 10)
    with pytest.raises(ValueError, match=r"sparse_csc.*to_sparse_csr\(\)"):
        pyg.propagate(adj.to_sparse_csc(), None, x, 10)
    with pytest.raises(ValueError, match=r"\[2, E\] integer tensor.*adj_t"):
        pyg.propagate(ei.to(F64), None, x, 10)
    with pytest.raises(ValueError, match="source to target only"):
        pyg.propagate(adj, None, x, 10, flow="target_to_source")
    with pytest.raises(ValueError, match="the edge weights are its values"):
        pyg.propagate(adj, torch.ones(ei.shape[1], dtype=F64), x, 10)
    with pytest.raises(ValueError, match=r"expected \[9, 10\]"):
        pyg.propagate(adj, None, x, 9)
    view = next(iter(linear_units(SAGEConv(3, 2).double()).values())).view
    with pytest.raises(ValueError, match="torch_sparse.SparseTensor") as exc:
        view.gram_parts(x, fake)
    assert "\n" not in str(exc.value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one-line errors come without torch's notices
        with pytest.raises(ValueError):
            pyg.propagate(fake, None, x, 10)


def test_sbm_graph_as_adj_t_is_the_edge_index_graph():
    from gffmerge.data.graphs import sbm_graph

    a = sbm_graph(400, num_classes=3, avg_degree=6, num_features=5, seed=4)
    b = sbm_graph(400, num_classes=3, avg_degree=6, num_features=5, seed=4, adj_t=True)
    assert "edge_index" not in b and b.adj_t.layout == torch.sparse_csr
    ref = torch.zeros(400, 400)
    ref.index_put_((a.edge_index[1], a.edge_index[0]), torch.ones(a.edge_index.shape[1]),
                   accumulate=True)  # entry (i, j): edges j → i, repeated draws counted
    assert torch.equal(b.adj_t.to_dense(), ref)
    for key in ("x", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(a[key], b[key])
