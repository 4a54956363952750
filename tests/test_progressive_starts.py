"""Task-vector starts of the progressive default: with the foundation given, the search
also scores the foundation, task arithmetic and TIES, and runs the closed form from the
best of them (beginning from it, shrinking toward it)."""

from __future__ import annotations

import warnings

import pytest
import torch

import gffmerge
from gffmerge import methods
from gffmerge.evaluate import combine_errors, system_errors
from gffmerge.methods import progressive as prog
from gffmerge.methods._progressive_anchors import (
    TA_LAMS,
    TIES_DENSITIES,
    TIES_LAMS,
    WTA_LAMS,
    one_shot_run,
    one_shot_sums,
    weighted_task_arithmetic,
)
from gffmerge.methods.progressive import ProgressiveOptions, progressive_merge
from gffmerge.models.painn import PaiNN
from gffmerge.solver import build_model, mean_state_dict
from gffmerge.testing import fine_tunes

SYSTEMS = ["rmd17/ethanol", "rmd17/malonaldehyde"]


@pytest.fixture(scope="module")
def pair():
    """A tiny conservative PaiNN (the base) and two strongly perturbed fine-tunes of it, 6
    training and 6 validation frames per system."""
    from gffmerge.data import load_dataset

    torch.manual_seed(0)
    data = load_dataset(SYSTEMS)
    base = PaiNN(n_features=8, n_interactions=1, n_rbf=6, cutoff=4.0).double()
    sources = fine_tunes(base, 2, scale=0.3, seed=1)
    train, val = data.split("train"), data.split("val")
    batches = [list(train.for_system(s).subset(6, seed=0).batches(3, 4.0,
                                                                  dtype=torch.float64))
               for s in SYSTEMS]
    vals = [val.for_system(s).subset(6, seed=0) for s in SYSTEMS]
    return base, sources, batches, vals


def _opts(**kw):
    return ProgressiveOptions(**{"ridge_grid": (1e-8,), "beta_grid": (1.0,), "frames": 6,
                                 "search_frames": 6, "val_frames": 6, **kw})


def _score(model, vals):
    return combine_errors(system_errors(model, vals), "per_system")[0]


def test_starts_are_scored_and_the_pick_is_the_best_candidate(pair):
    base, sources, batches, vals = pair
    res = progressive_merge(sources, batches, _opts(), val_data=vals, progress=False,
                            base=base)
    o = res.report.options
    tried = o["anchors_tried"]
    kinds = [a["kind"] for a in tried]
    assert kinds.count("base") == 1
    assert kinds.count("task_arithmetic") == len(TA_LAMS)
    assert kinds.count("ties") == len(TIES_LAMS) + len(TIES_DENSITIES) - 1
    # one λ per source: each source by itself first, then the coordinate search
    weighted = [a for a in tried if a["kind"] in ("source", "weighted_task_arithmetic")]
    assert [a["kind"] for a in weighted[:2]] == ["source", "source"]
    assert [a["params"]["lams"] for a in weighted[:2]] == [[1.0, 0.0], [0.0, 1.0]]
    assert len({tuple(a["params"]["lams"]) for a in weighted}) == len(weighted)
    assert all(a["kind"] == "weighted_task_arithmetic" for a in weighted[2:])
    for k, a in enumerate(weighted[:2]):
        assert a["val_force_mae_mev_per_a"] == pytest.approx(_score(sources[k], vals),
                                                             rel=1e-9)
    # each start scored as the registered method would merge it, on the same frames
    a = next(a for a in tried if a["kind"] == "base")
    assert a["val_force_mae_mev_per_a"] == pytest.approx(_score(base, vals), rel=1e-12)
    for kind in ("ties", "task_arithmetic"):
        a = next(a for a in tried if a["kind"] == kind)
        merged = methods.get(kind)(sources, base=base, **a["params"]).model
        assert a["val_force_mae_mev_per_a"] == pytest.approx(_score(merged, vals), rel=1e-12)
    # the best start is the second start of the one-shot closed form
    best_kind = min((a for a in tried if a["kind"] in ("base", "task_arithmetic", "ties",
                                                         "source", "weighted_task_arithmetic")),
                    key=lambda a: a["val_force_mae_mev_per_a"])["kind"]
    assert o["starts_tried"] == [best_kind]
    shots = {a["start"] for a in tried if a["kind"] == "one-shot"}
    assert shots == {"mean", best_kind}
    every = ([a["val_force_mae_mev_per_a"] for a in tried]
             + [p["val_force_mae_mev_per_a"] for p in o["grid"]])
    assert o["val_force_mae_mev_per_a"] == pytest.approx(min(every), rel=1e-12)
    assert o["val_force_mae_mev_per_a"] == pytest.approx(_score(res.model, vals), rel=1e-12)
    picked = next(line for line in res.report.to_markdown().splitlines()
                  if line.startswith("Picked on validation: "))
    assert f"among {len(tried) + len(o['grid'])} candidates" in picked
    # every layer of PaiNN is a plain affine one: one-shot targets come from the Grams
    assert o["one_shot_targets"]["measured"] == 0 and o["one_shot_targets"]["derived"] > 0


