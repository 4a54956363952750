"""The one-pass validation choice of GNN merges: every row option's Grams from one forward
per source against separate measurements, the ridge path against separate Cholesky solves
(float64), and the whole choice against the per-candidate reference."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("torch_geometric")
from torch_geometric.data import Data  # noqa: E402

from gffmerge.gnn_rows import Source, nested_grams, option_path, source_rows  # noqa: E402
from gffmerge.gnn_select import (  # noqa: E402
    ROWS,
    choose,
    choose_per_candidate,
    measure_sources,
    row_nodes,
)
from gffmerge.methods import get as get_method  # noqa: E402
from gffmerge.solver.ridge_path import (  # noqa: E402
    dual_path,
    kernel,
    kernel_gathered,
    primal_path,
)
from gffmerge.solver.state import layer_theta  # noqa: E402
from gffmerge_ext import row_gram_devices  # noqa: E402

F64 = torch.float64
OPTIONS = {"weighting": "per_model", "prior": "mean", "condition": False}


@dataclass
class Cfg:
    epochs: int = 12
    hidden: int = 8
    lr: float = 0.01
    weight_decay: float = 5e-4


def bow_tasks(n=120, d=60, seed=0):
    """Two label sets of a random graph with bag-of-words features (~6 % non-zero): few
    labelled nodes, so a first layer on the own nodes has fewer rows than columns."""
    from gffmerge.gnn_experiment import GnnExperimentConfig, tasks_for

    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, d, generator=g) < 0.06).float()
    ei = torch.randint(0, n, (2, 3 * n), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    y = torch.randint(0, 4, (n,), generator=g)
    perm = torch.randperm(n, generator=g)
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    for m, part in zip(masks, (perm[:24], perm[24:74], perm[74:])):
        m[part] = True
    graph = Data(x=x, edge_index=torch.cat([ei, ei.flip(0)], 1), y=y, train_mask=masks[0],
                 val_mask=masks[1], test_mask=masks[2])
    cfg = GnnExperimentConfig(dataset="sbm", setting="in-domain", backbone="gcn", seeds=1)
    return tasks_for(cfg, [graph], 0)


def sources(kind, tasks):
    from gffmerge.gnn_tasks import train_source

    trained = [train_source(t, kind, Cfg(), seed=7 + k) for k, t in enumerate(tasks)]
    return [b for b, _, _ in trained], [h for _, h, _ in trained]


def one_pass_of(kind):
    """Tasks, trained sources and each source's one-pass rows (one shared cache)."""
    tasks = bow_tasks()
    backbones, _ = sources(kind, tasks)
    shared: dict = {}
    passes = [source_rows(b, t.graph.x, t.edges, shared) for b, t in zip(backbones, tasks)]
    return tasks, backbones, passes


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def float64_copies(backbones):
    """The sources and tasks in float64: the independent reference of the one-pass rows
    (formed in float64 from the sparse features)."""
    import copy

    tasks = bow_tasks()
    tasks[0].graph.x = tasks[0].graph.x.double()  # one graph shared by both tasks
    return [copy.deepcopy(b).double() for b in backbones], tasks


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_one_pass_grams_equal_separate_measurements(kind):
    tasks, backbones, passes = one_pass_of(kind)
    first = next(iter(passes[0]))
    assert passes[0][first] is passes[1][first]  # raw features, one graph: formed once
    assert passes[0][first].sparse
    b64, t64 = float64_copies(backbones)
    order = ["own", "own+nbr", "all"]
    for r in ROWS:
        stats = measure_sources(b64, t64, r)  # float64 forwards with hooks
        stats32 = measure_sources(backbones, tasks, r)  # the float32 forwards
        for k, t in enumerate(tasks):
            sets = [row_nodes(t, o) for o in order]
            for name, unit in passes[k].items():
                mine = nested_grams(unit, sets)[order.index(r)]
                ref = stats.models[k].layers[name].gram
                assert rel(mine, ref) < 1e-10, (r, k, name)
                # the float32 route rounds the hidden features and GCN's edge weights
                assert rel(mine, stats32.models[k].layers[name].gram) < 1e-5, (r, k, name)
                assert stats.models[k].layers[name].rows == (
                    unit.num_rows if sets[order.index(r)] is None
                    else len(sets[order.index(r)]))


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_rows_formed_on_demand_equal_the_whole_matrix(kind):
    tasks = bow_tasks()
    backbones, _ = sources(kind, tasks)
    passes = source_rows(backbones[0], tasks[0].graph.x, tasks[0].edges)
    first = next(iter(passes))
    unit = passes[first]
    theta = layer_theta(backbones[0].state_dict(), first)[:unit.dim]
    lazy = unit.matmul(theta)  # Σᵢ Lᵢ(X Θᵢ) + θ_b, no rows formed
    nodes = row_nodes(tasks[0], "own+nbr")
    part = unit.take(nodes).to_dense()
    whole = unit.x.to_dense()  # now formed
    assert part.shape[1] == unit.dim and whole.shape == (unit.num_rows, unit.dim)
    assert rel(part, whole[nodes]) < 1e-12
    assert rel(lazy, whole @ theta) < 1e-12
    with pytest.raises(ValueError, match="rows"):
        unit.matmul(theta[1:])


