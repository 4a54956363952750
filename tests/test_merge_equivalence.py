"""The closed-form merges equal their mathematical definitions (float64 references)."""

import copy

import pytest
import torch
from torch import nn

import gffmerge
from gffmerge.testing import TinyMLP, fine_tunes, max_abs_diff, random_batches


def _union_ols(models, datas):
    xs, ys = [], []
    for m, d in zip(models, datas):
        for x in d:
            xs.append(x)
            with torch.no_grad():
                ys.append(m(x))
    x = torch.cat(xs)
    xt = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    theta = torch.linalg.lstsq(xt, torch.cat(ys), driver="gelsd").solution
    return theta[:-1].T, theta[-1]


@pytest.mark.parametrize("k", [2, 3, 4])
def test_single_linear_equals_ols_on_union(k):
    torch.manual_seed(k)
    models = [nn.Linear(5, 3).double() for _ in range(k)]
    datas = [random_batches(i + 1, 17 + 5 * i, (5,), shift=0.3 * i, seed=i, dtype=torch.float64)
             for i in range(k)]
    merged = gffmerge.merge(models, datas, method="gffmerge", ridge=0.0, progress=False).model
    w, b = _union_ols(models, datas)
    assert torch.allclose(merged.weight, w, atol=1e-10, rtol=0)
    assert torch.allclose(merged.bias, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("method", "options"), [
    ("gffmerge", {}), ("gffmerge", {"prior": "mean", "ridge": 1e-2, "ridge_mode": "relative"}),
    ("gffmerge", {"weighting": "per_model", "ridge": 0.0}), ("regmean", {})])
def test_identical_models_are_reproduced(method, options):
    torch.manual_seed(0)
    base = TinyMLP()
    models = [copy.deepcopy(base) for _ in range(3)]
    datas = [random_batches(10, 16, (4, 6), shift=0.5 * i, seed=i) for i in range(3)]
    merged = gffmerge.merge(models, datas, method=method, progress=False, **options).model
    assert max(max_abs_diff(merged, base).values()) <= 1e-6


# ---------------------------------------------------------------- the official recipe
def _official_recipe(models, datas, ridge=1e-6):
    """Independent float64 re-statement of the authors' closed-form script (see
    research/official-recipe.md): hooks read (input, output) of every nn.Linear, cast to
    float64, pool A = Σ x̃ᵀx̃ and B = Σ x̃ᵀy over all teachers, solve (A + λI)Θ = B with a
    general solver, write W = Θ[:-1]ᵀ and b = Θ[-1] only when the layer has a bias; every
    other entry is the mean of the state dicts."""
    names = sorted(n for n, m in models[0].named_modules() if isinstance(m, nn.Linear))
    acc = {n: [0.0, 0.0, 0] for n in names}

    def make_hook(name):
        def hook(mod, inputs, output):
            x = inputs[0].detach().to(torch.float64).reshape(-1, mod.in_features)
            y = output.detach().to(torch.float64).reshape(-1, mod.out_features)
            xt = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
            acc[name][0] = acc[name][0] + xt.T @ xt
            acc[name][1] = acc[name][1] + xt.T @ y
            acc[name][2] += x.shape[0]
        return hook

    for model, data in zip(models, datas):
        mods = dict(model.named_modules())
        handles = [mods[n].register_forward_hook(make_hook(n)) for n in names]
        model.eval()
        with torch.inference_mode():
            for x in data:
                model(x)
        for h in handles:
            h.remove()
    sds = [m.state_dict() for m in models]
    state = {k: sum(sd[k].double() for sd in sds) / len(sds) for k in sds[0]}
    conds = {}
    for n in names:
        a, b, _ = acc[n]
        reg = a + ridge * torch.eye(a.shape[0], dtype=torch.float64)
        conds[n] = torch.linalg.cond(reg).item()
        theta = torch.linalg.solve(reg, b)
        state[f"{n}.weight"] = theta[:-1].T
        if f"{n}.bias" in state:
            state[f"{n}.bias"] = theta[-1]
    return state, conds


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("target", ["weights", "cross"])
def test_gffmerge_equals_official_recipe(k, target):
    torch.manual_seed(10 + k)
    models = fine_tunes(TinyMLP(), k, seed=k)
    datas = [random_batches(2 + i, 5 + 3 * i, (4, 6), shift=0.4 * i, seed=20 + i)
             for i in range(k)]
    result = gffmerge.merge(models, datas, method="gffmerge",
                            official_quirks=True, target=target, progress=False)
    ref_state, ref_conds = _official_recipe(models, datas)
    got = result.model.state_dict()
    # both end in float32 parameters; the weights target rebuilds B from float32 weights
    # while the recipe uses float32 outputs, so it agrees to float32 round-off only
    atol, rtol = (1e-7, 1e-6) if target == "cross" else (1e-5, 0.0)
    for key, ref in ref_state.items():
        assert torch.allclose(got[key].double(), ref, atol=atol, rtol=rtol), key
    for lr in result.report.layers:
        assert lr.cond == pytest.approx(ref_conds[lr.name], rel=1e-6)
    assert result.report.layers[0].rows == [
        sum(x.shape[0] * x.shape[1] for x in d) for d in datas]


