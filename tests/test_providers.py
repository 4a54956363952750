"""Structured statistics providers equal the dense hook (float64 sums, ≤ 1e-10 relative)."""

import copy
import gc

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gffmerge
from gffmerge.collect import (
    Aggregated,
    Dense,
    DenseHook,
    Gathered,
    GramInput,
    StructuredHook,
    StructuredInput,
    attach,
    cross_of,
    gram_of,
    measure,
    sums_of,
)
from gffmerge.collect.dedup import InputCache
from gffmerge.data import load_dataset
from gffmerge.models import EdgeConcatLinear, build_model
from gffmerge.models.layers import ConcatLinear, CosineCutoff, GaussianRBF, mlp
from gffmerge.stats import Stats
from gffmerge.testing import check_structured_gram, fine_tunes

RTOL = 1e-10
SYSTEMS = ["lips20/beta-Li3PS4", "rmd17/ethanol"]
TINY_GNS = dict(latent_dim=16, hidden_dim=24, n_layers=2, n_rbf=8)


def rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def reference(inp, y=None):
    """Float64 Gram (and cross sums) of the explicit float64 rows."""
    x = inp.materialize(torch.float64)
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
    return xa.T @ xa, None if y is None else xa.T @ y.double()


_BATCHES = {}


def batches(system, cutoff, dtype, frames=2, batch_size=1):
    key = (system, cutoff, dtype, frames, batch_size)
    if key not in _BATCHES:
        ds = load_dataset([system], max_frames=frames, seed=0)
        _BATCHES[key] = list(ds.batches(batch_size, cutoff, dtype=dtype))
    return _BATCHES[key]


def assert_same_stats(a: Stats, b: Stats, rtol=RTOL):
    assert a.layers == b.layers
    for ma, mb in zip(a.models, b.models, strict=True):
        for name, la in ma.layers.items():
            lb = mb.layers[name]
            assert la.rows == lb.rows, name
            assert rel(la.gram, lb.gram) <= rtol, (name, rel(la.gram, lb.gram))
            assert (la.cross is None) == (lb.cross is None)
            if la.cross is not None:
                assert rel(la.cross, lb.cross) <= rtol, (name, rel(la.cross, lb.cross))


def tiny_gns(dtype, seed=0, **config):
    torch.manual_seed(seed)
    return build_model("gns", **{**TINY_GNS, **config}).to(dtype).eval()


# ---------------------------------------------------------------- GNS on real batches
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("system", SYSTEMS)
def test_gns_structured_stats_equal_dense(system, dtype):
    model = tiny_gns(dtype)
    data = batches(system, model.cutoff, dtype)
    structured = measure(model, data, cross=True, progress=False)
    dense = measure(model, data, cross=True, progress=False, dense=True)
    assert_same_stats(structured, dense)
    # every GNS layer is covered, edge_in and node_mlp.0 by the structured provider
    names = list(structured.layers)
    assert {f"layers.{i}.{n}" for i in range(2) for n in ("edge_in", "node_mlp.0")} <= set(names)
    collector = attach(model, Stats.empty(model, structured.layers).models[0].layers)
    structured_hooks = [h for h in collector.hooks if isinstance(h, StructuredHook)]
    kinds = {type(h).__name__ for h in structured_hooks}
    assert kinds == {"StructuredHook"} and len(structured_hooks) == 4
    collector.remove()


def test_gns_isolated_atoms_and_more_frames_per_batch():
    # cutoff 1.0 Å on ethanol: only O-H is an edge, carbons and C-bound H are isolated
    model = tiny_gns(torch.float64, seed=1, cutoff=1.0)
    data = batches("rmd17/ethanol", model.cutoff, torch.float64, frames=3, batch_size=3)
    degree = torch.bincount(data[0].edge_index[1], minlength=data[0].num_atoms)
    assert (degree == 0).any() and (degree > 0).any()
    assert_same_stats(measure(model, data, cross=True, progress=False),
                      measure(model, data, cross=True, progress=False, dense=True))


