"""PyG models measured and merged as they are, against float64 references built here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pyg = pytest.importorskip("torch_geometric")
from torch_geometric.nn import MLP, GATConv, GATv2Conv, GCNConv, GINConv, SAGEConv  # noqa: E402
from torch_geometric.nn import Linear as PygLinear  # noqa: E402

import gffmerge  # noqa: E402
from gffmerge.models.groups import group_name, linear_units, unit_keys  # noqa: E402
from gffmerge.solver.state import layer_theta, write_layer  # noqa: E402

F64 = torch.float64


def graph(n: int, e: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=F64)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    return x, torch.cat([ei, ei.flip(0)], 1)


def dense_adj(ei: torch.Tensor, n: int) -> torch.Tensor:
    """A[i, j] = number of edges j → i (PyG's source-to-target flow)."""
    a = torch.zeros(n, n, dtype=F64)
    a.index_put_((ei[1], ei[0]), torch.ones(ei.shape[1], dtype=F64), accumulate=True)
    return a


def gcn_hat(ei: torch.Tensor, n: int) -> torch.Tensor:
    a = dense_adj(ei, n) + torch.eye(n, dtype=F64)
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


class Stack(nn.Module):
    """Two convolutions, optionally without nonlinearity (a linear GNN)."""

    def __init__(self, make, relu: bool):
        super().__init__()
        self.c1, self.c2 = make(6, 5), make(5, 3)
        self.relu = relu

    def forward(self, x, ei):
        h = self.c1(x, ei)
        return self.c2(h.relu() if self.relu else h, ei)


def sources(make, relu=False, k=2):
    out = []
    for s in range(k):
        torch.manual_seed(10 + s)
        m = Stack(make, relu).double()
        with torch.no_grad():  # non-zero biases, so the intercept is exercised
            for name, p in m.named_parameters():
                if name.endswith("bias"):
                    p.normal_()
        out.append(m)
    return out


def lstsq_union(inputs, targets):
    """Least squares of the stacked [X_k, 1] against the stacked Y_k (float64)."""
    x = torch.cat([torch.cat([xi, torch.ones(len(xi), 1, dtype=F64)], 1) for xi in inputs])
    return torch.linalg.lstsq(x, torch.cat(targets), driver="gelsd").solution


def test_linear_gcn_closed_form_is_least_squares_on_the_union():
    graphs = [graph(40, 120, 0), graph(30, 90, 1)]
    models = sources(GCNConv)
    stats = [gffmerge.measure(m, [g], progress=False) for m, g in zip(models, graphs)]
    assert list(stats[0].layers) == ["c1[lin.weight|bias]", "c2[lin.weight|bias]"]
    merged = gffmerge.solve(models, stats, ridge=0.0).model
    h1, h2 = [], []
    for m, (x, ei) in zip(models, graphs):
        a = gcn_hat(ei, len(x))
        h1.append(a @ x)  # layer 1 input rows Â X of this source
        h2.append(a @ m.c1(x, ei).detach())  # layer 2: Â H_k with the source's own H_k
    for layer, rows in (("c1", h1), ("c2", h2)):
        targets = [torch.cat([r, torch.ones(len(r), 1, dtype=F64)], 1)
                   @ layer_theta(m.state_dict(), f"{layer}[lin.weight|bias]")
                   for m, r in zip(models, rows)]
        ref = lstsq_union(rows, targets)
        conv = getattr(merged, layer)
        got = torch.cat([conv.lin.weight.T, conv.bias[None]]).detach()
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    # the merged linear GCN reproduces each source's layer outputs as well as least squares
    assert not torch.allclose(merged.c1.lin.weight, models[0].c1.lin.weight)


def test_sage_group_is_one_joint_system_over_mean_and_root():
    graphs = [graph(40, 100, 2), graph(35, 80, 3)]
    models = sources(SAGEConv)
    name = "c1[lin_l.weight+lin_r.weight|lin_l.bias]"
    stats = [gffmerge.measure(m, [g], progress=False) for m, g in zip(models, graphs)]
    assert name in stats[0].layers and stats[0].layers[name].in_features == 12
    rows = []
    for st, (x, ei) in zip(stats, graphs):
        a = dense_adj(ei, len(x))
        mean = (a / a.sum(1, keepdim=True).clamp_min(1)) @ x  # dense reference of mean_N(x)
        z = torch.cat([mean, x, torch.ones(len(x), 1, dtype=F64)], 1)
        torch.testing.assert_close(st.models[0].layers[name].gram, z.T @ z, rtol=1e-12,
                                   atol=1e-10)
        rows.append(z[:, :-1])
    merged = gffmerge.solve(models, stats, ridge=0.0).model
    targets = [m.c1(x, ei).detach() for m, (x, ei) in zip(models, graphs)]
    ref = lstsq_union(rows, targets)
    c1 = merged.c1
    got = torch.cat([c1.lin_l.weight.T, c1.lin_r.weight.T, c1.lin_l.bias[None]]).detach()
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    # fitting lin_l and lin_r each alone to the summed output gives other (worse) weights
    alone = lstsq_union([r[:, :6] for r in rows], targets)
    assert (alone[:6] - ref[:6]).abs().max() > 1e-3


def _dense_reference(models, graphs, units, ridge):
    """Per-Linear float64 solve from inputs captured by plain forward hooks (the bias
    fitted jointly when the layer has one)."""
    names = list(units)
    grams = {n: [] for n in names}
    for m, g in zip(models, graphs):
        seen: dict[str, list] = {}
        mods = dict(m.named_modules())
        hs = [mods[n].register_forward_hook(
            lambda mod, args, out, n=n, seen=seen: seen.setdefault(n, []).append(
                args[0].detach()))
            for n in names]
        with torch.no_grad():
            m(*g)
        for h in hs:
            h.remove()
        for n in names:
            x = torch.cat(seen[n])
            z = torch.cat([x, torch.ones(len(x), 1, dtype=F64)], 1)
            grams[n].append(z.T @ z)
    out = {}
    for n in names:
        dim = units[n].info.in_features + int(units[n].info.has_bias)
        thetas = [layer_theta(m.state_dict(), n)[:dim] for m in models]
        grams[n] = [g[:dim, :dim] for g in grams[n]]
        a = sum(grams[n])
        b = sum(g @ t for g, t in zip(grams[n], thetas))
        out[n] = torch.linalg.solve(a + ridge * torch.eye(len(a), dtype=F64), b)
    return out


@pytest.mark.parametrize("kind", ["gin", "gat", "gatv2"])
def test_gin_and_gat_per_linear_merge_equals_dense_reference(kind):
    make = {"gin": lambda i, o: GINConv(MLP([i, 8, o], norm=None)),
            "gat": lambda i, o: GATConv(i, o, heads=2, concat=False),
            "gatv2": lambda i, o: GATv2Conv(i, o, heads=2, concat=False)}[kind]
    graphs = [graph(30, 80, 4), graph(25, 60, 5)]
    models = sources(make, relu=True)
    units = linear_units(models[0])
    assert units and all(isinstance(dict(models[0].named_modules())[n], PygLinear)
                         for n in units)
    stats = [gffmerge.measure(m, [g], progress=False) for m, g in zip(models, graphs)]
    merged = gffmerge.solve(models, stats, ridge=1e-8).model
    ref = _dense_reference(models, graphs, units, 1e-8)
    state = merged.state_dict()
    for n, theta in ref.items():
        info = units[n].info
        got = layer_theta(state, n)[:info.in_features + int(info.has_bias)]
        torch.testing.assert_close(got, theta, rtol=1e-7, atol=1e-9)
    if kind != "gin":  # attention vectors are averaged
        key = "c1.att_src" if kind == "gat" else "c1.att"
        torch.testing.assert_close(state[key], (models[0].state_dict()[key]
                                                + models[1].state_dict()[key]) / 2)


def test_pyg_linear_is_collected_like_nn_linear():
    torch.manual_seed(0)
    pyg_model = nn.Sequential(PygLinear(4, 3), nn.ReLU(), PygLinear(3, 2, bias=False)).double()
    plain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False)).double()
    plain.load_state_dict(pyg_model.state_dict())
    x = torch.randn(20, 4, dtype=F64)
    s_pyg = gffmerge.measure(pyg_model, [x], progress=False)
    s_plain = gffmerge.measure(plain, [x], progress=False)
    assert list(s_pyg.layers) == ["0", "2"]
    for n in ("0", "2"):
        assert s_pyg.layers[n] == s_plain.layers[n]
        torch.testing.assert_close(s_pyg.models[0].layers[n].gram,
                                   s_plain.models[0].layers[n].gram)


