"""The progressive default's anchors: the average and one-shot closed forms among its
candidates, so the validated default is never worse on validation than the average."""

from __future__ import annotations

import pytest
import torch

from gffmerge.data import load_dataset
from gffmerge.evaluate import pooled_errors
from gffmerge.methods import progressive as prog
from gffmerge.methods._progressive_anchors import one_shot_run, one_shot_sums
from gffmerge.methods.progressive import ProgressiveOptions, progressive_merge
from gffmerge.models.painn import PaiNN
from gffmerge.solver import build_model, mean_state_dict
from gffmerge.testing import fine_tunes

SYSTEMS = ["rmd17/ethanol", "rmd17/malonaldehyde"]


@pytest.fixture(scope="module")
def drifting():
    """Two strongly perturbed copies of a tiny conservative PaiNN, 6 training and 6
    validation frames each: a near-unregularised staged merge overfits them and scores
    worse on validation than the plain average."""
    torch.manual_seed(0)
    data = load_dataset(SYSTEMS)
    base = PaiNN(n_features=8, n_interactions=1, n_rbf=6, cutoff=4.0).double()
    sources = fine_tunes(base, 2, scale=0.3, seed=1)
    train, val = data.split("train"), data.split("val")
    batches = [list(train.for_system(s).subset(6, seed=0).batches(3, 4.0,
                                                                  dtype=torch.float64))
               for s in SYSTEMS]
    vals = [val.for_system(s).subset(6, seed=0) for s in SYSTEMS]
    return sources, batches, vals


def _opts(**kw):
    return ProgressiveOptions(**{"ridge_grid": (1e-8,), "beta_grid": (1.0,), "frames": 6,
                                 "search_frames": 6, "val_frames": 6, **kw})


def test_default_is_never_worse_than_the_average_on_validation(drifting):
    sources, batches, vals = drifting
    average = build_model(sources[0], mean_state_dict(sources))
    err_avg = pooled_errors(average, vals)[0]
    bare = progressive_merge(sources, batches, _opts(anchors=False), val_data=vals,
                             progress=False)
    assert pooled_errors(bare.model, vals)[0] > err_avg  # the staged grid alone is worse

    res = progressive_merge(sources, batches, _opts(), val_data=vals, progress=False)
    o = res.report.options
    err = pooled_errors(res.model, vals)[0]
    assert err <= err_avg
    assert o["val_force_mae_mev_per_a"] == pytest.approx(err, rel=1e-12)
    kinds = [a["kind"] for a in o["anchors_tried"]]
    assert kinds[0] == "average" and kinds.count("one-shot") == 3 * 2  # 3 ridges × β {0, 1}
    ridges = {a["ridge"] for a in o["anchors_tried"] if a["kind"] == "one-shot"}
    assert ridges == {1e-8, 0.1, 1.0}
    every = ([a["val_force_mae_mev_per_a"] for a in o["anchors_tried"]]
             + [p["val_force_mae_mev_per_a"] for p in o["grid"]])
    assert o["val_force_mae_mev_per_a"] == pytest.approx(min(every), rel=1e-12)


