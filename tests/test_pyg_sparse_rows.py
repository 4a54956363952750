"""GNN statistics on sparse features, shared between sources and on selected rows, against
float64 references built here; the exact solver shortcuts; the validation choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torch_geometric")
from torch_geometric.data import Data  # noqa: E402
from torch_geometric.nn import GCNConv, SAGEConv  # noqa: E402

import gffmerge  # noqa: E402
from gffmerge.collect import InputCache  # noqa: E402
from gffmerge.collect import sparse as sparse_mod  # noqa: E402
from gffmerge.models.pyg import node_rows  # noqa: E402
from gffmerge.solver import LayerSystem, solve_systems  # noqa: E402

F64 = torch.float64


def bow_graph(n=60, d=40, e=150, seed=0):
    """Binary bag-of-words features (~6 % non-zero) on a random undirected graph."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, d, generator=g) < 0.06).to(F64)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    return x, torch.cat([ei, ei.flip(0)], 1)


class Two(nn.Module):
    def __init__(self, make, d):
        super().__init__()
        self.c1, self.c2 = make(d, 8), make(8, 4)

    def forward(self, x, ei):
        return self.c2(self.c1(x, ei).relu(), ei)


def models(make, d, k=2):
    out = []
    for s in range(k):
        torch.manual_seed(s)
        out.append(Two(make, d).double())
    return out


def gcn_rows(x, ei, n):
    """Dense Â X (self loops, symmetric normalisation), float64."""
    a = torch.zeros(n, n, dtype=F64)
    a.index_put_((ei[1], ei[0]), torch.ones(ei.shape[1], dtype=F64), accumulate=True)
    a += torch.eye(n, dtype=F64)
    d = a.sum(1).rsqrt()
    return (d[:, None] * a * d[None, :]) @ x


def sage_rows(x, ei, n):
    a = torch.zeros(n, n, dtype=F64)
    a.index_put_((ei[1], ei[0]), torch.ones(ei.shape[1], dtype=F64), accumulate=True)
    return torch.cat([(a / a.sum(1, keepdim=True).clamp_min(1)) @ x, x], 1)


def aug_gram(r):
    r1 = torch.cat([r, torch.ones(len(r), 1, dtype=F64)], 1)
    return r1.T @ r1


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_sparse_first_layer_equals_dense_float64_reference(kind, monkeypatch):
    x, ei = bow_graph()
    make, rows = (GCNConv, gcn_rows) if kind == "gcn" else (SAGEConv, sage_rows)
    m = models(make, x.shape[1], k=1)[0]
    calls = []
    real = sparse_mod.sparse_sums
    monkeypatch.setattr(sparse_mod, "sparse_sums", lambda *a, **k: calls.append(1) or real(*a, **k))
    import gffmerge.collect.providers as providers
    monkeypatch.setattr(providers, "sparse_sums", sparse_mod.sparse_sums)
    fast = gffmerge.measure(m, [(x, ei)], progress=False, cross=True)
    dense = gffmerge.measure(m, [(x, ei)], progress=False, cross=True, dense=True)
    assert calls == [1]  # the first layer only: hidden features are dense
    name = next(iter(fast.layers))
    ref = aug_gram(rows(x, ei, x.shape[0]))
    assert rel(fast.models[0].layers[name].gram, ref) < 1e-10
    for lname in fast.layers:
        a, b = fast.models[0].layers[lname], dense.models[0].layers[lname]
        assert rel(a.gram, b.gram) < 1e-10 and rel(a.cross, b.cross) < 1e-10
        assert a.rows == b.rows


def test_first_layer_is_measured_once_for_sources_on_one_graph(layer_sum_widths):
    x, ei = bow_graph(seed=1)
    ms = models(GCNConv, x.shape[1])
    grams = layer_sum_widths
    shared = InputCache()
    together = [gffmerge.measure(m, [(x, ei)], progress=False, shared=shared) for m in ms]
    assert grams == [x.shape[1], 8, 8]  # layer 1 once, layer 2 per source
    apart = [gffmerge.measure(m, [(x, ei)], progress=False) for m in ms]
    for t, a in zip(together, apart):
        for name in t.layers:
            tl, al = t.models[0].layers[name], a.models[0].layers[name]
            assert torch.equal(tl.gram, al.gram) and tl.rows == al.rows
    # another graph's features do not hit the cache
    x2 = x.clone()
    x2[0, 0] = 1 - x2[0, 0]
    other = gffmerge.measure(ms[0], [(x2, ei)], progress=False, shared=shared)
    name = "c1[lin.weight|bias]"
    assert not torch.equal(other.models[0].layers[name].gram,
                           together[0].models[0].layers[name].gram)


@pytest.mark.parametrize("kind", ["gcn", "sage"])
@pytest.mark.parametrize("dense_features", [False, True])
def test_selected_rows_match_the_reference_rows(kind, dense_features):
    x, ei = bow_graph(seed=2)
    if dense_features:
        x = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    make, rows = (GCNConv, gcn_rows) if kind == "gcn" else (SAGEConv, sage_rows)
    m = models(make, x.shape[1], k=1)[0]
    nodes = torch.tensor([5, 0, 17, 33, 2])

    def forward(model, batch):
        with node_rows(nodes):
            return model(*batch)

    st = gffmerge.measure(m, [(x, ei)], progress=False, cross=True, forward=forward)
    layer1 = st.models[0].layers[next(iter(st.layers))]
    r = rows(x, ei, x.shape[0])[nodes]
    assert layer1.rows == len(nodes)
    assert rel(layer1.gram, aug_gram(r)) < 1e-10
    with torch.no_grad():
        y = m.c1(x, ei)[nodes]
    r1 = torch.cat([r, torch.ones(len(r), 1, dtype=F64)], 1)
    assert rel(layer1.cross, r1.T @ y) < 1e-10


