"""Progressive closed form: call order, stages, exactness on linear networks, real merges."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gffmerge.collect.order import call_order, layer_order, stages_from
from gffmerge.methods.progressive import ProgressiveOptions, progressive_merge
from gffmerge.testing import fine_tunes, random_batches

ROOT = Path(__file__).resolve().parents[1]


class Stack(nn.Module):
    """Purely linear: three stacked layers, the middle one without a bias (narrowing, so
    every layer's inputs span their space)."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 5)
        self.l2 = nn.Linear(5, 4, bias=False)
        self.l3 = nn.Linear(4, 3)

    def forward(self, x):
        return self.l3(self.l2(self.l1(x)))


class Branchy(nn.Module):
    """Two parallel branches, a join, and an independent layer registered first but called
    late: stages {a, b, late}, {join}, {head}."""

    def __init__(self):
        super().__init__()
        self.late = nn.Linear(4, 8)  # registered first, called fourth
        self.head = nn.Linear(8, 2)
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(4, 8)
        self.join = nn.Linear(16, 8)

    def forward(self, x):
        h = torch.cat([torch.tanh(self.a(x)), torch.sigmoid(self.b(x))], -1)
        h = torch.tanh(self.join(h))
        return self.head(h + self.late(x))


def _lstsq_progressive(sources, batches):
    """Layer by layer least squares on the union, in float64, written out by hand."""
    solved = []
    inputs = [torch.cat(b) for b in batches]  # merged-model inputs per source
    targets_in = list(inputs)  # source's own inputs per source
    for name in ("l1", "l2", "l3"):
        rows, ys = [], []
        for k, src in enumerate(sources):
            layer = getattr(src, name)
            ys.append(layer(targets_in[k]).detach())
            x = inputs[k]
            rows.append(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
                        if layer.bias is not None else x)
        X, Y = torch.cat(rows), torch.cat(ys)
        theta = torch.linalg.solve(X.T @ X, X.T @ Y)
        solved.append(theta)
        w = theta[:inputs[0].shape[1]]
        b = theta[-1] if getattr(sources[0], name).bias is not None else 0.0
        inputs = [x @ w + b for x in inputs]
        targets_in = [getattr(src, name)(t).detach() for src, t in zip(sources, targets_in)]
    return solved


def test_progressive_equals_layerwise_least_squares_on_linear_network():
    torch.manual_seed(0)
    base = Stack().double()
    sources = fine_tunes(base, 3, scale=0.3, seed=1)
    batches = [random_batches(3, 20, (6,), shift=k, seed=10 + k, dtype=torch.float64)
               for k in range(3)]
    result = progressive_merge(sources, batches, ProgressiveOptions(ridge=0.0, frames=None),
                               progress=False)
    assert result.report.options["stages"] == [["l1"], ["l2"], ["l3"]]
    want = _lstsq_progressive(sources, batches)
    m = result.model
    for name, theta in zip(("l1", "l2", "l3"), want):
        layer = getattr(m, name)
        d = layer.in_features
        torch.testing.assert_close(layer.weight.T, theta[:d], rtol=0, atol=1e-10)
        if layer.bias is not None:
            torch.testing.assert_close(layer.bias, theta[d], rtol=0, atol=1e-10)
    # the one-shot mode on a linear network: every source is fitted on its own inputs
    one = progressive_merge(sources, batches, ProgressiveOptions(ridge=0.0, frames=None,
                                                                 mode="one-shot"),
                            progress=False)
    assert one.report.options["stages"] == [["l1", "l2", "l3"]]
    assert torch.allclose(one.model.l1.weight, m.l1.weight, atol=1e-10)  # same inputs
    assert not torch.allclose(one.model.l3.weight, m.l3.weight, atol=1e-6)


def test_call_order_and_stages_of_branching_model():
    torch.manual_seed(0)
    model = Branchy()
    x = torch.randn(16, 4)
    order, calls = call_order(model, x)
    assert order == ["a", "b", "join", "late", "head"]
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][0] == "late"
    assert calls == dict.fromkeys(order, 1)
    lo = layer_order(model, x)
    assert lo.feeds["a"] == {"join", "head"}
    assert lo.feeds["late"] == {"head"}
    assert lo.feeds["head"] == frozenset()
    assert lo.stages == (("a", "b", "late"), ("join",), ("head",))
    assert lo.stage_of("late") == 0 and lo.back == ()