def test_without_a_base_or_with_starts_off_the_mean_is_the_only_start(pair):
    base, sources, batches, vals = pair
    for kw in ({}, {"base": base}):
        opts = _opts(starts="off") if kw else _opts()
        o = progressive_merge(sources, batches, opts, val_data=vals, progress=False,
                              **kw).report.options
        assert o["starts_tried"] == []
        assert {a["kind"] for a in o["anchors_tried"]} == {"average", "one-shot"}
        assert {a["start"] for a in o["anchors_tried"]} == {"mean"}
    with pytest.raises(ValueError, match="starts="):
        ProgressiveOptions(starts="ties")


def _theta(model, name):
    lin = dict(model.named_modules())[name]
    return torch.cat([lin.weight.detach().double().T, lin.bias.detach().double()[None]])


def test_one_shot_from_a_start_shrinks_toward_it(pair):
    """From a start S: per layer (Σ_k X̃ₖᵀX̃ₖ + λI)Θ = Σ_k X̃ₖᵀX̃ₖΘₖ + λΘ_S (dense float64
    reference); parameters no solve reaches are S's; a huge ridge returns S's layers."""
    from gffmerge.collect.batches import default_forward
    from gffmerge.collect.order import layer_order, mergeable_layers
    from gffmerge.collect.progressive import prepare_sources

    base, sources, batches, _ = pair
    start = methods.get("ties")(sources, base=base, density=0.2, lam=1.0).model
    opts = ProgressiveOptions(energy_refit=False)
    infos = mergeable_layers(sources[0])
    srcs = prepare_sources(sources, batches, frames=None, names=list(infos), tangents=False)
    order = layer_order(build_model(sources[0], mean_state_dict(sources)), srcs[0].batches[0])
    sums = one_shot_sums(srcs, order, infos, tangents=False, frames=None,
                         forward=default_forward, backend="torch")
    run = one_shot_run(sources, srcs, order, infos, sums, opts, ridge=0.1, beta=0.0,
                       frames=None, start=start)
    name = next(n for n in order.order if infos[n].has_bias)
    d = infos[name].in_features
    G = sum(s[name].gram for s in sums)
    lam = 0.1 * G.trace() / (d + 1)
    rhs = (sum(s[name].gram @ _theta(m, name) for s, m in zip(sums, sources))
           + lam * _theta(start, name))
    want = torch.linalg.solve(G + lam * torch.eye(d + 1, dtype=torch.float64), rhs)
    torch.testing.assert_close(_theta(run.model, name), want, rtol=1e-8, atol=1e-10)
    solved = {lr.name for lr in run.layers if lr.solved}
    state, ref = run.model.state_dict(), start.state_dict()
    untouched = [k for k in state if k.rsplit(".", 1)[0] not in solved]
    assert untouched and all(torch.equal(state[k], ref[k]) for k in untouched)
    far = one_shot_run(sources, srcs, order, infos, sums, opts, ridge=1e12, beta=0.0,
                       frames=None, start=start)
    from gffmerge.solver.stage import module_theta

    for n in solved:
        aug = infos[n].has_bias
        torch.testing.assert_close(module_theta(far.model, n, aug), module_theta(start, n, aug),
                                   rtol=1e-6, atol=1e-9)


def _fake_errors(base_state, mean_state, scores, final, others=()):
    """``system_errors`` giving the base, the average and every other candidate the
    scores ``scores``, the last one raised to 200 once ``final`` is set; ``others``:
    (state, score) pairs for given models."""
    def same(model, state):
        return all(torch.equal(v, state[k]) for k, v in model.state_dict().items()
                   if k != "atomic_energies")

    def fake(model, val_sets):
        f = next((g for state, g in others if same(model, state)), None)
        if f is None:
            f = (scores[0] if same(model, base_state) else scores[1]
                 if same(model, mean_state) else 200.0 if final else scores[2])
        return [{"force_mae_mev_per_a": f, "energy_mae_mev_per_atom": 0.0, "atoms": 9,
                 "frames": 1}] * len(val_sets)
    return fake


