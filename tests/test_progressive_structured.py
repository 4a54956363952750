"""Structured stage sums of the progressive merge: layers that describe their input as parts
(the GNS edge layer) give the same Gram and cross sums as their dense rows, without them."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

import gffmerge.methods.progressive as progressive_method
from gffmerge.collect import progressive as collect_progressive
from gffmerge.collect.order import mergeable_layers
from gffmerge.collect.progressive import prepare_sources, run_recording, stage_sums
from gffmerge.methods.progressive import ProgressiveOptions, progressive_merge
from gffmerge.models.layers import EdgeConcatLinear
from gffmerge.models.parts import GramInput
from gffmerge.solver import build_model, mean_state_dict
from gffmerge.testing import fine_tunes

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-10


class GatedEdges(nn.Module):
    """Node encoder, a gated edge layer on ``[e, g_s·h[src], g_r·h[dst]]`` whose gates come
    from another layer, a node update on the scattered messages and a head."""

    def __init__(self, gated: bool = True):
        super().__init__()
        self.gated = gated
        self.node = nn.Linear(3, 4)
        self.gate = nn.Linear(2, 2)
        self.edge = EdgeConcatLinear(2, 4, 5)
        self.update = nn.Linear(5, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x, e, edge_index):
        h = torch.tanh(self.node(x))
        gates = torch.sigmoid(self.gate(e)).unbind(-1)  # (called either way: one layer set)
        if not self.gated:
            gates = (None, None)
        m = torch.tanh(self.edge(e, h, edge_index, gates[0], gates[1]))
        agg = torch.zeros(h.shape[0], m.shape[1], dtype=m.dtype).index_add_(0, edge_index[1], m)
        return self.head(torch.tanh(self.update(agg))).sum()


def _graphs(n_batches: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        n, e = 7, 30
        # node 6 is isolated (no edge indexes it); repeated edges are allowed
        idx = torch.randint(0, 6, (2, e), generator=gen)
        out.append({"x": torch.randn(n, 3, generator=gen, dtype=torch.float64),
                    "e": torch.randn(e, 2, generator=gen, dtype=torch.float64),
                    "edge_index": idx})
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _compare(models, batches, *, min_layers: int = 1) -> None:
    """Stage sums of every layer, inputs from the average of ``models``: structured equals
    dense to ``TOL`` relative, and the structured path was taken for ``min_layers``."""
    infos = mergeable_layers(models[0])
    names = list(infos)
    sources = prepare_sources(models, batches, frames=None, names=names, tangents=False)
    merged = build_model(models[0], mean_state_dict(models)).eval()
    recorded = run_recording(merged, sources[0].batches[0], names, "input", structured=True)
    parts = [n for n in names if isinstance(recorded[n][0][0], GramInput)]
    assert len(parts) >= min_layers, parts
    dense = stage_sums(merged, sources, names, infos, structured=False)
    fast = stage_sums(merged, sources, names, infos, structured=True)
    for d, f in zip(dense, fast):
        for n in names:
            assert f[n].rows == d[n].rows, n
            assert _rel(f[n].gram, d[n].gram) <= TOL, (n, _rel(f[n].gram, d[n].gram))
            assert _rel(f[n].cross, d[n].cross) <= TOL, (n, _rel(f[n].cross, d[n].cross))
            assert f[n].ysq == pytest.approx(d[n].ysq, rel=TOL)
            assert d[n].cross.abs().max() > 0
    # one-shot (inputs from each source) and Grams only (no targets) take the same path
    for merged_model, targets in ((None, True), (merged, False)):
        dense = stage_sums(merged_model, sources, parts, infos, structured=False,
                           targets=targets)
        fast = stage_sums(merged_model, sources, parts, infos, structured=True,
                          targets=targets)
        for d, f in zip(dense, fast):
            for n in parts:
                assert _rel(f[n].gram, d[n].gram) <= TOL, n
                assert torch.equal(f[n].cross == 0, d[n].cross == 0)


@pytest.mark.parametrize("gated", [True, False])
def test_structured_sums_equal_dense_on_gated_edges(gated):
    torch.manual_seed(0)
    base = GatedEdges(gated).double()
    models = fine_tunes(base, 2, scale=0.2, seed=1)
    _compare(models, [_graphs(2, 3), _graphs(2, 4)])


def test_structured_sums_stop_early_with_calls():
    """A stage pass that stops after the edge layer still gives the structured sums."""
    torch.manual_seed(0)
    models = fine_tunes(GatedEdges().double(), 2, scale=0.2, seed=2)
    infos = mergeable_layers(models[0])
    batches = [_graphs(2, 5), _graphs(2, 6)]
    sources = prepare_sources(models, batches, frames=None, names=list(infos), tangents=False)
    merged = build_model(models[0], mean_state_dict(models)).eval()
    calls = {n: 1 for n in infos}
    dense = stage_sums(merged, sources, ["edge"], infos, calls=calls, structured=False)
    fast = stage_sums(merged, sources, ["edge"], infos, calls=calls, structured=True)
    for d, f in zip(dense, fast):
        assert _rel(f["edge"].gram, d["edge"].gram) <= TOL
        assert _rel(f["edge"].cross, d["edge"].cross) <= TOL


def _shipped(dataset: str, systems: list[str], frames: int, batch: int):
    from gffmerge.checkpoint import load_checkpoint
    from gffmerge.data import load_dataset

    ck = ROOT / "checkpoints" / dataset
    models = [load_checkpoint(ck / f"gns_{s.split('/')[1]}.pt")[0].double() for s in systems]
    train = load_dataset(systems).split("train")
    batches = [list(train.for_system(s).subset(frames, seed=0).batches_for(m, batch))
               for s, m in zip(systems, models)]
    return models, batches


SHIPPED = [("rmd17", ["rmd17/ethanol", "rmd17/malonaldehyde"], 4, 2),
           ("lips20", ["lips20/Li3P", "lips20/P2S5"], 2, 1)]


@pytest.mark.parametrize("dataset,systems,frames,batch", SHIPPED, ids=["rmd17", "lips20"])
def test_structured_sums_equal_dense_on_shipped_gns(dataset, systems, frames, batch):
    models, batches = _shipped(dataset, systems, frames, batch)
    # the edge layers of all interaction blocks
    _compare(models, batches, min_layers=models[0].config["n_layers"])


@pytest.mark.parametrize("dataset,systems,frames,batch", SHIPPED, ids=["rmd17", "lips20"])
def test_progressive_merge_structured_equals_dense(dataset, systems, frames, batch,
                                                   monkeypatch):
    models, batches = _shipped(dataset, systems, frames, batch)
    opts = ProgressiveOptions(ridge=1e-2, beta=0.0, frames=frames)
    fast = progressive_merge(models, batches, opts, progress=False)
    monkeypatch.setattr(progressive_method, "stage_sums",
                        functools.partial(collect_progressive.stage_sums, structured=False))
    dense = progressive_merge(models, batches, opts, progress=False)
    a, b = fast.model.state_dict(), dense.model.state_dict()
    for k in b:
        if b[k].is_floating_point():
            scale = b[k].abs().max().clamp_min(1e-12)
            assert float((a[k] - b[k]).abs().max() / scale) <= 1e-8, k


def test_structured_sums_with_tangent_rows_on_shipped_gns():
    """With tangent rows on (positions dual along random directions), value sums of the
    edge layers come from their primal parts, tangent sums from their tangent parts (no
    [E, in] tangent tensor), both equal to the dense ones."""
    models, batches = _shipped("rmd17", ["rmd17/ethanol", "rmd17/malonaldehyde"], 2, 2)
    infos = mergeable_layers(models[0])
    names = list(infos)
    sources = prepare_sources(models, batches, frames=None, names=names, tangents=True,
                              draws=2)
    merged = build_model(models[0], mean_state_dict(models)).eval()
    rec = run_recording(merged, sources[0].batches[0], names, "input",
                        u=sources[0].dirs[0][0], structured=True)
    edge = [n for n in names if n.endswith("edge_in")]
    assert edge and all(isinstance(rec[n][0][0], GramInput) for n in edge)
    for n in edge:  # tangent rows as parts too: [ė, ḣ[sender], ḣ[receiver]]
        tangent = rec[n][0][1]
        assert isinstance(tangent, GramInput) and tangent.width == infos[n].in_features
        assert tangent.rows == rec[n][0][0].rows
        dense_rows = tangent.materialize(torch.float64)
        assert dense_rows.abs().max() > 0
    dense = stage_sums(merged, sources, names, infos, tangents=True, structured=False)
    fast = stage_sums(merged, sources, names, infos, tangents=True, structured=True)
    for d, f in zip(dense, fast):
        for n in names:
            assert f[n].rows == d[n].rows and f[n].trows == d[n].trows, n
            for a, b in ((f[n].gram, d[n].gram), (f[n].cross, d[n].cross),
                         (f[n].tgram, d[n].tgram), (f[n].tcross, d[n].tcross)):
                assert _rel(a, b) <= TOL, (n, _rel(a, b))
        assert any(d[n].tgram.abs().max() > 0 for n in names)


def test_structured_tangent_rows_equal_the_tangent_of_the_dense_input():
    """``[ė, g·ḣ[s], g·ḣ[r]]`` is the tangent of the edge layer's input when no gate depends
    on the positions; a gate with a tangent falls back to the dense tangent (None here)."""
    import torch.autograd.forward_ad as fwad

    from gffmerge.collect.recording import structured_tangent

    gen = torch.Generator().manual_seed(8)
    lin = EdgeConcatLinear(3, 2, 4, dtype=torch.float64)
    f64 = dict(generator=gen, dtype=torch.float64)
    e, de, h, dh = (torch.randn(*s, **f64) for s in ((7, 3), (7, 3), (5, 2), (5, 2)))
    ei = torch.randint(0, 5, (2, 7), generator=gen)
    g, dg = torch.rand(7, **f64), torch.randn(7, **f64)
    with fwad.dual_level():
        e_d, h_d = fwad.make_dual(e, de), fwad.make_dual(h, dh)
        for kwargs in ({}, {"receiver_gate": g}):
            t = structured_tangent(lin, (e_d, h_d, ei), kwargs)
            ref = fwad.unpack_dual(lin.dense_input(e_d, h_d, ei, **kwargs)).tangent
            assert isinstance(t, GramInput) and t.width == lin.in_features
            assert torch.allclose(t.materialize(torch.float64), ref, rtol=0, atol=1e-14)
        moving = fwad.make_dual(g, dg)
        assert structured_tangent(lin, (e_d, h_d, ei), {"sender_gate": moving}) is None