@pytest.mark.parametrize("target", ["weights", "cross"])
def test_merged_gns_from_structured_and_dense_stats_agree(target):
    base = tiny_gns(torch.float64, seed=2)
    models = fine_tunes(base, 2, scale=0.02, seed=3)
    datas = [batches(s, base.cutoff, torch.float64) for s in SYSTEMS]
    cross = target == "cross"
    stats = {dense: Stats.concat(measure(m, d, cross=cross, progress=False, dense=dense)
                                 for m, d in zip(models, datas)) for dense in (False, True)}
    options = dict(target=target, ridge=1e-2, ridge_mode="relative", prior="mean",
                   condition=False)
    merged = {dense: gffmerge.solve(models, s, **options).model.state_dict()
              for dense, s in stats.items()}
    modules = dict(base.named_modules())
    for key, v in merged[True].items():
        layer = key.rsplit(".", 1)[0]
        structured = isinstance(modules.get(layer), StructuredInput)
        if not structured:
            assert torch.equal(merged[False][key], v), key
        else:
            # the Grams differ by float64 summation order (~1e-14); the solve amplifies
            # that by its condition number, ≤ 1 + dim / 1e-2 here
            assert rel(merged[False][key], v) <= 1e-11, (key, rel(merged[False][key], v))


# ---------------------------------------------------------------- gated edge layers
class GatedEdgeBlock(nn.Module):
    """An EdgeConcatLinear with sender/receiver gates (sigmoid(Linear(e)) × cutoff)."""

    def __init__(self, n_rbf=8, node_dim=6, hidden=10, cutoff=5.0, extra_nodes=3):
        super().__init__()
        self.rbf = GaussianRBF(n_rbf, cutoff)
        self.fc = CosineCutoff(cutoff)
        self.embed = nn.Embedding(20, node_dim)
        self.gate_s = nn.Linear(n_rbf, 1)
        self.gate_r = nn.Linear(n_rbf, 1)
        self.edge = EdgeConcatLinear(n_rbf, node_dim, hidden)
        self.out = nn.Linear(hidden, 2)
        self.extra_nodes = extra_nodes

    def inputs(self, batch):
        r = batch.edge_vectors().norm(dim=-1)
        e = self.rbf(r)
        fc = self.fc(r)
        h = self.embed(batch.z)
        # isolated nodes: rows of h that no edge gathers
        h = torch.cat([h, self.embed.weight[:self.extra_nodes]])
        g_s = torch.sigmoid(self.gate_s(e)) * fc.unsqueeze(-1)  # [E, 1]
        g_r = torch.sigmoid(self.gate_r(e)).squeeze(-1) * fc  # [E]
        return e, h, batch.edge_index, g_s, g_r

    def forward(self, batch):
        e, h, edge_index, g_s, g_r = self.inputs(batch)
        y = self.edge(e, h, edge_index, sender_gate=g_s, receiver_gate=g_r)
        return self.out(F.silu(y))


def _gated(dtype, cutoff):
    torch.manual_seed(4)
    return GatedEdgeBlock(cutoff=cutoff).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("system", SYSTEMS)
def test_gated_edge_layer(system, dtype):
    block = _gated(dtype, 5.0)
    data = batches(system, 5.0, dtype)
    kw = dict(cross=True, progress=False, forward=lambda m, b: m(b), batch_size_fn=lambda b: 1)
    structured = measure(block, data, **kw)
    dense = measure(block, data, dense=True, **kw)
    if dtype == torch.float64:
        assert_same_stats(structured, dense)
    else:
        # the dense hook sees g * h[i] rounded to float32; the structured sums are exact
        assert_same_stats(structured, dense, rtol=1e-6)
    # exact against the float64 rows, chunked and not
    for chunk_rows in (None, 37):
        with torch.no_grad():
            args = block.inputs(data[0])
        e, h, edge_index, g_s, g_r = args
        check = check_structured_gram(block.edge, e, h, edge_index, sender_gate=g_s,
                                      receiver_gate=g_r, chunk_rows=chunk_rows)
        assert check.gram_error <= RTOL and check.cross_error <= RTOL
        assert check.rows == edge_index.shape[1]