def test_a_start_that_scores_best_is_returned_and_told(pair, monkeypatch):
    base, sources, batches, vals = pair
    fake = _fake_errors(base.state_dict(), mean_state_dict(sources), (10.0, 100.0, 50.0), [])
    monkeypatch.setattr(prog, "system_errors", fake)
    with pytest.warns(UserWarning, match=r"foundation \(base\) itself scored best"):
        res = progressive_merge(sources, batches, _opts(search_frames=3), val_data=vals,
                                progress=False, base=base)
    o = res.report.options
    assert o["chosen"] == "base" and o["chosen_ridge"] is None and not o["fallback"]
    for k, v in res.model.state_dict().items():
        if k != "atomic_energies":
            torch.testing.assert_close(v, base.state_dict()[k], rtol=0, atol=0)
    text = res.report.to_markdown()
    assert "Picked on validation: the foundation (score 10, per_system), among" in text
    assert "foundation (base) itself scored best" in text


def test_return_base_false_returns_the_best_merge(pair, monkeypatch):
    """With return_base=False the foundation still scores (and may start the closed form)
    but the best candidate other than it is returned, with no warning about it."""
    base, sources, batches, vals = pair
    ta = methods.get("task_arithmetic")(sources, base=base, lam=TA_LAMS[1]).model
    fake = _fake_errors(base.state_dict(), mean_state_dict(sources), (10.0, 100.0, 50.0), [],
                        others=[(ta.state_dict(), 20.0)])
    monkeypatch.setattr(prog, "system_errors", fake)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        res = progressive_merge(sources, batches, _opts(search_frames=3, return_base=False),
                                val_data=vals, progress=False, base=base)
    o = res.report.options
    # the base is the best start of the closed form, task arithmetic the best candidate
    assert o["chosen"] == "task_arithmetic" and o["starts_tried"] == ["base"]
    assert any(a["kind"] == "base" for a in o["anchors_tried"])
    assert o["val_force_mae_mev_per_a"] == 20.0
    got = res.model.state_dict()
    for k, v in ta.state_dict().items():
        if k != "atomic_energies":
            torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="return_base"):
        ProgressiveOptions(return_base="no")


def test_final_worse_than_a_start_falls_back_to_it(pair, monkeypatch):
    """The search scores on a reduced budget; if its pick, merged on the full budget, then
    scores worse than the best start (here task arithmetic at its first λ, better than the
    base and the average), that start is returned and the report says so."""
    base, sources, batches, vals = pair
    final: list[bool] = []
    for name in ("one_shot_sums", "_merge_once"):
        real = getattr(prog, name)

        def spy(*a, _real=real, **kw):
            if kw.get("frames") == 6:  # the full budget: the final merge
                final.append(True)
            return _real(*a, **kw)
        monkeypatch.setattr(prog, name, spy)
    fake = _fake_errors(base.state_dict(), mean_state_dict(sources), (40.0, 100.0, 30.0),
                        final)
    monkeypatch.setattr(prog, "system_errors", fake)
    with pytest.warns(UserWarning, match="the task_arithmetic start is returned"):
        res = progressive_merge(sources, batches, _opts(search_frames=3), val_data=vals,
                                progress=False, base=base)
    o = res.report.options
    assert final and o["chosen"] == "task_arithmetic"
    assert "worse than the task_arithmetic start's 30" in o["fallback"]
    want = methods.get("task_arithmetic")(sources, base=base, lam=TA_LAMS[0]).model
    got = res.model.state_dict()
    for k, v in want.state_dict().items():
        if k != "atomic_energies":
            torch.testing.assert_close(got[k], v, rtol=0, atol=0)


def test_merge_hands_the_base_to_the_default(pair):
    base, sources, batches, vals = pair
    kw = dict(val_data=vals, progress=False, ridge_grid=(1e-8,), beta_grid=(1.0,), frames=6,
              search_frames=6, val_frames=6)
    with_base = gffmerge.merge(sources, batches, base=base, **kw).report.options
    without = gffmerge.merge(sources, batches, **kw).report.options
    assert with_base["starts_tried"] and not without["starts_tried"]


