"""Structured hooks keep what a checked input signature showed (issue 15, round 8).

A structured layer's input is checked in full (shapes, dtypes, layouts, index ranges) and
routed to a provider path the first time a hook meets its signature (part types, row
count, every tensor's shape, dtype, layout and device); a later call of the same signature
tests its index ranges only and takes the kept route. A known ``[D, 1]`` Gram goes into the
fused path's Gram by one flat ``index_add_``/``index_copy_``. The sums must equal those of
the full path bit for bit and an independent float64 Gram of the explicit rows to 1e-10;
errors must be those of a full check.
"""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gffmerge.architecture import linear_layers
from gffmerge.collect import Dense, Gathered, GramInput, hooks, measure, providers
from gffmerge.collect.providers import layer_sums, route_of
from gffmerge.models.layers import EdgeConcatLinear
from gffmerge.models.parts import Aggregated
from gffmerge.stats import Stats

F64 = torch.float64
RTOL = 1e-10


def rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def reference(inp):
    x = inp.materialize(F64)
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], 1)
    return xa.T @ xa


def _edge(gen, n_nodes, n_edges, d_e, d_h, dtype, gate=True):
    h = torch.randn(n_nodes, d_h, generator=gen, dtype=dtype)
    send = torch.randint(0, n_nodes, (n_edges,), generator=gen)
    recv = torch.sort(torch.randint(0, n_nodes, (n_edges,), generator=gen)).values
    g = torch.rand(n_edges, 1, generator=gen, dtype=dtype) if gate else None
    e = torch.randn(n_edges, d_e, generator=gen, dtype=dtype)
    return GramInput((Dense(e), Gathered(h, send, g), Gathered(h, recv)))


def _dense_block_of(inp):
    e = inp.parts[0].x.to(F64)
    ea = torch.cat([e, torch.ones(e.shape[0], 1, dtype=F64)], 1)
    return ea.T @ ea


def _old_known_block(inp, dense_gram, into):
    """The known-block placement before this round (a broadcast advanced index), for the
    bit-for-bit comparison."""
    n = inp.width + 1
    d = inp.parts[0].width
    cols = torch.cat([torch.arange(d), torch.tensor([n - 1])])
    g = torch.zeros(n, n, dtype=F64) if into is None else into
    if into is None:
        g[cols.unsqueeze(1), cols] = dense_gram
    else:
        g[cols.unsqueeze(1), cols] += dense_gram
    gathered = inp.parts[1:]
    import gffmerge_ext
    gffmerge_ext.parts_gram_(g, inp.parts[0].x, [p.src for p in gathered],
                             [p.index for p in gathered],
                             [None if p.gate is None else p.gate.reshape(-1) for p in gathered],
                             False)
    return g


@pytest.mark.needs_ext
@settings(max_examples=25, deadline=None)
@given(n_nodes=st.integers(1, 9), n_edges=st.integers(0, 40), d_e=st.integers(1, 6),
       d_h=st.integers(1, 5), gate=st.booleans(), into=st.booleans(),
       dtype=st.sampled_from([torch.float32, F64]), seed=st.integers(0, 2**16))