def test_one_gram_for_every_source_with_mean_prior_is_the_average():
    g = torch.randn(6, 6, dtype=F64)
    g = g @ g.T
    thetas = [torch.randn(6, 3, dtype=F64) for _ in range(2)]
    mean = (thetas[0] + thetas[1]) / 2
    b = g @ thetas[0] + g @ thetas[1]
    known = LayerSystem(2 * g, b, ridge=0.3, prior=mean, known=mean)
    plain = LayerSystem(2 * g, b, ridge=0.3, prior=mean)
    sol = solve_systems({"k": known, "p": plain}, condition=False)
    assert torch.equal(sol["k"].x, mean)
    assert rel(sol["p"].x, mean) < 1e-10


def test_directions_without_data_decouple_exactly():
    torch.manual_seed(0)
    r = torch.randn(10, 7, dtype=F64)
    r[:, [1, 4]] = 0.0  # two input directions that carry no data
    a = r.T @ r
    b = a @ torch.randn(7, 2, dtype=F64)
    prior = torch.randn(7, 2, dtype=F64)
    lam = 0.05
    ref = torch.linalg.solve(a + lam * torch.eye(7, dtype=F64), b + lam * prior)
    got = solve_systems({"l": LayerSystem(a, b, ridge=lam, prior=prior)}, condition=True)["l"]
    assert rel(got.x, ref) < 1e-10
    assert torch.equal(got.x[[1, 4]], prior[[1, 4]])
    assert got.cond == pytest.approx(float(torch.linalg.cond(a + lam * torch.eye(7, dtype=F64))),
                                     rel=1e-6)


# ---------------------------------------------------------------- rows option and choice
def tiny_tasks():
    from gffmerge.data.graphs import sbm_graph
    from gffmerge.gnn_experiment import GnnExperimentConfig, tasks_for

    cfg = GnnExperimentConfig(dataset="sbm", setting="in-domain", backbone="gcn", seeds=1,
                              epochs=15, hidden=8)
    g = sbm_graph(300, num_classes=4, avg_degree=6, num_features=8, seed=0, train_per_class=10,
                  num_val=80, num_test=80)
    return cfg, tasks_for(cfg, [g], 0)


def test_row_options_pick_own_nodes_and_their_neighbours():
    from gffmerge.gnn_select import row_nodes

    _, tasks = tiny_tasks()
    t = tasks[0]
    own = row_nodes(t, "own")
    assert row_nodes(t, "all") is None
    assert set(own.tolist()) == set(t.node_labels(t.graph.train_mask)[0].tolist())
    near = set(row_nodes(t, "own+nbr").tolist())
    ei = t.edges
    mark = set(own.tolist())
    expected = mark | {d for s, d in ei.T.tolist() if s in mark} | {s for s, d in ei.T.tolist()
                                                             if d in mark}
    assert near == expected and len(near) > len(own)
    with pytest.raises(ValueError, match="rows='some' is not valid"):
        row_nodes(t, "some")


def test_validation_choice_scores_every_candidate_and_never_reads_test_labels():
    from gffmerge.gnn_experiment import train_source
    from gffmerge.gnn_select import choose

    cfg, tasks = tiny_tasks()
    trained = [train_source(t, "gcn", cfg, seed=k) for k, t in enumerate(tasks)]
    backbones, heads = [b for b, _, _ in trained], [h for _, h, _ in trained]
    options = {"weighting": "per_model", "prior": "mean", "condition": False}
    model, chosen = choose(backbones, heads, tasks, "gffmerge", options,
                           ridges=(1e-4, 1.0))
    cands = chosen["candidates"]
    assert [(c["rows"], c["ridge"]) for c in cands] == [
        (r, x) for r in ("all", "own", "own+nbr") for x in (1e-4, 1.0)]
    best = max(c["score"] for c in cands)
    first = next(c for c in cands if c["score"] == best)
    assert (chosen["rows"], chosen["ridge"], chosen["score"]) == (
        first["rows"], first["ridge"], best)
    assert isinstance(model, nn.Module) and chosen["seconds"] > 0
    # scrambling the test labels and mask changes nothing: the choice reads validation only
    g = tasks[0].graph
    gen = torch.Generator().manual_seed(5)
    scrambled = Data(x=g.x, edge_index=g.edge_index, train_mask=g.train_mask,
                     val_mask=g.val_mask, test_mask=~g.test_mask,
                     y=torch.where(g.test_mask, torch.randint(0, 4, g.y.shape, generator=gen),
                                   g.y))
    from dataclasses import replace

    again = choose(backbones, heads, [replace(t, graph=scrambled) for t in tasks], "gffmerge",
                   options, ridges=(1e-4, 1.0))[1]
    assert [c["score"] for c in again["candidates"]] == [c["score"] for c in cands]