def test_alternatives_are_the_best_of_every_other_family(pair):
    base, sources, batches, vals = pair
    plain = progressive_merge(sources, batches, _opts(), val_data=vals, progress=False,
                              base=base)
    res = progressive_merge(sources, batches, _opts(alternatives=True), val_data=vals,
                            progress=False, base=base)
    assert plain.alternatives == {} and plain.report.options["alternatives"] == {}
    for k, v in plain.model.state_dict().items():  # the pick is not changed by asking
        torch.testing.assert_close(res.model.state_dict()[k], v, rtol=0, atol=0)
    o = res.report.options
    scored = [(("start", a["kind"]) if a["kind"] not in ("average", "one-shot")
               else ("average",) if a["kind"] == "average"
               else ("one-shot", a["ridge"], a["beta"], a["start"]),
               a["val_force_mae_mev_per_a"]) for a in o["anchors_tried"]]
    scored += [(("progressive", p["ridge"], p["beta"], p["start"]),
                p["val_force_mae_mev_per_a"]) for p in o["grid"]]
    families = {}
    for key, val in scored:
        fam = prog._family(key)
        families[fam] = min(families.get(fam, val), val)
    chosen = ("start", o["chosen"]) if o["chosen"] in ("base", "ties", "task_arithmetic",
                                                       "source", "weighted_task_arithmetic") \
        else ("average",) if o["chosen"] == "average" \
        else (o["chosen"], o["chosen_ridge"], o["chosen_beta"], o["chosen_start"])
    assert set(res.alternatives) == set(families) - {prog._family(chosen)}
    assert len(res.alternatives) >= 3 and set(o["alternatives"]) == set(res.alternatives)
    for label, model in res.alternatives.items():
        rec = o["alternatives"][label]
        assert rec["val_force_mae_mev_per_a"] == families[label]
        assert prog._family(tuple(rec["key"])) == label
        # the model handed back is the candidate that was scored
        assert _score(model, vals) == pytest.approx(families[label], rel=1e-9)
    if "foundation" in res.alternatives:
        for k, v in base.state_dict().items():
            if k != "atomic_energies":
                torch.testing.assert_close(res.alternatives["foundation"].state_dict()[k], v,
                                           rtol=0, atol=0)
    assert res.report.times["alternatives"] >= 0


def test_weighted_task_arithmetic_searches_one_lambda_per_source(pair):
    """Each source alone first, then coordinate moves over WTA_LAMS from the best point so
    far: on a score with its minimum at (0.3, 1.0) the search ends there."""
    base, sources, _, _ = pair
    from gffmerge.methods._task_vectors import task_vectors

    theta0, tau = task_vectors(sources, base)
    calls = []

    def score(kind, model, lams):
        assert kind == ("source" if sorted(lams) == [0.0, 1.0] else "weighted_task_arithmetic")
        want = {k: theta0[k] + sum(lam * t[i] for i, lam in enumerate(lams))
                for k, t in tau.items()}
        got = model.state_dict()
        for k, v in want.items():
            torch.testing.assert_close(got[k], v.to(got[k].dtype), rtol=1e-12, atol=1e-12)
        calls.append(tuple(lams))
        return (lams[0] - 0.3) ** 2 + (lams[1] - 1.0) ** 2
    weighted_task_arithmetic(sources, theta0, tau, score, {(0.8, 0.8): 10.0})
    assert calls[:2] == [(1.0, 0.0), (0.0, 1.0)]
    assert len(calls) == len(set(calls))
    assert min(calls, key=lambda c: (c[0] - 0.3) ** 2 + (c[1] - 1.0) ** 2) == (0.3, 1.0)
    assert all(v in WTA_LAMS for c in calls for v in c)
    assert (0.0, 0.0) not in calls  # the foundation is scored as itself, not here


def test_a_source_that_scores_best_is_returned_and_told(pair, monkeypatch):
    base, sources, batches, vals = pair
    target = sources[1].state_dict()

    def fake(model, val_sets):
        state = model.state_dict()
        near = all(torch.allclose(v, target[k], rtol=0, atol=1e-12)
                   for k, v in state.items() if k != "atomic_energies")
        f = 5.0 if near else 50.0
        return [{"force_mae_mev_per_a": f, "energy_mae_mev_per_atom": 0.0, "atoms": 9,
                 "frames": 1}] * len(val_sets)
    monkeypatch.setattr(prog, "system_errors", fake)
    with pytest.warns(UserWarning, match=r"source 1 \(b\) by itself scored best"):
        res = progressive_merge(sources, batches, _opts(search_frames=3), val_data=vals,
                                progress=False, base=base, labels=["a", "b"])
    o = res.report.options
    assert o["chosen"] == "source" and o["val_force_mae_mev_per_a"] == 5.0
    for k, v in res.model.state_dict().items():
        if k != "atomic_energies":
            torch.testing.assert_close(v, target[k], rtol=0, atol=1e-12)
    # return_base=False: no source by itself (nor the foundation) is returned, and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        res = progressive_merge(sources, batches, _opts(search_frames=3, return_base=False),
                                val_data=vals, progress=False, base=base)
    assert res.report.options["chosen"] not in ("source", "base")
    assert res.report.options["val_force_mae_mev_per_a"] == 50.0