def test_stages_ignore_dependencies_against_call_order():
    stages, back = stages_from(["p", "q", "r"], {"p": frozenset({"q"}),
                                                 "q": frozenset({"p", "r"})})
    assert stages == (("p",), ("q",), ("r",))
    assert back == (("q", "p"),)


def test_stage_grouping_does_not_change_the_merge(monkeypatch):
    """Solving stage by stage equals solving one layer at a time in call order."""
    from gffmerge.collect import order as order_mod

    torch.manual_seed(0)
    base = Branchy().double()
    sources = fine_tunes(base, 2, scale=0.2, seed=3)
    batches = [random_batches(2, 24, (4,), shift=0.5 * k, seed=k, dtype=torch.float64)
               for k in range(2)]
    opts = ProgressiveOptions(ridge=1e-3, frames=None)
    grouped = progressive_merge(sources, batches, opts, progress=False)
    monkeypatch.setattr(order_mod, "stages_from",
                        lambda order, feeds: (tuple((n,) for n in order), ()))
    serial = progressive_merge(sources, batches, opts, progress=False)
    assert len(serial.report.options["stages"]) == 5
    assert len(grouped.report.options["stages"]) == 3
    for k, v in grouped.model.state_dict().items():
        torch.testing.assert_close(v, serial.model.state_dict()[k], rtol=0, atol=1e-12)


class LinNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        return self.norm(self.lin(x))


def test_layernorm_scale_and_shift_are_fitted_per_feature():
    """``norms=True``: γ, β of an affine LayerNorm are the per-feature least squares fit of
    the sources' LayerNorm outputs on the normalised merged inputs (pooled)."""
    torch.manual_seed(0)
    base = LinNorm().double()
    sources = fine_tunes(base, 2, scale=0.5, seed=4)
    for s in sources[1:]:  # same linear layer: the merged one equals it, inputs agree
        s.lin.load_state_dict(sources[0].lin.state_dict())
    batches = [random_batches(2, 16, (4,), shift=2.0 * k, seed=k, dtype=torch.float64)
               for k in range(2)]
    res = progressive_merge(sources, batches, ProgressiveOptions(ridge=0.0, frames=None,
                                                                 norms=True), progress=False)
    assert res.report.options["stages"] == [["lin"], ["norm"]]
    n, y = [], []
    for s, b in zip(sources, batches):
        x = torch.cat(b)
        n.append(torch.nn.functional.layer_norm(s.lin(x), (6,)).detach())
        y.append(s.norm(s.lin(x)).detach())
    n, y = torch.cat(n), torch.cat(y)
    for j in range(6):
        X = torch.stack([n[:, j], torch.ones(len(n), dtype=torch.float64)], 1)
        g, b = torch.linalg.lstsq(X, y[:, j:j + 1]).solution.flatten()
        assert abs(res.model.norm.weight[j].item() - g.item()) < 1e-10
        assert abs(res.model.norm.bias[j].item() - b.item()) < 1e-10
    plain = progressive_merge(sources, batches, ProgressiveOptions(ridge=0.0, frames=None),
                              progress=False)
    torch.testing.assert_close(plain.model.norm.weight,
                               (sources[0].norm.weight + sources[1].norm.weight) / 2)