@example(n_nodes=1, n_edges=0, d_e=1, d_h=1, gate=False, into=False, dtype=F64, seed=0)
@example(n_nodes=3, n_edges=1, d_e=2, d_h=3, gate=True, into=True, dtype=torch.float32, seed=1)
@example(n_nodes=9, n_edges=40, d_e=6, d_h=5, gate=True, into=True, dtype=F64, seed=2)
def test_a_known_dense_block_goes_in_place_exactly(n_nodes, n_edges, d_e, d_h, gate, into,
                                                   dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    inp = _edge(gen, n_nodes, n_edges, d_e, d_h, dtype, gate)
    block = _dense_block_of(inp)
    n = inp.width + 1
    start = torch.randn(n, n, generator=gen, dtype=F64)
    start = start + start.T
    acc = start.clone() if into else None
    g, c, part, added = layer_sums(inp, None, gram=True, backend="auto", chunk_rows=None,
                                   workspace=None, dense_gram=block, into=acc)
    assert c is None and part is block
    got = acc if into else g
    assert added == into
    old = _old_known_block(inp, block, start.clone() if into else None)
    assert torch.equal(got, old)
    want = reference(inp) + (start if into else 0)
    assert rel(got, want) <= RTOL
    # unknown block: formed by the op, returned as the [D, 1] Gram
    g2, _, part2, _ = layer_sums(inp, None, gram=True, backend="auto", chunk_rows=None,
                                 workspace=None, dense_gram=None)
    assert rel(g2, reference(inp)) <= RTOL
    assert part2.shape == (d_e + 1, d_e + 1)
    assert rel(part2, block) <= RTOL


def test_signature_records_what_check_reads():
    gen = torch.Generator().manual_seed(0)
    a = _edge(gen, 5, 12, 3, 2, torch.float32)
    b = _edge(gen, 5, 12, 3, 2, torch.float32)  # other values, same geometry
    assert a.signature() == b.signature()
    assert hash(a.signature()) == hash(b.signature())
    e, s, r = a.parts
    changed = [
        GramInput((Dense(e.x.double()), s, r)),                       # dtype
        GramInput((Dense(e.x[:, :2]), s, r)),                          # width
        GramInput((e, Gathered(s.src, s.index), r)),                   # gate dropped
        GramInput((e, Gathered(s.src, s.index.int(), s.gate), r)),     # index dtype
        GramInput((e, Gathered(s.src[:4], s.index, s.gate), r)),       # node count
        GramInput((e, r, s)),                                          # part order (gates)
        GramInput((e, Aggregated(s.src, s.index[:5]), r), rows=12),    # part type
    ]
    for other in changed:
        assert other.signature() != a.signature()

    class Odd:  # not a part: never equal, so check() reports it
        width = 1
    odd = GramInput((e, Odd()), rows=12)
    assert odd.signature() != odd.signature()


@pytest.mark.parametrize("lo_hi", [(-1, 0), (0, 5), (2, 7)])
def test_a_range_check_raises_what_a_full_check_raises(lo_hi):
    gen = torch.Generator().manual_seed(1)
    good = _edge(gen, 5, 12, 3, 2, torch.float32)
    e, s, r = good.parts
    bad_index = r.index.clone()
    bad_index[0], bad_index[-1] = lo_hi
    bad = GramInput((e, s, Gathered(r.src, bad_index)))
    agg = GramInput((Dense(torch.randn(5, 2)), Aggregated(torch.randn(12, 2), bad_index)))
    for inp in (bad, agg):
        good.check(7)
        with pytest.raises(ValueError) as full:
            inp.check()
        with pytest.raises(ValueError) as ranges:
            inp.check(structure=False)
        assert str(full.value) == str(ranges.value)
        assert "index values lie in" in str(full.value)
    good.check(7, structure=False)  # in range: no error


class _EdgeNet(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        torch.manual_seed(0)
        self.edge = EdgeConcatLinear(3, 4, 5).to(dtype)
        self.out = torch.nn.Linear(5, 2).to(dtype)

    def forward(self, e, h, edge_index):  # measure calls model(*batch) for a tuple
        return self.out(torch.tanh(self.edge(e, h, edge_index)))


def _batch(gen, n_nodes, n_edges, dtype):
    h = torch.randn(n_nodes, 4, generator=gen, dtype=dtype)
    edge_index = torch.randint(0, n_nodes, (2, n_edges), generator=gen)
    return torch.randn(n_edges, 3, generator=gen, dtype=dtype), h, edge_index


@pytest.mark.needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_kept_routes_give_the_sums_of_a_full_check_on_every_call(dtype, monkeypatch):
    gen = torch.Generator().manual_seed(4)
    # repeated and new signatures, a tiny and an edgeless batch among them
    sizes = [(6, 20), (6, 20), (3, 1), (6, 20), (7, 0), (9, 35), (3, 1)]
    data = [_batch(gen, n, e, dtype) for n, e in sizes]
    model = _EdgeNet(dtype).eval()
    routed = []
    orig = providers._sums

    def spy(inp, *args, **kwargs):
        if inp.width == model.edge.in_features:
            routed.append(kwargs.get("route"))
        return orig(inp, *args, **kwargs)

    monkeypatch.setattr(providers, "_sums", spy)
    kept = measure(model, data, progress=False).models[0].layers
    assert routed == ["fused"] * len(data)  # the edgeless batch too
    monkeypatch.setattr(hooks.StructuredHook, "_routes_kept", lambda self: None)
    routed.clear()
    fresh = measure(model, data, progress=False).models[0].layers
    assert routed == [None] * len(data)
    for name in kept:
        assert torch.equal(kept[name].gram, fresh[name].gram), name
        assert kept[name].rows == fresh[name].rows
    x = torch.cat([model.edge.dense_input(*b) for b in data]).to(F64)
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], 1)
    assert rel(kept["edge"].gram, xa.T @ xa) <= RTOL