def test_one_shot_anchor_equals_a_dense_float64_reference(drifting):
    """An anchor is the mean-prior closed form: per layer (Σ_k X̃ₖᵀX̃ₖ + λI)Θ = Σ_k X̃ₖᵀX̃ₖΘₖ
    + λΘ̄, checked on one layer against a dense float64 solve of the recorded Grams."""
    from gffmerge.collect.batches import default_forward
    from gffmerge.collect.order import layer_order, mergeable_layers
    from gffmerge.collect.progressive import prepare_sources

    sources, batches, _ = drifting
    opts = ProgressiveOptions(energy_refit=False)
    infos = mergeable_layers(sources[0])
    srcs = prepare_sources(sources, batches, frames=None, names=list(infos), tangents=False)
    order = layer_order(build_model(sources[0], mean_state_dict(sources)), srcs[0].batches[0])
    sums = one_shot_sums(srcs, order, infos, tangents=False, frames=None,
                         forward=default_forward, backend="torch")
    run = one_shot_run(sources, srcs, order, infos, sums, opts, ridge=0.1, beta=0.0,
                       frames=None)
    name = next(n for n in order.order if infos[n].has_bias)
    d = infos[name].in_features
    G = sum(s[name].gram for s in sums)
    thetas = []
    for m in sources:
        lin = dict(m.named_modules())[name]
        thetas.append(torch.cat([lin.weight.detach().double().T,
                                 lin.bias.detach().double()[None]]))
    lam = 0.1 * G.trace() / (d + 1)
    rhs = sum(s[name].gram @ t for s, t in zip(sums, thetas)) + lam * sum(thetas) / 2
    want = torch.linalg.solve(G + lam * torch.eye(d + 1, dtype=torch.float64), rhs)
    lin = dict(run.model.named_modules())[name]
    got = torch.cat([lin.weight.detach().double().T, lin.bias.detach().double()[None]])
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_final_worse_than_the_average_falls_back_to_it(drifting, monkeypatch):
    """The search scores on a reduced budget; if the pick, merged on the full budget, then
    scores worse than the average, the average is returned and the report says so."""
    sources, batches, vals = drifting
    mean = mean_state_dict(sources)
    calls = []

    def fake(model, val_sets):  # every candidate beats the average, the final one does not
        calls.append(model)
        is_avg = all(torch.equal(v, mean[k]) for k, v in model.state_dict().items()
                     if k != "atomic_energies")
        f = 100.0 if is_avg else 50.0 if len(calls) <= 9 else 200.0
        return [{"force_mae_mev_per_a": f, "energy_mae_mev_per_atom": 0.0, "atoms": 9,
                 "frames": 1}] * len(val_sets)

    monkeypatch.setattr(prog, "system_errors", fake)
    with pytest.warns(UserWarning, match="average is returned"):  # told, not only recorded
        res = progressive_merge(sources, batches, _opts(search_frames=3), val_data=vals,
                                progress=False)
    o = res.report.options
    assert o["chosen"] == "average" and o["fallback"] and "average" in o["fallback"]
    assert any("average is returned" in w for w in res.report.warnings)
    for k, v in res.model.state_dict().items():
        if k != "atomic_energies":
            torch.testing.assert_close(v, mean[k], rtol=0, atol=0)


def test_anchor_options_are_validated():
    with pytest.raises(ValueError, match="nothing to merge"):
        ProgressiveOptions(staged="off", anchors=False)
    with pytest.raises(ValueError, match="staged="):
        ProgressiveOptions(staged="some")
    with pytest.raises(ValueError, match="anchor_ridges"):
        ProgressiveOptions(anchor_ridges=(-1.0,))
    assert ProgressiveOptions(anchor_ridges=()).anchor_ridges == ()
    assert ProgressiveOptions().staged_points(PaiNN(cutoff=4.0)) == "grid"


def test_staged_one_tries_one_point_at_the_best_anchor(drifting):
    sources, batches, vals = drifting
    res = progressive_merge(sources, batches, _opts(staged="one", ridge_grid=(1e-8, 0.1)),
                            val_data=vals, progress=False)
    o = res.report.options
    assert o["staged_search"] == "one" and len(o["grid"]) == 1
    shots = [a for a in o["anchors_tried"] if a["kind"] == "one-shot"
             and a["ridge"] in (1e-8, 0.1)]
    best = min(shots, key=lambda a: a["val_force_mae_mev_per_a"])
    assert (o["grid"][0]["ridge"], o["grid"][0]["beta"]) == (best["ridge"], best["beta"])


def test_merge_keeps_the_methods_own_total_time(drifting):
    """``merge`` adds its measuring time to a method's own end-to-end total (progressive
    measures inside the method, so the total must not collapse to zero)."""
    import gffmerge

    sources, batches, vals = drifting
    res = gffmerge.merge(sources, batches, method="progressive", val_data=vals,
                         progress=False, ridge_grid=(1e-8,), beta_grid=(1.0,), frames=6,
                         search_frames=6, val_frames=6)
    t = res.report.times
    assert t["total"] >= t["search"] + t["merge"] > 0