# ---------------------------------------------------------------- the block formulas
def _graph(seed, n=9, extra=4, e=57, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, n, (2, e), generator=gen)
    index[:, :6] = index[:, 6:12]  # duplicated edges
    return gen, index, n + extra


def _cases(dtype):
    gen, index, n = _graph(0, dtype=dtype)
    s, r = index
    e = s.shape[0]

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dt)

    h, h2 = rand(n, 5), rand(n, 3)
    ea, g1, g2 = rand(e, 4), rand(e).sigmoid(), rand(e, 1)
    m = 7
    agg_index = torch.randint(0, m, (e,), generator=gen)
    return {
        "dense_only": GramInput((Dense(ea), Dense(rand(e, 2)))),
        "edge_concat": GramInput((Dense(ea), Gathered(h, s), Gathered(h, r))),
        "gated": GramInput((Dense(ea), Gathered(h, s, g1), Gathered(h, r, g2))),
        "gathered_first": GramInput((Gathered(h, r, g1), Dense(ea), Gathered(h2, s))),
        "same_index_two_sources": GramInput((Gathered(h, s, g1), Gathered(h2, s, g2))),
        "same_index_copy": GramInput((Gathered(h, s.clone()), Gathered(h2, s))),
        "only_gathered": GramInput((Gathered(h, s.int()), Gathered(h, r, g2))),
        "aggregated": GramInput((Dense(rand(m, 3)), Aggregated(ea, agg_index, g1),
                                 Aggregated(rand(e, 2), agg_index)), rows=m),
        "only_aggregated": GramInput((Aggregated(ea, agg_index, g2),), rows=m),
        "mixed_dtypes": GramInput((Dense(ea.float()), Gathered(h.double(), s, g1.float()))),
        "no_rows": GramInput((Dense(ea[:0]), Gathered(h, s[:0]))),
        "leading_dims": GramInput((Dense(rand(3, 5, 4)),)),
    }


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_rows", [None, 5])
@pytest.mark.parametrize("case", list(_cases(torch.float64)))
@pytest.mark.filterwarnings("ignore:gffmerge_ext")
def test_block_formulas_equal_explicit_rows(case, chunk_rows, dtype, backend):
    inp = _cases(dtype)[case]
    inp.check()
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(inp.rows, 3, generator=gen, dtype=torch.float64).to(dtype)
    g_ref, c_ref = reference(inp, y)
    g = gram_of(inp, chunk_rows=chunk_rows, backend=backend)
    c = cross_of(inp, y, chunk_rows=chunk_rows, backend=backend)
    g2, c2 = sums_of(inp, y, chunk_rows=chunk_rows, backend=backend)
    assert torch.equal(g, g2) and torch.equal(c, c2)
    assert g.dtype == c.dtype == torch.float64
    assert g.shape == (inp.width + 1,) * 2 and c.shape == (inp.width + 1, 3)
    if inp.rows == 0:
        assert not g.any() and not c.any()
        return
    assert rel(g, g_ref) <= RTOL and rel(c, c_ref) <= RTOL
    assert rel(g, g.T) <= 1e-14
    assert g[-1, -1] == inp.rows


def test_check_rejects_inconsistent_parts():
    _, index, n = _graph(1)
    h, ea = torch.randn(n, 5), torch.randn(index.shape[1], 4)
    with pytest.raises(ValueError, match="in_features=12"):
        GramInput((Dense(ea), Gathered(h, index[0]))).check(12)
    with pytest.raises(ValueError, match="outside src"):
        GramInput((Dense(ea), Gathered(h[:3], index[0]))).check()
    with pytest.raises(ValueError, match="gate"):
        GramInput((Dense(ea), Gathered(h, index[0], torch.rand(5)))).check()
    with pytest.raises(ValueError, match="rows"):
        GramInput((Dense(ea[:-1]), Gathered(h, index[0]))).check()
    with pytest.raises(ValueError, match="needs rows"):
        GramInput((Aggregated(ea, index[0]),))
    with pytest.raises(ValueError, match="rows=|outside"):
        GramInput((Aggregated(ea, index[0]),), rows=2).check()