def test_nested_grams_need_nested_sets():
    tasks = bow_tasks()
    backbones, _ = sources("gcn", tasks)
    unit = next(iter(source_rows(backbones[0], tasks[0].graph.x, tasks[0].edges).values()))
    with pytest.raises(ValueError, match="contain the previous one"):
        nested_grams(unit, [torch.tensor([0, 1]), torch.tensor([2, 3])])


def separate(a, b, prior, lam):
    eye = torch.eye(a.shape[0], dtype=F64)
    rhs = b if prior is None else b + lam * prior
    return torch.cholesky_solve(rhs, torch.linalg.cholesky(a + lam * eye))


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("with_prior", [False, True])
def test_ridge_path_equals_separate_cholesky_solves(sparse, with_prior):
    g = torch.Generator().manual_seed(3)
    r, dim, out = 12, 30, 5
    z = torch.randn(r, dim, generator=g, dtype=F64) * (torch.rand(r, dim, generator=g) < 0.3)
    z[:, 4] = 0.0  # a direction without data
    y = torch.randn(r, out, generator=g, dtype=F64)
    prior = torch.randn(dim, out, generator=g, dtype=F64) if with_prior else None
    a, b = z.T @ z, z.T @ y
    lams = [1e-4, 1e-2, 1.0]
    refs = [separate(a, b, prior, lam) for lam in lams]
    zin = z.to_sparse() if sparse else z
    for route, got in (("dual", dual_path(zin, y, prior, lams)),
                       ("dual eigen", dual_path(zin, y, prior, lams, route="eigen")),
                       ("eigen", primal_path(a, b, prior, lams, route="eigen")),
                       ("cholesky", primal_path(a, b, prior, lams))):
        for lam, x, ref in zip(lams, got, refs):
            assert rel(x, ref) < 1e-10, (route, lam)
        if prior is not None:  # no data in direction 4: the prior there
            assert torch.allclose(got[0][4], prior[4], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="every ridge > 0"):
        dual_path(zin, y, prior, [0.0])


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")
@pytest.mark.parametrize("shape", [(12, 30), (663, 2867)])  # small; Cora SAGE's own+nbr
def test_kernel_of_sparse_rows_equals_the_dense_product(shape):
    """``Z Zᵀ`` from sparse rows (the compiled ``row_gram_`` on the CPU, and the gathered
    sums used elsewhere) against the float64 dense product; the gathered sums bit for bit
    the CSR product; rows and columns without entries included."""
    r, dim = shape
    g = torch.Generator().manual_seed(5)
    z = torch.randn(r, dim, generator=g, dtype=F64) * (torch.rand(r, dim, generator=g) < 0.05)
    z[1] = 0.0  # a row without entries (an isolated node's rows)
    z[:, 3] = 0.0
    ref = z @ z.T
    zc = z.to_sparse_csr()
    for got in (kernel(z.to_sparse()), kernel(zc), kernel_gathered(zc)):
        assert got.shape == (r, r) and got.dtype == F64
        assert rel(got, ref) < 1e-13
        assert torch.equal(got[1], torch.zeros(r, dtype=F64))
    assert torch.equal(kernel_gathered(zc), torch.sparse.mm(zc, z.T.contiguous()))
    if "cpu" in row_gram_devices():
        assert torch.equal(kernel(zc), kernel(zc).T)  # the compiled kernel: exactly symmetric
    assert torch.equal(kernel(z), ref)  # dense rows: the dense product


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_option_path_equals_the_gffmerge_solve_of_each_option(kind):
    tasks, backbones, passes = one_pass_of(kind)
    ridges = (1e-4, 1e-2, 1.0)
    method = get_method("gffmerge")
    routes = set()
    for r in ROWS:
        srcs = [Source(b, passes[k], row_nodes(t, r)) for k, (b, t) in
                enumerate(zip(backbones, tasks))]
        path = option_path(srcs, ridges)
        stats = measure_sources(backbones, tasks, r)
        for name in passes[0]:
            rows = sum(len(s.nodes) if s.nodes is not None else s.rows[name].num_rows
                       for s in srcs)
            routes.add("dual" if rows < passes[0][name].dim else "primal")
        for j, ridge in enumerate(ridges):
            merged = method(backbones, stats, **OPTIONS, ridge=ridge,
                            ridge_mode="relative").model
            sd = merged.state_dict()
            for name, thetas in path.items():
                assert rel(thetas[j], layer_theta(sd, name)) < 1e-5  # float32 weights
    assert routes == {"dual", "primal"}


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_one_pass_choice_equals_the_per_candidate_choice(kind):
    tasks = bow_tasks()
    backbones, heads = sources(kind, tasks)
    model, chosen = choose(backbones, heads, tasks, "gffmerge", OPTIONS)
    ref_model, ref = choose_per_candidate(backbones, heads, tasks, "gffmerge", OPTIONS)
    assert chosen["route"] == "one pass" and ref["route"] == "per candidate"
    assert [(c["rows"], c["ridge"]) for c in chosen["candidates"]] == [
        (c["rows"], c["ridge"]) for c in ref["candidates"]]
    for mine, theirs in zip(chosen["candidates"], ref["candidates"]):
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-12)
    assert (chosen["rows"], chosen["ridge"]) == (ref["rows"], ref["ridge"])
    sd, sd_ref = model.state_dict(), ref_model.state_dict()
    for key in sd_ref:
        assert rel(sd[key].double(), sd_ref[key].double()) < 1e-5, key


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_tasks_scored_together_equal_one_task_at_a_time(kind):
    """The grouped scoring (later units formed once on every task's validation nodes)
    gives each task exactly the accuracy of the one-task evaluation, and that equals the
    float64 forward of the written model; every candidate of the path."""
    from gffmerge.gnn_one_pass import OnePass, fast_accuracy
    from gffmerge.gnn_select import validation_accuracy
    from gffmerge.models.pyg import kept_propagations
    from gffmerge.solver.state import mean_state_dict, write_back

    tasks = bow_tasks()
    backbones, heads = sources(kind, tasks)
    b64, t64 = float64_copies(backbones)
    h64 = [h.double() for h in heads]
    with kept_propagations():
        one = OnePass(backbones, tasks)
        first = next(iter(one.passes[0].values()))
        assert first is next(iter(one.passes[1].values()))  # one group of two tasks
        checked = 0
        for r in ROWS:
            for j, _ in enumerate((1e-4, 1e-2, 1.0)):
                thetas = {n: p[j] for n, p in one.path(r, (1e-4, 1e-2, 1.0)).items()}
                together = one.accuracies(thetas, heads)
                alone = [fast_accuracy(thetas, one.passes[k], backbones[0], heads[k], t,
                                       support=one.support(k, "val_mask"))
                         for k, t in enumerate(tasks)]
                assert together == alone, (r, j)
                model, _ = write_back(b64[0], mean_state_dict(b64), thetas)
                model = model.double()
                for k, t in enumerate(t64):
                    assert together[k] == validation_accuracy(model, h64[k], t), (r, j, k)
                checked += 1
    assert checked == 9


