"""One-shot stage sums take one pass per batch and direction: the inputs and the targets
come from the same recording of the source, and the sums equal the two-pass ones (inputs
from the model, targets from the source's cached pass) exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gffmerge.collect.order import mergeable_layers
from gffmerge.collect.progressive import prepare_sources, stage_sums
from gffmerge.collect.recording import run_recording

ROOT = Path(__file__).resolve().parents[1]


def _shipped_gns(frames: int = 4, batch: int = 2):
    from gffmerge.checkpoint import load_checkpoint
    from gffmerge.data import load_dataset

    model = load_checkpoint(ROOT / "checkpoints" / "rmd17" / "gns_ethanol.pt")[0].double()
    train = load_dataset(["rmd17/ethanol"]).split("train")
    return model.eval(), list(train.subset(frames, seed=0).batches_for(model, batch))


def _counting(passes: list):
    from gffmerge.collect.batches import default_forward

    def forward(model, batch):
        passes.append(1)
        return default_forward(model, batch)
    return forward


def test_one_shot_sums_take_one_pass_and_equal_the_two_pass_sums():
    model, batches = _shipped_gns()
    infos = mergeable_layers(model)
    names = list(infos)
    cached = prepare_sources([model], [batches], frames=None, names=names, tangents=True,
                             draws=2, seed=3)
    assert cached[0].targets is not None
    # reference: inputs from the model as a "merged" model, targets from the cached pass
    ref = stage_sums(model, cached, names, infos, tangents=True)[0]
    passes: list = []
    bare = prepare_sources([model], [batches], frames=None, names=names, tangents=True,
                           draws=2, seed=3, outputs=False, forward=_counting(passes))
    assert bare[0].targets is None and not passes  # no pass before the sums
    # the measured route: targets' sums from the recorded outputs (the default derives
    # those of affine layers from the Grams, tests/test_one_shot_derived.py)
    fast = stage_sums(None, bare, names, infos, tangents=True, forward=_counting(passes),
                      cross="measured")[0]
    assert len(passes) == len(batches) * 2  # one pass per batch and direction
    for n in names:
        a, b = fast[n], ref[n]
        assert (a.rows, a.trows) == (b.rows, b.trows), n
        for x, y in ((a.gram, b.gram), (a.cross, b.cross), (a.tgram, b.tgram),
                     (a.tcross, b.tcross)):
            assert torch.equal(x, y), n
        assert (a.ysq, a.tysq) == (b.ysq, b.tysq), n
    assert all(ref[n].cross.abs().max() > 0 for n in names)
    assert sum(bool(ref[n].tgram.abs().max() > 0) for n in names) > len(names) // 2


def test_recording_both_equals_separate_inputs_and_outputs():
    model, batches = _shipped_gns(2, 2)
    names = list(mergeable_layers(model))
    u = prepare_sources([model], [batches], frames=None, names=names, tangents=True,
                        outputs=False)[0].dirs[0][0]
    xs, ys = run_recording(model, batches[0], names, "both", u=u)
    x_ref = run_recording(model, batches[0], names, "input", u=u)
    y_ref = run_recording(model, batches[0], names, "output", u=u)
    for n in names:
        for got, want in ((xs[n], x_ref[n]), (ys[n], y_ref[n])):
            assert len(got) == len(want) > 0
            for (p, t), (pr, tr) in zip(got, want):
                assert torch.equal(p, pr) and torch.equal(t, tr), n


def test_one_shot_sums_in_the_hooks_see_the_rows_before_in_place_changes():
    """The one-shot sums are formed inside the hooks on the layer's own tensors (no
    copies): a residual added in place to ``a``'s output afterwards does not reach them."""
    from test_progressive import InPlaceResidual

    torch.manual_seed(0)
    model = InPlaceResidual().double().eval()
    x = torch.randn(16, 4, dtype=torch.float64)
    infos = mergeable_layers(model)
    sources = prepare_sources([model], [[x]], frames=None, names=list(infos),
                              tangents=False, outputs=False)
    (sums,) = stage_sums(None, sources, list(infos), infos)
    xa = torch.cat([x, torch.ones(16, 1, dtype=torch.float64)], 1)
    ya = model.a(x).detach()
    torch.testing.assert_close(sums["a"].gram, xa.T @ xa, rtol=1e-12, atol=0)
    torch.testing.assert_close(sums["a"].cross, xa.T @ ya, rtol=1e-12, atol=0)
    assert sums["a"].ysq == pytest.approx(float(ya.square().sum()), rel=1e-12)


def _float32_model(name: str):
    """A shipped float32 model (SchNet: random weights, none is shipped)."""
    from gffmerge.checkpoint import load_checkpoint
    from gffmerge.models import build_model

    if name == "schnet":
        torch.manual_seed(0)
        return build_model("schnet").eval()
    return load_checkpoint(ROOT / "checkpoints" / "rmd17" / f"{name}_ethanol.pt")[0].eval()


