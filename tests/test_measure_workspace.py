"""Reused scratch buffers, per-forward index facts, the one-dense-part path and the shared
edge-part Gram leave the statistics as they were (issue 15)."""

import torch
from torch import nn

from gffmerge.collect import Dense, Gathered, GramInput, measure, sums_of
from gffmerge.collect.workspace import Workspace
from gffmerge.models import EdgeConcatLinear

RTOL = 1e-10


def rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def reference(inp, y):
    x = inp.materialize(torch.float64)
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
    return xa.T @ xa, xa.T @ y.double()


def edge_input(gen, nodes, edges, dtype, gated):
    e = torch.randn(edges, 5, generator=gen, dtype=dtype)
    h = torch.randn(nodes, 4, generator=gen, dtype=dtype)
    send = torch.randint(0, nodes, (edges,), generator=gen)
    recv = torch.sort(torch.randint(0, nodes, (edges,), generator=gen)).values
    gate = torch.rand(edges, generator=gen, dtype=dtype) if gated else None
    return GramInput((Dense(e), Gathered(h, send), Gathered(h, recv, gate)))


def test_workspace_buffers_are_reused_and_grow():
    ws = Workspace()
    a = ws.buffer("rows", 3, 4, torch.device("cpu"))
    b = ws.buffer("rows", 2, 5, torch.device("cpu"))
    assert a.data_ptr() == b.data_ptr() and b.shape == (2, 5) and b.is_contiguous()
    big = ws.zeros("rows", 40, 4, torch.device("cpu"))
    assert big.shape == (40, 4) and not big.any()
    other = ws.buffer("scatter0", 3, 4, torch.device("cpu"))
    assert other.data_ptr() != big.data_ptr()


def test_index_facts_are_recomputed_after_an_in_place_change_and_each_forward():
    ws = Workspace()
    index = torch.tensor([0, 1, 2])
    calls = []

    def fact():
        calls.append(1)
        return bool((index[1:] >= index[:-1]).all())

    assert ws.fact("sorted", index, fact) is True
    assert ws.fact("sorted", index, fact) is True and len(calls) == 1
    index[0] = 5  # in place: the version counter moves
    assert ws.fact("sorted", index, fact) is False and len(calls) == 2
    ws.end_forward()
    ws.fact("sorted", index, fact)
    assert len(calls) == 3
    with torch.inference_mode():  # no version counter: never remembered
        frozen = torch.tensor([1, 0])
    ws.fact("sorted", frozen, lambda: calls.append(1))
    ws.fact("sorted", frozen, lambda: calls.append(1))
    assert len(calls) == 5


def test_structured_sums_with_a_shared_workspace_equal_fresh_buffers_and_the_reference():
    gen = torch.Generator().manual_seed(3)
    ws = Workspace()
    # sizes up and down: the buffers grow and are then used in part
    for nodes, edges, dtype, gated, chunk in [(7, 30, torch.float32, False, None),
                                              (11, 90, torch.float64, True, None),
                                              (5, 12, torch.float32, True, 7),
                                              (13, 120, torch.float64, False, 50)]:
        inp = edge_input(gen, nodes, edges, dtype, gated)
        y = torch.randn(edges, 3, generator=gen, dtype=dtype)
        g_ws, c_ws = sums_of(inp, y, chunk_rows=chunk, workspace=ws)
        g, c = sums_of(inp, y, chunk_rows=chunk)
        assert torch.equal(g_ws, g) and torch.equal(c_ws, c)
        g_ref, c_ref = reference(inp, y)
        assert rel(g_ws, g_ref) <= RTOL and rel(c_ws, c_ref) <= RTOL
        ws.end_forward()


def test_one_dense_part_takes_the_same_products_as_the_general_path():
    gen = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3, 17, 6, generator=gen, dtype=dtype)  # rows: all leading dims
        y = torch.randn(51, 2, generator=gen, dtype=dtype)
        inp = GramInput.dense(x)
        g, c = sums_of(inp, y)
        g_plan, c_plan = sums_of(inp, y, chunk_rows=51)  # one chunk through the plan
        assert torch.equal(g, g_plan) and torch.equal(c, c_plan)
        g_ref, c_ref = reference(inp, y)
        assert rel(g, g_ref) <= RTOL and rel(c, c_ref) <= RTOL


class TwoEdgeLayers(nn.Module):
    """``b``'s edge part is ``a``'s dense input (its Gram is shared); the edge index is
    permuted in place between two edge layers (its facts must not be reused)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5, dtype=torch.float64)
        self.a = EdgeConcatLinear(5, 4, 3, dtype=torch.float64)
        self.b = EdgeConcatLinear(5, 4, 3, dtype=torch.float64)

    def forward(self, batch):
        e, h, edge_index = batch
        e = torch.tanh(e)
        self.lin(e)
        self.a(e, h, edge_index)
        edge_index[0] = edge_index[0].flip(0)  # in place, between two users
        return self.b(e, h, edge_index)


def test_shared_edge_part_and_in_place_index_change_keep_the_dense_stats():
    gen = torch.Generator().manual_seed(5)
    data = []
    for nodes, edges in [(6, 20), (9, 41)]:
        data.append((torch.randn(edges, 5, generator=gen, dtype=torch.float64),
                     torch.randn(nodes, 4, generator=gen, dtype=torch.float64),
                     torch.stack([torch.randint(0, nodes, (edges,), generator=gen),
                                  torch.arange(edges) % nodes])))
    model = TwoEdgeLayers()

    def run(**kw):
        return measure(model, [tuple(t.clone() for t in b) for b in data], progress=False,
                       forward=lambda m, b: m(b), batch_size_fn=lambda b: 1, cross=True,
                       **kw).models[0].layers

    structured, plain, dense = run(), run(dedup=False), run(dense=True)
    for name, layer in structured.items():
        assert torch.equal(layer.gram, plain[name].gram), name
        assert torch.equal(layer.cross, plain[name].cross), name
        assert rel(layer.gram, dense[name].gram) <= RTOL, name
        assert rel(layer.cross, dense[name].cross) <= RTOL, name


def test_workspace_row_chunks_keep_the_sums(monkeypatch):
    """With a workspace the row chunks are smaller (they outlive the call); several chunks
    per scatter and pair product give the sums of one chunk."""
    import gffmerge.collect.plan as plan

    monkeypatch.setattr(plan, "WORKSPACE_CHUNK_BYTES", 8 * 6 * 17)  # 17 rows of 6 columns
    gen = torch.Generator().manual_seed(6)
    inp = edge_input(gen, 9, 100, torch.float32, True)
    y = torch.randn(100, 2, generator=gen)
    g_ws, c_ws = sums_of(inp, y, workspace=Workspace())
    g, c = sums_of(inp, y)
    g_ref, c_ref = reference(inp, y)
    assert rel(g_ws, g) <= RTOL and rel(c_ws, c) <= RTOL
    assert rel(g_ws, g_ref) <= RTOL and rel(c_ws, c_ref) <= RTOL