def test_other_backbones_take_the_per_candidate_route_and_say_why():
    tasks = bow_tasks()
    backbones, heads = sources("gin", tasks)
    _, chosen = choose(backbones, heads, tasks, "gffmerge", OPTIONS, ridges=(1e-2,))
    assert chosen["route"] == "per candidate"
    assert "GCNConv / SAGEConv" in chosen["route_reason"]


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_sparse_feature_input_is_the_same_model(kind):
    from gffmerge.gnn_tasks import Backbone, model_input

    tasks = bow_tasks()
    g = tasks[0].graph
    edges = g.edge_index[:, g.edge_index[0] != 5]  # node 5 receives no messages
    edges = edges[:, edges[1] != 5]
    torch.manual_seed(0)
    model = Backbone(kind, g.num_features, 8)
    xs = model_input(g.x, kind)
    assert xs.layout == torch.sparse_csr
    assert model_input(g.x, "gin") is g.x
    dense = model(g.x, edges)
    grads = torch.autograd.grad(dense.square().sum(), list(model.parameters()))
    sparse = model(xs, edges)
    grads_s = torch.autograd.grad(sparse.square().sum(), list(model.parameters()))
    assert torch.allclose(sparse, dense, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_s, grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_kept_propagations_follow_in_place_changes_of_the_edges():
    from torch_geometric.nn import GCNConv

    from gffmerge.models import pyg
    from gffmerge.models.groups import linear_units

    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, generator=g, dtype=F64)
    edges = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    view = next(iter(linear_units(GCNConv(3, 2).double()).values())).view

    def rows():
        return view.gram_parts(x, edges).parts[0].x.clone()

    with pyg.kept_propagations():
        first = rows()
        assert len(pyg._KEPT.get()["adj"]) == 1 and pyg._KEPT.get()["norm"]
        assert torch.equal(rows(), first)  # kept normalisation and matrix: same result
        assert len(pyg._KEPT.get()["adj"]) == 1
        edges[1, 4] = 0  # the last edge now points at node 0
        changed = rows()
    assert pyg._KEPT.get() is None  # nothing kept after the block
    view2 = next(iter(linear_units(GCNConv(3, 2).double()).values())).view
    fresh = view2.gram_parts(x, edges.clone()).parts[0].x  # new tensors: nothing kept
    assert not torch.allclose(changed, first)
    assert torch.allclose(changed, fresh, rtol=0, atol=1e-14)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")