@pytest.mark.needs_ext
def test_a_bad_index_after_checked_calls_raises_the_full_checks_error():
    gen = torch.Generator().manual_seed(5)
    model = _EdgeNet(torch.float32).eval()
    e, h, edge_index = _batch(gen, 6, 20, torch.float32)
    bad = edge_index.clone()
    bad[1, 3] = 6
    sums = Stats.empty(model, linear_layers(model)).models[0].layers
    hook = hooks.StructuredHook(model.edge, sums["edge"])
    try:
        with torch.no_grad():
            model(e, h, edge_index)
            assert len(hook._routes) == 1
            # the forward itself would stop at the bad index: the hook is called directly
            with pytest.raises(ValueError) as kept:
                hook._hook(model.edge, (e, h, bad), {}, None)
    finally:
        hook.remove()
    with pytest.raises(ValueError) as full:
        model.edge.gram_parts(e, h, bad).check(model.edge.in_features)
    assert str(kept.value) == str(full.value)


def test_route_of_names_the_provider_path():
    gen = torch.Generator().manual_seed(6)
    inp = _edge(gen, 5, 12, 3, 2, torch.float32)
    import gffmerge_ext
    fused = "fused" if "cpu" in gffmerge_ext.parts_gram_devices() else "blocks"
    assert route_of(inp, "auto", None) == fused
    assert route_of(inp, "torch", None) == "blocks"
    assert route_of(inp, "auto", 7) == "blocks"
    dense = GramInput((Dense(torch.randn(4, 3)), Dense(torch.randn(4, 2))))
    assert route_of(dense, "torch", None) == "blocks"
    sparse = GramInput((Dense(torch.eye(4).to_sparse()),))
    assert route_of(sparse, "auto", None) == "sparse"


@pytest.mark.needs_ext
def test_a_hook_keeps_a_bounded_number_of_signatures(monkeypatch):
    monkeypatch.setattr(hooks, "_ROUTES_KEPT", 3)
    gen = torch.Generator().manual_seed(7)
    model = _EdgeNet(F64).eval()
    sums = Stats.empty(model, linear_layers(model)).models[0].layers
    hook = hooks.StructuredHook(model.edge, sums["edge"])
    data = [_batch(gen, 4, e, F64) for e in (5, 6, 7, 8, 5)]
    try:
        with torch.no_grad():
            for k, b in enumerate(data):
                model(*b)
                assert len(hook._routes) == (k % 3) + 1
    finally:
        hook.remove()
    x = torch.cat([model.edge.dense_input(*b) for b in data])
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], 1)
    assert rel(sums["edge"].gram, xa.T @ xa) <= RTOL