def test_group_names_split_and_join_parameters():
    name = group_name("convs.0", ["lin_l.weight", "lin_r.weight"], "lin_l.bias")
    assert name == "convs.0[lin_l.weight+lin_r.weight|lin_l.bias]"
    assert unit_keys(name) == (["convs.0.lin_l.weight", "convs.0.lin_r.weight"],
                               "convs.0.lin_l.bias")
    assert unit_keys("head") == (["head.weight"], "head.bias")
    state = {"convs.0.lin_l.weight": torch.zeros(3, 4), "convs.0.lin_r.weight": torch.zeros(3, 2),
             "convs.0.lin_l.bias": torch.zeros(3)}
    theta = torch.arange(21, dtype=F64).reshape(7, 3)
    written = write_layer(state, name, theta)
    assert sorted(written) == sorted(state)
    torch.testing.assert_close(state["convs.0.lin_r.weight"], theta[4:6].T.float())
    torch.testing.assert_close(layer_theta(state, name), theta)
    with pytest.raises(ValueError, match="must be"):
        write_layer(state, name, theta[:5])


def test_unsupported_sage_aggregation_is_a_one_line_error():
    model = Stack(lambda i, o: SAGEConv(i, o, aggr="max"), relu=True)
    with pytest.raises(ValueError, match="aggr='max'") as exc:
        linear_units(model)
    assert "\n" not in str(exc.value)


def test_default_progressive_merge_names_what_to_use_on_pyg_groups():
    """The layer-by-layer (progressive) merge does not order PyG's linear groups yet: it says
    so and names the closed form that does, instead of failing obscurely."""
    models = sources(lambda i, o: SAGEConv(i, o), relu=True)
    data = [[graph(30, 80, s)] for s in range(2)]
    with pytest.raises(ValueError, match=r"grouped or foreign units \(c1\[lin_l.weight"
                                         r"\+lin_r.weight.*method='gffmerge'"):
        gffmerge.merge(models, data, ridge=1e-2, beta=0.0, tangents="off")
    merged = gffmerge.merge(models, data, method="gffmerge").model
    assert all(torch.isfinite(p).all() for p in merged.parameters())