def test_options_are_validated():
    with pytest.raises(ValueError, match="ridge must be"):
        ProgressiveOptions(ridge=-1.0)
    with pytest.raises(ValueError, match="tangents="):
        ProgressiveOptions(tangents="yes")
    with pytest.raises(ValueError, match="frames must be"):
        ProgressiveOptions(frames=0)
    with pytest.raises(ValueError, match="draws must be"):
        ProgressiveOptions(draws=0)
    assert ProgressiveOptions(ridge=1e-2, beta=1.0).candidates(True) == [(1e-2, 1.0)]
    assert ProgressiveOptions(ridge=1e-2, beta=1.0).candidates(False) == [(1e-2, 0.0)]
    grid = ProgressiveOptions(ridge_grid=(1e-3, 1e-2), beta_grid=(1.0,)).candidates(True)
    assert grid == [(1e-3, 0.0), (1e-3, 1.0), (1e-2, 0.0), (1e-2, 1.0)]


def test_auto_needs_validation_data():
    sources = fine_tunes(Stack().double(), 2, seed=0)
    batches = [random_batches(1, 8, (6,), seed=k, dtype=torch.float64) for k in range(2)]
    with pytest.raises(ValueError, match="val_data"):
        progressive_merge(sources, batches, progress=False)


@pytest.fixture(scope="module")
def rmd17_gns():
    from gffmerge.checkpoint import load_checkpoint
    from gffmerge.data import load_dataset

    systems = ["rmd17/ethanol", "rmd17/malonaldehyde"]
    ck = ROOT / "checkpoints" / "rmd17"
    if not ck.is_dir():
        pytest.skip("shipped rMD17 checkpoints are not in this checkout")
    models = [load_checkpoint(ck / f"gns_{s.split('/')[1]}.pt")[0] for s in systems]
    data = load_dataset(systems)
    return systems, models, data


def test_progressive_beats_average_on_a_real_pair(rmd17_gns):
    """On the shipped rMD17 GNS fine-tunes (ethanol / malonaldehyde), a small progressive
    merge has a lower force error than the average on held-out frames of both systems."""
    from gffmerge.evaluate import evaluate
    from gffmerge.solver import build_model, mean_state_dict

    systems, models, data = rmd17_gns
    train, held_out = data.split("train"), data.split("val")
    batches = [train.for_system(s).subset(32, seed=0).batches_for(m, 16)
               for s, m in zip(systems, models)]
    result = progressive_merge(models, batches, ProgressiveOptions(ridge=1e-3, frames=32),
                               progress=False)
    check = held_out.subset(48, seed=1)
    average = build_model(models[0], mean_state_dict(models))
    err_avg = evaluate(average, check, progress=False)["all"]["force_mae_mev_per_a"]
    err = evaluate(result.model, check, progress=False)["all"]["force_mae_mev_per_a"]
    assert err < 0.8 * err_avg, (err, err_avg)
    assert all(lr.solved for lr in result.report.layers)


class InPlaceResidual(nn.Module):
    """A layer whose output is changed in place right after it (``h += x``), as CHGNet's
    convolutions do after their ``mlp_out``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        h += x
        return self.b(torch.tanh(h))


def test_recorded_rows_are_not_changed_by_later_in_place_ops():
    """The recorder copies what it sees: the target rows of ``a`` are ``a(x)``, not
    ``a(x) + x``, so merging two identical copies gives them back."""
    import copy

    from gffmerge.collect.recording import run_recording

    torch.manual_seed(0)
    model = InPlaceResidual().double()
    x = torch.randn(16, 4, dtype=torch.float64)
    seen = run_recording(model, x, ["a"], "output")
    torch.testing.assert_close(seen["a"][0][0], model.a(x).detach(), rtol=0, atol=1e-14)
    res = progressive_merge([model, copy.deepcopy(model)], [[x], [x]],
                            ProgressiveOptions(ridge=1e-6, frames=None), progress=False)
    for name in ("a", "b"):
        for p in ("weight", "bias"):
            torch.testing.assert_close(getattr(getattr(res.model, name), p),
                                       getattr(getattr(model, name), p), rtol=1e-8, atol=1e-10)
