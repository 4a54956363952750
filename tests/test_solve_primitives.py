"""The solver primitives (assemble, solve, write back, diagnose) and the one public solve."""

import dataclasses

import pytest
import torch
from torch import nn

import gffmerge
from gffmerge import methods
from gffmerge.solver import (
    LayerSystem,
    SolveOptions,
    assemble,
    drift_and_residual,
    layer_theta,
    mean_state_dict,
    solve_systems,
    write_back,
    write_layer,
)
from gffmerge.testing import TinyMLP, fine_tunes, max_abs_diff, random_batches

f64 = torch.float64


def _setup(k=2, seed=0, cross=False):
    torch.manual_seed(seed)
    models = fine_tunes(TinyMLP(), k, seed=seed)
    datas = [random_batches(2 + i, 8, (4, 6), shift=0.3 * i, seed=seed + i) for i in range(k)]
    stats = gffmerge.Stats.concat(gffmerge.measure(m, d, progress=False, cross=cross)
                                  for m, d in zip(models, datas))
    return models, datas, stats


def _spd(n, seed):
    x = torch.randn(3 * n, n, dtype=f64, generator=torch.Generator().manual_seed(seed))
    return x.T @ x


# ---------------------------------------------------------------- one public solve
def test_solve_and_method_gffmerge_share_options_and_defaults():
    solve_defaults = {f.name: f.default for f in dataclasses.fields(SolveOptions)}
    method_defaults = {o.name: o.default for o in methods.get("gffmerge").option_infos()}
    assert solve_defaults == method_defaults
    assert method_defaults["official_quirks"] is False  # the clean recipe by default
    assert methods.get("gffmerge").options() == SolveOptions()


@pytest.mark.parametrize("options", [{}, {"official_quirks": True},
                                     {"prior": "mean", "ridge": 1e-2, "ridge_mode": "relative"}])
def test_solve_equals_method_gffmerge(options):
    models, _, stats = _setup(seed=3)
    a = gffmerge.solve(models, stats, **options)
    b = methods.get("gffmerge")(models, stats, **options)
    c = gffmerge.solve(models, stats, options=SolveOptions(**options))
    for other in (b, c):
        assert max(max_abs_diff(a.model, other.model).values()) == 0.0
    assert a.report.method == "solve" and b.report.method == "gffmerge"
    assert a.report.options == b.report.options == dataclasses.asdict(SolveOptions(**options))


def test_solve_refuses_options_and_keywords_together():
    models, _, stats = _setup()
    with pytest.raises(TypeError, match="either options= or keyword options"):
        gffmerge.solve(models, stats, options=SolveOptions(), ridge=1.0)


def test_quirks_fit_and_drop_the_intercept_of_bias_free_layers():
    models, _, stats = _setup(seed=5)
    plain = assemble(models, stats, intercept=SolveOptions().fit_intercept)
    quirk = assemble(models, stats, intercept=SolveOptions(official_quirks=True).fit_intercept)
    assert not plain["mid"].intercept and quirk["mid"].intercept
    assert quirk["mid"].dim == plain["mid"].dim + 1 == 17


# ---------------------------------------------------------------- assemble
def test_assemble_equals_float64_sums():
    models, _, stats = _setup(k=3, seed=7)
    systems = assemble(models, stats, weighting="per_model", alpha=0.5, ridge=1e-2,
                       ridge_mode="relative", prior="mean")
    for name, s in systems.items():
        aug = name != "mid"  # "auto": an intercept where the layer has a bias
        dim = stats.layers[name].in_features + aug
        grams = [ms.layers[name].gram[:dim, :dim] / ms.layers[name].rows
                 for ms in stats.models]
        grams = [0.5 * g + 0.5 * torch.diag(g.diagonal()) for g in grams]
        thetas = [layer_theta(m.state_dict(), name)[:dim] for m in models]
        a = sum(grams)
        assert s.intercept == aug and s.a.shape == (dim, dim)
        assert torch.allclose(s.a, a, rtol=1e-13, atol=0)
        assert torch.allclose(s.b, sum(g @ t for g, t in zip(grams, thetas)), rtol=1e-12,
                              atol=1e-14)
        assert torch.allclose(s.prior, sum(thetas) / 3, rtol=1e-15, atol=0)
        assert s.ridge == pytest.approx(1e-2 * a.trace().item() / dim, rel=1e-14)


def test_coefficients_weight_the_sources():
    models, _, stats = _setup(seed=11)
    only_first = assemble(models, stats, coefficients=(1.0, 0.0))
    thetas = {n: s.x for n, s in solve_systems(only_first, jitter=False).items()}
    # the regression onto model 0's own outputs alone is model 0 (full-rank inputs);
    # what is not solved (the LayerNorm) is the mean
    merged, written = write_back(models[0], mean_state_dict(models), thetas)
    diff = max_abs_diff(merged, models[0])
    assert written == {"inp.weight", "inp.bias", "mid.weight", "out.weight", "out.bias"}
    assert max(diff[key] for key in written) < 1e-5 and diff["norm.weight"] > 1e-3
    scaled = assemble(models, stats, coefficients=(3.0, 3.0))
    for name, s in assemble(models, stats).items():
        assert torch.allclose(scaled[name].a, 3 * s.a, rtol=1e-14, atol=1e-12)
    with pytest.raises(ValueError, match="3 coefficients for 2 models"):
        assemble(models, stats, coefficients=(1, 1, 1))


