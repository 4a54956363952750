"""Hooks whose Grams no other call shares add them to the sums directly (issue 15, round 6).

After one forward, a hook whose rows no other call of that forward met (nor it another's)
stops keying, buffering and adding its Grams: the compiled one-call paths (``gram_``,
``parts_gram_``) add each call's sums to the layer's sums in place. No forward keeps the Gram
of rows that no later call reads (the first one learns which rows meet again); what it
learned is remembered per module. The sums must be those of the path that keys and keeps
every Gram, bit for bit, and those of an independent float64 Gram of the explicit rows to
1e-10.
"""

import pytest
import torch

from gffmerge.architecture import linear_layers
from gffmerge.collect import Dense, Gathered, GramInput, default_forward, hooks, measure
from gffmerge.collect.providers import layer_sums
from gffmerge.collect.recording import structured_input
from gffmerge.collect.runner import attach
from gffmerge.data import load_dataset
from gffmerge.models import build_model
from gffmerge.models.parts import input_reader
from gffmerge.stats import Stats

F64 = torch.float64
RTOL = 1e-10


def rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def reference(inp):
    x = inp.materialize(F64)
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], 1)
    return xa.T @ xa


def _inputs(gen, dtype):
    h = torch.randn(11, 4, generator=gen, dtype=dtype)
    send = torch.randint(0, 11, (120,), generator=gen)
    recv = torch.randint(0, 11, (120,), generator=gen)
    gate = torch.rand(120, 1, generator=gen, dtype=dtype)
    e = torch.randn(120, 5, generator=gen, dtype=dtype)
    return {
        "edge": GramInput((Dense(e), Gathered(h, send, gate), Gathered(h, recv))),
        "edge, no dense part": GramInput((Gathered(h, send), Gathered(h, recv, gate))),
        "dense parts": GramInput((Dense(e), Dense(e[:, :3] * 2), Dense(e[:, 1:2]))),
        "one dense part": GramInput((Dense(e),)),
    }


@pytest.mark.needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("kind", ["edge", "edge, no dense part", "dense parts",
                                  "one dense part"])
@pytest.mark.parametrize("known", [False, True])
def test_adding_into_the_sums_adds_what_a_fresh_gram_adds(kind, dtype, known):
    gen = torch.Generator().manual_seed(3)
    inp = _inputs(gen, dtype)[kind]
    n = inp.width + 1
    prior = torch.randn(n, n, generator=gen, dtype=F64)
    prior = prior + prior.T  # sums of earlier batches
    kw = dict(gram=True, backend="auto", chunk_rows=None, workspace=None)
    part = None
    if known and isinstance(inp.parts[0], Dense) and len(inp.parts) > 1 and isinstance(
            inp.parts[1], Gathered):
        part = layer_sums(GramInput((inp.parts[0],)), None, dense_gram=None, **kw)[0]
    fresh, _, fresh_part, added = layer_sums(inp, None, dense_gram=part, **kw)
    assert not added and fresh is not None
    into = prior.clone()
    gram, _, into_part, added = layer_sums(inp, None, dense_gram=part, into=into, **kw)
    assert added and gram is None
    assert torch.equal(into, prior + fresh)  # bit for bit: one addition per entry
    assert rel(into - prior, reference(inp)) <= RTOL
    assert into_part is (part if part is not None else None)


def test_paths_that_form_the_gram_in_parts_return_it_to_be_added():
    gen = torch.Generator().manual_seed(4)
    inp = _inputs(gen, F64)["edge"]
    into = torch.zeros(inp.width + 1, inp.width + 1, dtype=F64)
    gram, _, _, added = layer_sums(inp, None, gram=True, backend="auto", chunk_rows=7,
                                   workspace=None, dense_gram=None, into=into)
    assert not added and not into.any()  # the chunked block path: the caller adds
    assert rel(gram, reference(inp)) <= RTOL


def _gns(dtype):
    torch.manual_seed(0)
    return build_model("gns", latent_dim=16, hidden_dim=24, n_layers=2, n_rbf=8).to(
        dtype).eval()


def _data(model, dtype, frames=8, batch_size=2):
    ds = load_dataset(["rmd17/ethanol"], max_frames=frames, seed=0)
    return list(ds.batches(batch_size, model.cutoff, dtype=dtype))


