"""The one-call paths of the structured provider (issue 15, round 4): an edge layer's Gram from
``gffmerge_ext.parts_gram_`` and a node layer of several dense parts from one ``gram_`` equal
the general block path and an independent float64 Gram of the explicit rows."""

import pytest
import torch

import gffmerge_ext
from gffmerge.collect import Dense, Gathered, GramInput, measure, providers, sums_of
from gffmerge.collect.providers import layer_sums
from gffmerge.models import build_model

RTOL = 1e-10


def rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def reference(inp):
    x = inp.materialize(torch.float64)
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
    return xa.T @ xa


def edge_input(gen, nodes, edges, dtype, gated, dense=True):
    h = torch.randn(nodes, 4, generator=gen, dtype=dtype)
    send = torch.randint(0, nodes, (edges,), generator=gen)
    recv = torch.sort(torch.randint(0, nodes, (edges,), generator=gen)).values
    gate = torch.rand(edges, 1, generator=gen, dtype=dtype) if gated else None
    parts = (Gathered(h, send, gate), Gathered(h, recv.int()))
    if dense:
        parts = (Dense(torch.randn(edges, 5, generator=gen, dtype=dtype)),) + parts
    return GramInput(parts)


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    real = gffmerge_ext.parts_gram_

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(gffmerge_ext, "parts_gram_", counted)
    return calls


@pytest.mark.needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("dense", [False, True])
def test_edge_gram_in_one_call_equals_the_block_path_and_the_reference(fused_calls, dtype,
                                                                         gated, dense):
    gen = torch.Generator().manual_seed(11)
    inp = edge_input(gen, 13, 200, dtype, gated, dense)
    fused, _ = sums_of(inp)
    assert len(fused_calls) == 1
    blocks, _ = sums_of(inp, chunk_rows=10**9)  # chunked: the general block path
    assert len(fused_calls) == 1
    assert rel(fused, blocks) <= 1e-12
    assert rel(fused, reference(inp)) <= RTOL
    assert torch.equal(fused, fused.T)


@pytest.mark.needs_ext
def test_a_known_dense_gram_is_put_in_place(fused_calls):
    gen = torch.Generator().manual_seed(12)
    inp = edge_input(gen, 9, 150, torch.float32, True)
    kw = dict(gram=True, backend="auto", chunk_rows=None, workspace=None)
    whole, _, part, added = layer_sums(inp, None, dense_gram=None, **kw)
    assert not added
    # the dense part's [D, 1] Gram is what a plain layer on e forms, bit for bit
    e_gram, _ = sums_of(GramInput((inp.parts[0],)))
    assert torch.equal(part, e_gram)
    again, _, same, _ = layer_sums(inp, None, dense_gram=e_gram, **kw)
    assert same is e_gram and torch.equal(again, whole)
    assert len(fused_calls) == 2


def test_devices_without_the_kernel_take_the_block_path(fused_calls, monkeypatch):
    gen = torch.Generator().manual_seed(13)
    inp = edge_input(gen, 9, 150, torch.float64, True)
    monkeypatch.setattr(gffmerge_ext, "parts_gram_devices", lambda: ())
    g, _ = sums_of(inp)
    assert not fused_calls
    assert rel(g, reference(inp)) <= RTOL


@pytest.mark.parametrize("dtypes", [(torch.float32,) * 3, (torch.float64, torch.float32,
                                                           torch.float64)])
def test_several_dense_parts_in_one_gram(dtypes):
    gen = torch.Generator().manual_seed(14)
    parts = tuple(Dense(torch.randn(40, w, generator=gen, dtype=t))
                  for w, t in zip((3, 5, 2), dtypes))
    inp = GramInput(parts)
    y = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    g, c = sums_of(inp, y)
    g_blocks, c_blocks = sums_of(inp, y, chunk_rows=10**9)
    assert rel(g, g_blocks) <= 1e-12 and rel(c, c_blocks) <= 1e-12
    x = inp.materialize(torch.float64)
    xa = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], 1)
    assert rel(g, xa.T @ xa) <= RTOL and rel(c, xa.T @ y) <= RTOL
    # the layer's Gram is no dense part another layer could share
    assert layer_sums(inp, None, gram=True, backend="auto", chunk_rows=None, workspace=None,
                      dense_gram=None)[2] is None


@pytest.mark.needs_ext
def test_gns_measure_through_the_fused_paths_equals_the_dense_float64_stats(fused_calls):
    from gffmerge.data import load_dataset

    torch.manual_seed(0)
    model = build_model("gns", latent_dim=16, hidden_dim=24, n_layers=2, n_rbf=8)
    model = model.double().eval()
    data = list(load_dataset(["rmd17/ethanol"], max_frames=6, seed=0).batches(
        3, model.cutoff, dtype=torch.float64))
    structured = measure(model, data, progress=False).models[0].layers
    assert len(fused_calls) == 2 * len(data)  # two edge layers per forward
    dense = measure(model, data, progress=False, dense=True).models[0].layers
    for name, layer in structured.items():
        assert layer.rows == dense[name].rows, name
        assert rel(layer.gram, dense[name].gram) <= RTOL, name
    assert providers.dense_parts_only(GramInput((Dense(torch.zeros(2, 1)),)))


def test_measure_runs_every_module_in_eval_mode_and_restores_the_modes():
    # no module training: nothing is switched; a training child: measured in eval mode
    # and the whole model left as train(was_training) leaves it (as before the skip)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.9),
                                torch.nn.Linear(4, 2))
    data = [torch.randn(5, 3) for _ in range(3)]
    kw = dict(progress=False, forward=lambda m, b: m(b), batch_size_fn=lambda b: 1)
    model.eval()
    calm = measure(model, data, **kw).models[0].layers
    assert not any(m.training for m in model.modules())
    model[1].train()
    again = measure(model, data, **kw).models[0].layers
    assert not any(m.training for m in model.modules())
    for name in calm:
        assert torch.equal(calm[name].gram, again[name].gram), name
    model.train()
    measure(model, data, **kw)
    assert all(m.training for m in model.modules())


def test_dense_key_is_the_key_of_the_dense_description():
    from gffmerge.collect.dedup import InputCache

    cache = InputCache()
    for x in (torch.randn(4, 3), torch.randn(2, 5, 3)[:, 1:], torch.randn(0, 2)):
        assert cache.dense_key(x)[0] == cache.key(GramInput.dense(x))[0]
    with torch.inference_mode():
        frozen = torch.randn(3, 2)
    assert cache.dense_key(frozen) is None and cache.key(GramInput.dense(frozen)) is None