# ---------------------------------------------------------------- raw systems
def test_layer_system_from_raw_sums_solves_the_ridge_equations():
    gen = torch.Generator().manual_seed(1)
    systems = {}
    for n, (d, out) in enumerate([(5, 3), (5, 2), (8, 4)]):
        a = _spd(d, n)
        b = torch.randn(d, out, dtype=f64, generator=gen)
        prior = torch.randn(d, out, dtype=f64, generator=gen)
        systems[f"l{n}"] = LayerSystem(a, b, ridge=0.3, prior=prior)
    systems["plain"] = LayerSystem(_spd(4, 9), torch.ones(4, 1, dtype=f64))
    solutions = solve_systems(systems)
    assert list(solutions) == list(systems)
    for name, s in systems.items():
        ref = torch.linalg.solve(s.a + s.ridge * torch.eye(s.dim, dtype=f64),
                                 s.b + (s.ridge * s.prior if s.prior is not None else 0))
        assert torch.allclose(solutions[name].x, ref, rtol=1e-10, atol=1e-12)
        cond = torch.linalg.cond(s.matrix()).item()
        assert solutions[name].cond == pytest.approx(cond, rel=1e-8)


def test_layer_system_checks_its_shapes():
    a = torch.eye(3, dtype=f64)
    with pytest.raises(ValueError, match="B must be"):
        LayerSystem(a, torch.zeros(4, 2, dtype=f64))
    with pytest.raises(ValueError, match="prior"):
        LayerSystem(a, torch.zeros(3, 2, dtype=f64), prior=torch.zeros(3, 1, dtype=f64))
    with pytest.raises(ValueError, match="ridge"):
        LayerSystem(a, torch.zeros(3, 2, dtype=f64), ridge=-1.0)


def test_unregularised_singular_system_is_an_error_naming_the_layer():
    a = torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=f64))
    systems = {"enc.proj": LayerSystem(a, torch.ones(3, 1, dtype=f64))}
    with pytest.raises(gffmerge.SingularGramError, match=r"enc\.proj.*ridge=1e-6"):
        solve_systems(systems)
    systems["enc.proj"] = LayerSystem(a, torch.ones(3, 1, dtype=f64), ridge=1e-3)
    assert torch.isfinite(solve_systems(systems)["enc.proj"].x).all()


def test_raw_system_chain_fits_a_linear_layer():
    """The chain a progressive or custom method uses: own sums → solve → write back."""
    gen = torch.Generator().manual_seed(4)
    layer = nn.Linear(4, 2).double()
    x = torch.randn(50, 4, dtype=f64, generator=gen)
    y = torch.randn(50, 2, dtype=f64, generator=gen)
    xt = torch.cat([x, torch.ones(50, 1, dtype=f64)], 1)
    system = LayerSystem(xt.T @ xt, xt.T @ y, intercept=True)
    sol = solve_systems({"": system})
    merged, written = write_back(layer, layer.state_dict(), {"": sol[""].x})
    ref = torch.linalg.lstsq(xt, y).solution
    assert written == {"weight", "bias"}
    assert torch.allclose(merged.weight, ref[:4].T, atol=1e-12)
    assert torch.allclose(merged.bias, ref[4], atol=1e-12)
    assert merged is not layer and not torch.equal(layer.weight, merged.weight)


# ---------------------------------------------------------------- write back, diagnose
def test_write_layer_drops_intercept_without_bias_and_checks_shapes():
    model = TinyMLP()
    state = model.state_dict()
    theta = torch.randn(17, 16, dtype=f64)  # mid: 16 inputs + intercept, no bias
    assert write_layer(state, "mid", theta) == ["mid.weight"]
    assert state["mid.weight"].dtype == torch.float32
    assert torch.equal(state["mid.weight"], theta[:16].T.float())
    assert write_layer(state, "inp", torch.zeros(6, 16, dtype=f64)) == ["inp.weight"]
    assert write_layer(state, "inp", torch.zeros(7, 16, dtype=f64)) == ["inp.weight",
                                                                        "inp.bias"]
    with pytest.raises(ValueError, match=r"must be \[6, 16\] or \[7, 16\]"):
        write_layer(state, "inp", torch.zeros(5, 16, dtype=f64))


def test_drift_and_residual_against_direct_definitions():
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(20 + 5 * k, 3, dtype=f64, generator=gen) for k in range(2)]
    xts = [torch.cat([x, torch.ones(x.shape[0], 1, dtype=f64)], 1) for x in xs]
    sources = [torch.randn(4, 2, dtype=f64, generator=gen) for _ in range(2)]
    theta = torch.randn(4, 2, dtype=f64, generator=gen)
    drift, residual = drift_and_residual(theta, sources, [xt.T @ xt for xt in xts])
    mean = (sources[0] + sources[1]) / 2
    assert drift == pytest.approx(((theta - mean).norm() / mean.norm()).item(), rel=1e-12)
    num = sum(((xt @ theta - xt @ s) ** 2).sum() for xt, s in zip(xts, sources))
    den = sum(((xt @ s) ** 2).sum() for xt, s in zip(xts, sources))
    assert residual == pytest.approx((num / den).item(), rel=1e-10)


def test_regmean_options_are_validated_before_any_work():
    spec = methods.get("regmean")
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        spec.options(alpha=1.5)
    with pytest.raises(ValueError, match="ridge_mode='trace' is not valid"):
        spec.options(ridge_mode="trace")