def test_check_structured_gram_catches_a_wrong_description():
    class Swapped(EdgeConcatLinear):  # describes [e, h_r, h_s]: order swapped
        def gram_parts(self, edge_attr, node_feats, edge_index):
            return GramInput((Dense(edge_attr), Gathered(node_feats, edge_index[1]),
                              Gathered(node_feats, edge_index[0])))

    gen, index, n = _graph(2)
    layer = Swapped(4, 5, 3, dtype=torch.float64)
    args = (torch.randn(index.shape[1], 4, dtype=torch.float64, generator=gen),
            torch.randn(n, 5, dtype=torch.float64, generator=gen), index)
    with pytest.raises(AssertionError, match="do not reproduce"):
        check_structured_gram(layer, *args)
    good = EdgeConcatLinear(4, 5, 3, dtype=torch.float64)
    assert check_structured_gram(good, *args).gram_error <= RTOL


# ---------------------------------------------------------------- ConcatLinear and GNS
@pytest.mark.parametrize("lead", [(11,), (2, 7)])
def test_concat_linear_equals_linear_on_concatenation(lead):
    torch.manual_seed(5)
    layer = ConcatLinear([3, 4, 2], 6, dtype=torch.float64)
    plain = nn.Linear(9, 6, dtype=torch.float64)
    plain.load_state_dict(layer.state_dict())
    parts = [torch.randn(*lead, w, dtype=torch.float64) for w in (3, 4, 2)]
    torch.testing.assert_close(layer(*parts), plain(torch.cat(parts, -1)), rtol=1e-12,
                               atol=1e-12)
    check = check_structured_gram(layer, *parts)
    assert check.gram_error <= RTOL and check.dense_input_error == 0
    with pytest.raises(ValueError, match="expects 3 parts"):
        layer(*parts[:2])
    with pytest.raises(ValueError, match="part 1"):
        layer(parts[0], parts[2], parts[1])