@pytest.mark.parametrize("kind", ["gcn", "sage"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_route_equals_the_product_route(kind, seed, monkeypatch):
    """The choice with the compiled sparse kernels (``row_gram_``, ``csr_mm_``), the dual
    targets and residuals taken from the sources' outputs and the mean output kept for the
    ``all`` option equals the choice without any of them (torch's products, the targets
    ``Z_k Θ_k`` and ``ZΘ̄`` formed, every first-layer product formed): same candidates,
    scores and pick; float64 unit weights of every candidate within 1e-10."""
    import gffmerge.collect.sparse as sparse_mod
    import gffmerge.gnn_one_pass as one_pass_mod
    import gffmerge.solver.ridge_path as ridge_mod
    from gffmerge.gnn_one_pass import OnePass
    from gffmerge.gnn_select import CHOICE_RIDGES
    from gffmerge.models.pyg import kept_propagations

    tasks = bow_tasks(n=150, d=90, seed=seed)
    backbones, heads = sources(kind, tasks)

    def run():
        with kept_propagations():
            one = OnePass(backbones, tasks, ROWS)
            paths = {r: one.path(r, CHOICE_RIDGES) for r in ROWS}
        model, chosen = choose(backbones, heads, tasks, "gffmerge", OPTIONS)
        return paths, model, chosen

    calls = {"row_gram_": 0, "csr_mm_": 0}

    def counted(mod, name):
        real = getattr(mod, name)

        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(mod, name, call)

    counted(ridge_mod, "row_gram_")
    counted(sparse_mod, "csr_mm_")
    fast_paths, fast_model, fast = run()
    if "cpu" in row_gram_devices():  # the compiled kernels were used
        assert calls["row_gram_"] > 0 and calls["csr_mm_"] > 0
    with monkeypatch.context() as m:
        m.setattr(sparse_mod, "row_gram_devices", lambda: ())
        m.setattr(ridge_mod, "row_gram_devices", lambda: ())
        m.setattr(one_pass_mod.OnePass, "outputs", lambda self, k: {})
        m.setattr(one_pass_mod.OnePass, "_mean_output", lambda self, path: None)
        slow_paths, slow_model, slow = run()
    assert [(c["rows"], c["ridge"], c["score"]) for c in fast["candidates"]] == [
        (c["rows"], c["ridge"], c["score"]) for c in slow["candidates"]]
    assert (fast["rows"], fast["ridge"]) == (slow["rows"], slow["ridge"])
    for r in ROWS:
        for name in slow_paths[r]:
            for a, b in zip(fast_paths[r][name], slow_paths[r][name]):
                assert rel(a, b) < 1e-10, (r, name)
    sd, sd_ref = fast_model.state_dict(), slow_model.state_dict()
    for key in sd_ref:
        assert rel(sd[key].double(), sd_ref[key].double()) < 1e-6, key


def _input64_to_sparse(x):
    """The first unit's input as the previous route formed it (torch's ``to_sparse``, a
    float64 copy, ``coalesce``; no CSR form kept): the reference of the compiled
    conversion."""
    from gffmerge.models.pyg import SPARSE_DENSITY

    if x.layout != torch.strided:
        return x.to_sparse_coo().to(F64).coalesce(), None
    xs = x.to_sparse()
    if x.dim() == 2 and xs._nnz() <= SPARSE_DENSITY * x.numel():
        return xs.to(F64).coalesce(), None
    return x.to(F64), None


@pytest.mark.parametrize("kind", ["gcn", "sage"])
@pytest.mark.parametrize("seed", [0, 2])
def test_compiled_feature_conversion_gives_the_same_choice(kind, seed, monkeypatch):
    """The first unit's input converted by ``dense_csr_count_`` / ``dense_csr_fill_`` (its
    CSR form kept for the products on all rows) and the chosen model written by
    :func:`~gffmerge.solver.state.mean_written` give the previous route's choice exactly:
    same candidates, scores, pick and written weights (bit for bit)."""
    import gffmerge.collect.sparse as sparse_mod
    import gffmerge.gnn_one_pass as one_pass_mod
    import gffmerge.gnn_rows as rows_mod
    from gffmerge.solver.state import mean_state_dict, write_back

    tasks = bow_tasks(n=140, d=80, seed=seed)
    backbones, heads = sources(kind, tasks)
    calls = {"fill": 0}
    real = sparse_mod.dense_csr_fill_

    def fill(*args, **kwargs):
        calls["fill"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(sparse_mod, "dense_csr_fill_", fill)
    model, chosen = choose(backbones, heads, tasks, "gffmerge", OPTIONS)
    if "cpu" in row_gram_devices():
        assert calls["fill"] >= 1
    with monkeypatch.context() as m:
        m.setattr(rows_mod, "_input64", _input64_to_sparse)
        m.setattr(one_pass_mod, "mean_written", lambda bb, th: write_back(
            bb[0], mean_state_dict(bb), th))
        ref_model, ref = choose(backbones, heads, tasks, "gffmerge", OPTIONS)
    assert [(c["rows"], c["ridge"], c["score"]) for c in chosen["candidates"]] == [
        (c["rows"], c["ridge"], c["score"]) for c in ref["candidates"]]
    assert (chosen["rows"], chosen["ridge"]) == (ref["rows"], ref["ridge"])
    sd, sd_ref = model.state_dict(), ref_model.state_dict()
    assert sd.keys() == sd_ref.keys()
    for key in sd_ref:
        assert torch.equal(sd[key], sd_ref[key]), key


def test_mean_written_equals_write_back_of_the_mean():
    """Every entry the Θ do not write is the sources' mean, every written one Θ's; the copy
    owns its tensors (not the template's), keeps requires_grad and non-persistent buffers."""
    from torch import nn

    from gffmerge.solver.state import mean_state_dict, mean_written, write_back

    class Net(nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.a = nn.Linear(5, 4)
            self.b = nn.Linear(4, 3)
            self.register_buffer("count", torch.tensor([2, 3]))
            self.register_buffer("scratch", torch.randn(3), persistent=False)

    models = [Net(1), Net(2), Net(3)]
    models[0].b.weight.requires_grad_(False)
    thetas = {"a": torch.randn(6, 4, dtype=F64)}  # layer b keeps the mean
    got, keys = mean_written(models, thetas)
    want, want_keys = write_back(models[0], mean_state_dict(models), thetas)
    assert keys == want_keys == {"a.weight", "a.bias"}
    sd, sd_want = got.state_dict(), want.state_dict()
    assert sd.keys() == sd_want.keys()
    for key in sd_want:
        assert torch.equal(sd[key], sd_want[key]), key
    stacked = torch.stack([m.b.weight.detach().double() for m in models]).mean(0).float()
    assert torch.equal(got.b.weight, stacked)
    assert torch.equal(got.a.weight, thetas["a"][:5].T.float())
    assert torch.equal(got.scratch, models[0].scratch)  # not in the state: copied
    for p, q in zip(got.parameters(), models[0].parameters()):
        assert p.data_ptr() != q.data_ptr() and p.requires_grad == q.requires_grad
    assert got.scratch.data_ptr() != models[0].scratch.data_ptr()


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")
@pytest.mark.parametrize("rows,cols,density", [(0, 5, 0.3), (7, 1, 0.5), (30, 40, 0.0),
                                               (30, 40, 0.1), (25, 9, 1.0)])
def test_rows_with_ones_and_stacked_blocks_equal_the_sorted_forms(rows, cols, density):
    """``[x, 1]`` and row blocks one under another, formed in order without a sort, hold
    exactly the entries (same order and values) of the coalesced ``cat``s they replace;
    empty rows, no rows and full rows included."""
    from gffmerge.collect.sparse import coo_of_csr
    from gffmerge.gnn_rows import _stacked, _with_ones

    g = torch.Generator().manual_seed(rows * 100 + cols)
    x = torch.randn(rows, cols, generator=g, dtype=F64)
    x = x * (torch.rand(rows, cols, generator=g) < density)
    if rows > 2:
        x[1] = 0.0
    csr = x.to_sparse_csr()
    got = coo_of_csr(_with_ones(csr))
    want = torch.cat([x.to_sparse(), torch.ones(rows, 1, dtype=F64).to_sparse()], 1).coalesce()
    assert got.is_coalesced() and got.shape == want.shape
    assert torch.equal(got.indices(), want.indices())
    assert torch.equal(got.values(), want.values())
    assert torch.equal(got.to_dense(), torch.cat([x, torch.ones(rows, 1, dtype=F64)], 1))
    blocks = [got * 0.5, got.index_select(0, torch.arange(rows // 2)).coalesce() * 2.0, got]
    stacked = _stacked(blocks)
    want_stacked = torch.cat(blocks, 0).coalesce()
    assert stacked.is_coalesced()
    assert torch.equal(stacked.indices(), want_stacked.indices())
    assert torch.equal(stacked.values(), want_stacked.values())
    assert torch.equal(_stacked([got]).to_dense(), got.to_dense())
