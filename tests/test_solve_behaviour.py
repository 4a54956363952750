"""Solver options, rescue paths and the report do what they promise."""

import json

import pytest
import torch
from torch import nn

import gffmerge
from gffmerge.solver import solve_spd
from gffmerge.testing import TinyMLP, fine_tunes, random_batches


def _low_rank_data(seed):
    x = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x[:, 2:] = 0.0  # the data never spans the last two input directions
    return [x]


def test_mean_prior_keeps_unspanned_directions():
    torch.manual_seed(0)
    models = [nn.Linear(4, 2).double() for _ in range(2)]
    datas = [_low_rank_data(1), _low_rank_data(2)]
    mean_w = (models[0].weight + models[1].weight) / 2
    zero = gffmerge.merge(models, datas, method="gffmerge", progress=False).model
    prior = gffmerge.merge(models, datas, method="gffmerge",
                           prior="mean", ridge=1e-3, ridge_mode="relative",
                           progress=False).model
    assert zero.weight[:, 2:].abs().max() < 1e-6  # collapsed toward 0
    assert torch.allclose(prior.weight[:, 2:], mean_w[:, 2:], atol=1e-12)
    # the spanned part is still the regression, nearly unaffected by the prior
    assert torch.allclose(prior.weight[:, :2], zero.weight[:, :2], atol=1e-2)


def test_relative_ridge_scales_with_trace():
    models = fine_tunes(TinyMLP(), 2, seed=3)
    datas = [random_batches(2, 8, (6,), seed=i) for i in range(2)]
    stats = [gffmerge.measure(m, d, progress=False) for m, d in zip(models, datas)]
    rep = gffmerge.solve(models, stats, ridge=1e-3, ridge_mode="relative").report
    lr = rep.layers[0]
    g = sum(s.models[0].layers["inp"].gram for s in stats)
    assert lr.ridge == pytest.approx(1e-3 * g.trace().item() / g.shape[0])


class WithUnusedHead(TinyMLP):
    def __init__(self):
        super().__init__()
        self.spare = nn.Linear(3, 2)  # never called in forward


def test_unreached_layers_keep_mean_and_warn():
    torch.manual_seed(2)
    models = fine_tunes(WithUnusedHead(), 2, seed=1)
    datas = [random_batches(2, 4, (6,), seed=i) for i in range(2)]
    with pytest.warns(UserWarning,
                      match=r"1 layer\(s\) saw no data and keep the sources' mean: spare"):
        result = gffmerge.merge(models, datas, method="gffmerge", progress=False)
    assert result.report.unreached == ["spare"]
    mean = (models[0].spare.weight + models[1].spare.weight) / 2
    assert torch.allclose(result.model.spare.weight, mean)
    assert "spare.weight" in result.report.averaged and "inp.weight" not in result.report.averaged


def test_solve_spd_rescue_paths():
    eye = torch.eye(2, dtype=torch.float64)
    rhs = torch.ones(2, 1, dtype=torch.float64)
    nearly = torch.tensor([[1.0, 1.0], [1.0, 1.0 - 1e-13]], dtype=torch.float64)
    indefinite = torch.diag(torch.tensor([1.0, -1e-2], dtype=torch.float64))
    out = solve_spd({"ok": (2 * eye, rhs), "nearly": (nearly, rhs), "bad": (indefinite, rhs)})
    assert out["ok"].jitter == 0 and torch.allclose(out["ok"].x, rhs / 2)
    assert 0 < out["nearly"].jitter <= 1e-10 and out["nearly"].fallback == ""
    assert out["bad"].fallback == "eigh"
    with pytest.raises(gffmerge.SingularGramError, match="not positive definite"):
        solve_spd({"bad": (indefinite, rhs)}, rescue=False)


def test_jitter_is_recorded_and_warned():
    models = [nn.Linear(2, 1, bias=False).double() for _ in range(2)]
    stats = [gffmerge.measure(m, [torch.randn(5, 2, dtype=torch.float64)], progress=False)
             for m in models]
    for s in stats:
        g = s.models[0].layers[""].gram
        g[:2, :2] = torch.tensor([[1.0, 1.0], [1.0, 1.0 - 1e-13]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="Cholesky failed; solved with diagonal jitter"):
        rep = gffmerge.solve(models, stats, ridge=1e-300, condition=False).report
    assert rep.layers[0].jitter > 0


def test_report_diagnostics():
    torch.manual_seed(4)
    models = fine_tunes(TinyMLP(), 2, seed=9)
    datas = [random_batches(3, 8, (6,), seed=i, shift=i) for i in range(2)]
    rep = gffmerge.merge(models, datas, method="gffmerge", progress=False).report
    assert [lr.name for lr in rep.layers] == ["inp", "mid", "out"]
    for lr in rep.layers:
        assert lr.rows == [24, 24]
        assert lr.cond > 1 and 0 <= lr.rel_residual < 1 and lr.rel_distance > 0
    # the first layer sees the same inputs in both models: the residual is the exact
    # least-squares residual of fitting two different linear maps with one
    ys = [torch.cat([m.inp(b).double() for b in d]).detach() for m, d in zip(models, datas)]
    w = rep.layers[0]
    merged = gffmerge.merge(models, datas, method="gffmerge", progress=False).model
    pred = merged.inp(torch.cat([torch.cat(d) for d in datas])).double().detach()
    ys_all = torch.cat([ys[0], ys[1]])
    expected = ((pred - ys_all) ** 2).sum() / (ys_all ** 2).sum()
    assert w.rel_residual == pytest.approx(expected.item(), rel=1e-4)
    assert set(rep.times) >= {"measure", "solve", "total"}
    assert "| inp | 6→16 | 24/24 |" in rep.to_markdown()
    assert json.loads(rep.to_json())["method"] == "gffmerge"


def test_average_method_is_the_mean():
    models = fine_tunes(TinyMLP(), 3, seed=0)
    merged = gffmerge.merge(models, method="average").model
    for key, value in merged.state_dict().items():
        mean = sum(m.state_dict()[key] for m in models) / 3
        assert torch.allclose(value, mean, atol=1e-7)


def test_methods_registry_describes_options():
    names = gffmerge.methods.available()
    assert {"average", "gffmerge", "regmean"} <= set(names)
    spec = gffmerge.methods.get("gffmerge")
    infos = {o.name: o for o in spec.option_infos()}
    assert infos["ridge"].default == 1e-6 and infos["weighting"].choices == ("pooled", "per_model")
    assert spec.reference.startswith("https://arxiv.org/")