def _explicit_grams(model, data):
    """Σ x̃x̃ᵀ of every layer's explicit float64 input rows (independent of the hooks)."""
    modules = dict(model.named_modules())
    grams = {}

    def hook(name):
        def f(module, args, kwargs, output):
            inp = structured_input(module, args, kwargs)
            x = (inp.materialize(F64) if inp is not None
                 else input_reader(module)(args, kwargs).detach().to(F64))
            x = x.reshape(-1, x.shape[-1])
            xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], 1)
            grams[name] = grams.get(name, 0) + xa.T @ xa
        return f

    hs = [modules[n].register_forward_hook(hook(n), with_kwargs=True)
          for n in linear_layers(model)]
    with torch.no_grad():
        for b in data:
            default_forward(model, b)
    for h in hs:
        h.remove()
    return grams


class _AlwaysShared:
    """In place of ``hooks._LEARNED``: every layer keys, forms and keeps each Gram apart
    (the path before round 6)."""

    def get(self, module):
        return True

    def __setitem__(self, module, value):
        pass


SHARED_GNS = {"layers.0.receive_attn", "layers.0.send_attn", "layers.1.receive_attn",
              "layers.1.send_attn", "force_head.0"}


@pytest.mark.needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_gns_hooks_learn_which_grams_are_shared_and_keep_the_sums(dtype, monkeypatch):
    model = _gns(dtype)
    data = _data(model, dtype)
    sums = Stats.empty(model, linear_layers(model)).models[0].layers
    collector = attach(model, sums)
    kept = []
    with torch.no_grad():
        for b in data:
            default_forward(model, b)
            kept.append(sum(e[1] is not None for e in collector.cache._entries.values()))
            collector.end_forward()
    solo = {n: h._solo for n, h in zip(sums, collector.hooks)}
    collector.remove()
    # shared: the attention layers on e' (and the force head on the last one), and the
    # attention input that the next block's edge layer takes as its edge part
    assert {n for n, s in solo.items() if not s} == SHARED_GNS
    # every forward keeps the shared Grams only, one per e' (of 20 Grams formed): in the
    # first the second reader of e' keeps it for the third, later the first reader
    assert kept == [2] * len(data), kept
    learned = measure(model, data, progress=False).models[0].layers
    # a later measurement starts from what this one learned
    again = attach(model, Stats.empty(model, linear_layers(model)).models[0].layers)
    assert {n for n, h in zip(sums, again.hooks) if not h._solo} == SHARED_GNS
    again.remove()
    monkeypatch.setattr(hooks, "_LEARNED", _AlwaysShared())
    keyed = measure(model, data, progress=False).models[0].layers
    explicit = _explicit_grams(model, data)
    for name in sums:
        assert torch.equal(sums[name].gram, learned[name].gram), name
        assert torch.equal(learned[name].gram, keyed[name].gram), name
        assert learned[name].rows == keyed[name].rows, name
        assert rel(learned[name].gram, explicit[name]) <= (RTOL if dtype == F64 else 1e-6), name


@pytest.mark.needs_ext
def test_a_gram_found_only_in_later_forwards_is_formed_again_with_the_same_sums():
    """A hook that went direct does not key its Grams any more: a layer that meets its rows
    only in a later forward forms their Gram itself, with the same sums."""

    class Late(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 3, dtype=F64)
            self.b = torch.nn.Linear(4, 2, dtype=F64)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            self.a(x)
            self.b(x if self.calls > 1 else x * 2.0)  # b shares a's rows from call 2 on
            return x

    torch.manual_seed(0)
    xs = [torch.randn(9, 4, dtype=F64) for _ in range(3)]
    kw = dict(progress=False, forward=lambda m, b: m(b), batch_size_fn=lambda b: 1)
    on = measure(Late(), xs, dedup=True, **kw).models[0].layers
    torch.manual_seed(0)
    off = measure(Late(), xs, dedup=False, **kw).models[0].layers
    for name in on:
        assert torch.equal(on[name].gram, off[name].gram), name
    xa = [torch.cat([x, torch.ones(9, 1, dtype=F64)], 1) for x in xs]
    xa2 = torch.cat([xs[0] * 2.0, torch.ones(9, 1, dtype=F64)], 1)
    assert rel(on["a"].gram, sum(x.T @ x for x in xa)) <= RTOL
    assert rel(on["b"].gram, xa2.T @ xa2 + sum(x.T @ x for x in xa[1:])) <= RTOL