@pytest.mark.parametrize("name", ["gns", "painn", "schnet"])
def test_direct_tangent_rules_equal_autograd_bit_for_bit(name, monkeypatch):
    """``ẋ Wᵀ`` taken directly (:class:`~gffmerge.collect.tangents._LinearTangent`), the
    tangents of ``+ − × ÷`` with one plain operand
    (:func:`~gffmerge.collect.tangents._binary_plain`) and of a LayerNorm with plain
    weights (:func:`~gffmerge.collect.tangents._layer_norm_plain`) give the values and
    tangents of autograd's rules exactly, on float32 models."""
    import contextlib

    from gffmerge.collect import tangents
    from gffmerge.data import load_dataset

    model = _float32_model(name)
    train = load_dataset(["rmd17/ethanol"]).split("train")
    batch = next(iter(train.subset(4, seed=0).batches_for(model, 4)))
    names = list(mergeable_layers(model))
    u = tangents.directions(batch, seed=2)
    used: list = []
    rule = tangents._LinearTangent.jvp
    monkeypatch.setattr(tangents._LinearTangent, "jvp",
                        staticmethod(lambda ctx, *t: (used.append(1), rule(ctx, *t))[1]))
    def count_taken(attr: str) -> list[bool]:
        """Wrap ``tangents.<attr>`` (a rule returning None when it does not apply) and
        record, per call, whether it applied."""
        rule_fn, taken = getattr(tangents, attr), []

        def counted(*args):
            out = rule_fn(*args)
            taken.append(out is not None)
            return out
        monkeypatch.setattr(tangents, attr, counted)
        return taken

    direct = count_taken("_binary_plain")
    norms = count_taken("_layer_norm_plain")
    fast = run_recording(model, batch, names, "both", u=u, structured=True)
    assert len(used) >= len(names) // 2  # the rules were taken
    assert sum(direct) >= 3
    assert sum(norms) >= (3 if name == "gns" else 0)  # GNS's MLPs end in a LayerNorm
    monkeypatch.setattr(tangents, "_TangentRules", contextlib.nullcontext)
    ref = run_recording(model, batch, names, "both", u=u, structured=True)
    tangent_rows = 0
    for got, want in zip(fast, ref):
        for n in names:
            for (p, t), (pr, tr) in zip(got[n], want[n]):
                if isinstance(p, torch.Tensor):
                    assert torch.equal(p, pr) and torch.equal(t, tr), n
                    tangent_rows += int(t.abs().max() > 0)
                else:  # structured parts: compare their rows
                    assert torch.equal(p.materialize(torch.float64),
                                       pr.materialize(torch.float64)), n
                    assert torch.equal(t.materialize(torch.float64),
                                       tr.materialize(torch.float64)), n
    assert tangent_rows > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sum_of_squares_is_the_old_expression_and_leaves_the_rows(dtype):
    from gffmerge.collect.progressive import _sq

    y = torch.randn(300, 7, generator=torch.Generator().manual_seed(1), dtype=dtype)
    before = y.clone()
    assert _sq(y) == y.double().square().sum().item()
    assert torch.equal(y, before)  # float64 rows are squared in a copy, not in place


def test_stage_pass_sums_in_the_hooks_equal_recorded_rows_summed_after():
    """Progressive stage passes also sum inside the hooks, each call paired with the
    source's cached target of the same call: the same sums, to the bit, as recording the
    merged model's rows (copies) and summing them after the pass, with tangents, two
    directions and an early-stopped pass."""
    from gffmerge.collect.progressive import LayerSums, _add_call
    from gffmerge.solver import build_model, mean_state_dict
    from gffmerge.testing import fine_tunes

    model, batches = _shipped_gns(4, 2)
    models = fine_tunes(model, 2, scale=0.05, seed=4)
    infos = mergeable_layers(model)
    names = list(infos)
    sources = prepare_sources(models, [batches, batches], frames=None, names=names,
                              tangents=True, draws=2, seed=1)
    merged = build_model(models[0], mean_state_dict(models)).eval()
    for stage, calls in ((names, None), (names[:3], dict.fromkeys(names, 1))):
        got = stage_sums(merged, sources, stage, infos, tangents=True, calls=calls)
        for src, sums in zip(sources, got):
            ref = {n: LayerSums.empty(infos[n].in_features, infos[n].out_features, True,
                                      None) for n in stage}
            for i, batch in enumerate(src.batches):
                for d, u in enumerate(src.dirs[i]):
                    xs = run_recording(merged, batch, stage, "input", u=u, calls=calls,
                                       structured=True)
                    for n in stage:
                        assert len(xs[n]) == len(src.targets[i][d][n])
                        for x, y in zip(xs[n], src.targets[i][d][n]):
                            _add_call(ref[n], *x, *y, values=d == 0, tangents=True,
                                      backend="auto")
            for n in stage:
                for a, b in ((sums[n].gram, ref[n].gram), (sums[n].cross, ref[n].cross),
                             (sums[n].tgram, ref[n].tgram), (sums[n].tcross, ref[n].tcross)):
                    assert torch.equal(a, b), n
                assert (sums[n].ysq, sums[n].tysq, sums[n].rows) == (
                    ref[n].ysq, ref[n].tysq, ref[n].rows), n