def test_gns_loads_checkpoints_of_the_plain_node_mlp():
    model = tiny_gns(torch.float32, seed=6)
    old = copy.deepcopy(model)
    for layer in old.layers:  # the pre-ConcatLinear node MLP: nn.Linear on the concatenation
        plain = mlp([3 * 16, 24, 16], nn.SiLU, layer_norm=True)
        plain.load_state_dict(layer.node_mlp.state_dict())
        layer.node_mlp = plain
        layer.forward = _old_forward.__get__(layer)
    assert list(old.state_dict()) == list(model.state_dict())
    fresh = tiny_gns(torch.float32, seed=99)
    fresh.load_state_dict(old.state_dict())
    batch = batches("lips20/beta-Li3PS4", model.cutoff, torch.float32)[0]
    with torch.no_grad():
        a, b = fresh(batch), old(batch)
    torch.testing.assert_close(a["energy"], b["energy"], rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(a["forces"], b["forces"], rtol=1e-5, atol=1e-5)


def _old_forward(self, h, e, fc, edge_index):
    sender, receiver = edge_index
    e = e + self.edge_norm(self.edge_out(self.edge_act(self.edge_in(e, h, edge_index))))
    a_recv = torch.sigmoid(self.receive_attn(e)) * fc.unsqueeze(-1)
    a_send = torch.sigmoid(self.send_attn(e)) * fc.unsqueeze(-1)
    received = torch.zeros_like(h).index_add_(0, receiver, a_recv * e)
    sent = torch.zeros_like(h).index_add_(0, sender, a_send * e)
    return h + self.node_mlp(torch.cat([h, received, sent], dim=-1)), e


# ---------------------------------------------------------------- dedup
def test_dedup_gives_the_same_stats_and_shares_gns_attention_inputs():
    model = tiny_gns(torch.float32, seed=7)
    data = batches("lips20/beta-Li3PS4", model.cutoff, torch.float32)
    on = measure(model, data, cross=True, progress=False, dedup=True)
    off = measure(model, data, cross=True, progress=False, dedup=False)
    for name, la in on.models[0].layers.items():
        lb = off.models[0].layers[name]
        assert torch.equal(la.gram, lb.gram) and torch.equal(la.cross, lb.cross), name
        assert la.rows == lb.rows
    sums = Stats.empty(model, on.layers).models[0].layers
    collector = attach(model, sums, dedup=True)
    with torch.no_grad():
        model.measure_forward(data[0])
    # per block: send_attn reuses receive_attn's Gram of e'; the force head reuses the last;
    # the second block's edge layer reuses the first block's Gram of e' for its edge part
    assert collector.cache.hits == 2 + 1 + 1
    collector.remove()


class SharedInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Linear(4, 3, dtype=torch.float64) for _ in "abcd")

    def forward(self, x):
        x = x * 1.0
        self.a(x)
        x.mul_(2.0)  # in place between two consumers: must not be shared
        self.b(x)
        self.c(x)  # shares b's Gram
        t = x * 3.0
        self.a(t)
        del t  # freed: a new tensor may reuse its memory, address and id
        u = x * 5.0
        self.d(u)
        sq = x[:4, :4]
        self.a(sq)
        self.b(sq.t())  # same address and shape, other strides: not shared
        return x


def test_dedup_is_exact_under_in_place_updates_and_reused_memory():
    x = torch.randn(13, 4, dtype=torch.float64)
    results = {}
    for dedup in (True, False):
        model = SharedInput()
        torch.manual_seed(0)
        for m in (model.a, model.b, model.c, model.d):
            m.reset_parameters()
        stats = measure(model, [x], progress=False, dedup=dedup, cross=True,
                        forward=lambda m, b: m(b), batch_size_fn=lambda b: 1)
        results[dedup] = stats.models[0].layers
    for name, la in results[True].items():
        lb = results[False][name]
        assert torch.equal(la.gram, lb.gram) and torch.equal(la.cross, lb.cross), name
    model = SharedInput()
    collector = attach(model, Stats.empty(model, gffmerge.linear_layers(model)).models[0].layers)
    with torch.no_grad():
        model(x)  # the first forward keeps no Gram: it learns which rows meet again
        assert collector.cache.hits == 0
        collector.end_forward()
        model(x)
    assert collector.cache.hits == 1  # only c after b
    collector.remove()


def test_inference_tensors_and_dead_tensors_are_never_shared():
    cache = InputCache()
    with torch.inference_mode():
        x = torch.randn(5, 3)
    assert cache.key(GramInput.dense(x)) is None
    y = torch.randn(5, 3)
    key = cache.key(GramInput.dense(y))
    cache.put(key, torch.zeros(4, 4))
    assert cache.get(cache.key(GramInput.dense(y))) is not None
    assert cache.get(cache.key(GramInput.dense(y.view(5, 3)))) is not None  # a view, same rows
    y.add_(1.0)
    assert cache.get(cache.key(GramInput.dense(y))) is None
    del y
    gc.collect()
    assert all(r() is None for r in next(iter(cache._entries.values()))[0])


def test_dense_flag_uses_dense_hooks_everywhere():
    model = tiny_gns(torch.float32)
    sums = Stats.empty(model, gffmerge.linear_layers(model)).models[0].layers
    collector = attach(model, sums, dense=True)
    assert all(type(h) is DenseHook for h in collector.hooks) and collector.cache is not None
    collector.remove()
    collector = attach(model, sums)
    assert sum(isinstance(h, StructuredHook) for h in collector.hooks) == 2 * 2
    collector.remove()