def test_bias_free_layers_without_quirk_fit_no_intercept():
    torch.manual_seed(3)
    models = fine_tunes(TinyMLP(), 2, seed=1)
    datas = [random_batches(2, 6, (3, 6), shift=i, seed=i) for i in range(2)]
    clean = gffmerge.merge(models, datas, method="gffmerge", progress=False)
    quirk = gffmerge.merge(models, datas, method="gffmerge", official_quirks=True, progress=False)
    by_name = {lr.name: lr for lr in clean.report.layers}
    assert not by_name["mid"].intercept and by_name["inp"].intercept
    diff = (clean.model.mid.weight - quirk.model.mid.weight).abs().max()
    assert diff > 1e-6  # the dropped intercept changes the solved weight
    assert torch.equal(clean.model.out.weight, quirk.model.out.weight)


# ---------------------------------------------------------------- RegMean
@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.3])
def test_regmean_equals_formula(alpha):
    torch.manual_seed(7)
    models = fine_tunes(TinyMLP(), 3, seed=2)
    datas = [random_batches(1 + i, 4 + 7 * i, (2, 6), shift=0.2 * i, seed=30 + i)
             for i in range(3)]
    result = gffmerge.merge(models, datas, method="regmean", alpha=alpha, progress=False)
    # independent reference: plain float64 activations of every layer input
    for name in ["inp", "mid", "out"]:
        grams, ws = [], []
        for m, d in zip(models, datas):
            xs = []
            h = dict(m.named_modules())[name].register_forward_hook(
                lambda mod, i, o, xs=xs: xs.append(i[0].reshape(-1, mod.in_features)))
            with torch.no_grad():
                for x in d:
                    m(x)
            h.remove()
            x = torch.cat(xs).double()
            g = x.T @ x / x.shape[0]
            g = alpha * g + (1 - alpha) * torch.diag(g.diagonal())
            grams.append(g)
            ws.append(dict(m.named_modules())[name].weight.double())
        w = torch.linalg.solve(sum(grams), sum(g @ wk.T for g, wk in zip(grams, ws))).T
        got = dict(result.model.named_modules())[name]
        assert torch.allclose(got.weight.double(), w, atol=2e-6, rtol=1e-5), name
        if got.bias is not None:
            mean_b = sum(dict(m.named_modules())[name].bias for m in models) / 3
            assert torch.allclose(got.bias, mean_b, atol=1e-7)
    assert torch.allclose(result.model.norm.weight, sum(m.norm.weight for m in models) / 3)


def test_pooled_and_per_model_differ_when_row_counts_differ():
    torch.manual_seed(5)
    models = fine_tunes(TinyMLP(), 2, seed=5)
    datas = [random_batches(5, 40, (6,), seed=1), random_batches(1, 18, (6,), shift=1, seed=2)]
    stats = gffmerge.Stats.concat(gffmerge.measure(m, d, progress=False)
                                  for m, d in zip(models, datas))
    pooled = gffmerge.solve(models, stats, weighting="pooled").model
    per = gffmerge.solve(models, stats, weighting="per_model").model
    assert (pooled.inp.weight - per.inp.weight).abs().max() > 1e-4
    # ... and agree when both models saw the same number of rows
    datas = [random_batches(2, 20, (6,), seed=1), random_batches(2, 20, (6,), shift=1, seed=2)]
    stats = gffmerge.Stats.concat(gffmerge.measure(m, d, progress=False)
                                  for m, d in zip(models, datas))
    a = gffmerge.solve(models, stats, weighting="pooled", ridge=0.0).model
    b = gffmerge.solve(models, stats, weighting="per_model", ridge=0.0).model
    assert max(max_abs_diff(a, b).values()) < 1e-5