class _Repeat(torch.nn.Module):
    def __init__(self, times: int):
        super().__init__()
        self.times = times
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        for _ in range(self.times):
            x = torch.tanh(self.lin(x))
        return x


@pytest.mark.parametrize("merged_times", [1, 3])
def test_stage_pass_with_other_call_counts_than_the_source_is_refused(merged_times):
    source = _Repeat(2).double()
    merged = _Repeat(merged_times).double()
    merged.load_state_dict(source.state_dict())
    infos = mergeable_layers(source)
    x = torch.randn(5, 3, dtype=torch.float64)
    sources = prepare_sources([source], [[x]], frames=None, names=["lin"], tangents=False)
    with pytest.raises(RuntimeError, match="must share one forward"):
        stage_sums(merged, sources, ["lin"], infos)


@pytest.mark.parametrize("name", ["gns", "painn"])
def test_dependency_probe_compared_in_the_hooks_equals_the_recorded_difference(name):
    """The layer-order probe compares each perturbed pass with the base inside the hooks:
    the same ``max |x - base|`` per layer, to the bit, as recording every input in float64
    and subtracting after the pass, for every perturbed layer of the shipped models."""
    from gffmerge.checkpoint import load_checkpoint
    from gffmerge.collect.batches import default_forward
    from gffmerge.collect.order import _inputs, _moved, call_order
    from gffmerge.data import load_dataset

    model = load_checkpoint(ROOT / "checkpoints" / "rmd17" / f"{name}_ethanol.pt")[0].eval()
    train = load_dataset(["rmd17/ethanol"]).split("train")
    batch = next(iter(train.subset(4, seed=0).batches_for(model, 4)))
    names, _ = call_order(model, batch)
    base = _inputs(model, batch, names, default_forward)
    fed = 0
    for a in names:
        got = _moved(model, batch, names, default_forward, base, a,
                     torch.Generator().manual_seed(5))
        ref = _inputs(model, batch, names, default_forward, perturb=a,
                      gen=torch.Generator().manual_seed(5))
        for b in names:
            assert got[b] == (ref[b] - base[b]).abs().max().item(), (a, b)
            fed += got[b] > 1e-3
    assert fed > len(names)  # perturbations do reach later layers


def test_rows_without_tangents_are_counted_and_equal_summed_zeros(monkeypatch):
    """A layer input that does not depend on the positions (SchNet's first ``in2f`` reads
    the embedding) reaches the sums as a None tangent: its rows are counted and the sums
    equal those of the materialised zero tangents exactly."""
    from gffmerge.collect import progressive, recording
    from gffmerge.data import load_dataset
    from gffmerge.models.schnet import SchNet

    torch.manual_seed(0)
    model = SchNet(n_atom_basis=8, n_filters=8, n_interactions=2, n_rbf=6,
                   cutoff=4.0).double().eval()
    batches = list(load_dataset(["rmd17/ethanol"]).split("train").subset(4, seed=0)
                   .batches_for(model, 2))
    infos = mergeable_layers(model)
    names = list(infos)
    none: list = []
    add = progressive._add_call

    def seen(s, x, dx, y, dy, **kw):
        none.append(dx is None)
        return add(s, x, dx, y, dy, **kw)
    monkeypatch.setattr(progressive, "_add_call", seen)

    def sums():
        src = prepare_sources([model], [batches], frames=None, names=names, tangents=True,
                              seed=1, outputs=False)
        return stage_sums(None, src, names, infos, tangents=True)[0]
    fast = sums()
    assert any(none) and not all(none)

    def zeros(self, t, copy):  # every tangent materialised, zeros where there is none
        from gffmerge.collect.tangents import split_dual

        return split_dual(t)
    monkeypatch.setattr(recording._Recorder, "_rows", zeros)
    none.clear()
    ref = sums()
    assert not any(none)
    for n in names:
        a, b = fast[n], ref[n]
        assert (a.rows, a.trows, a.ysq, a.tysq) == (b.rows, b.trows, b.ysq, b.tysq), n
        for x, y in ((a.gram, b.gram), (a.cross, b.cross), (a.tgram, b.tgram),
                     (a.tcross, b.tcross)):
            assert torch.equal(x, y), n
    assert fast["interactions.0.in2f"].trows == fast["interactions.0.in2f"].rows > 0
    assert fast["interactions.0.in2f"].tgram.abs().max() == 0
