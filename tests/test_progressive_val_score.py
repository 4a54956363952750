"""The validation score of the progressive search: per system (each system counts once,
the default) or pooled over force components (larger cells weigh more)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gffmerge.collect.holdout import agreement_error
from gffmerge.data import load_dataset
from gffmerge.evaluate import combine_errors, system_errors
from gffmerge.methods import progressive as prog
from gffmerge.methods.progressive import ProgressiveOptions, progressive_merge
from gffmerge.models.painn import PaiNN
from gffmerge.testing import fine_tunes

SYSTEMS = ["rmd17/ethanol", "rmd17/azobenzene"]  # 9 and 24 atoms per frame


def _row(force: float, energy: float, atoms: int, frames: int) -> dict[str, float]:
    return {"force_mae_mev_per_a": force, "energy_mae_mev_per_atom": energy,
            "atoms": atoms, "frames": frames}


def test_combine_errors_on_a_hand_made_case():
    rows = [_row(10.0, 1.0, atoms=100, frames=10), _row(40.0, 4.0, atoms=10, frames=30)]
    assert combine_errors(rows, "per_system") == pytest.approx((25.0, 2.5), rel=1e-15)
    assert combine_errors(rows) == combine_errors(rows, "per_system")  # the default
    f, e = combine_errors(rows, "pooled")
    assert f == pytest.approx((10.0 * 100 + 40.0 * 10) / 110, rel=1e-15)
    assert e == pytest.approx((1.0 * 10 + 4.0 * 30) / 40, rel=1e-15)
    with pytest.raises(ValueError, match="per_system"):
        combine_errors(rows, "median")
    with pytest.raises(ValueError, match="no validation sets"):
        combine_errors([], "pooled")
    with pytest.raises(ValueError, match="val_score"):
        ProgressiveOptions(val_score="median")


@pytest.fixture(scope="module")
def two_sizes():
    torch.manual_seed(0)
    data = load_dataset(SYSTEMS).split("val")
    vals = [data.for_system(s).subset(3, seed=0) for s in SYSTEMS]
    model = PaiNN(n_features=8, n_interactions=1, n_rbf=6, cutoff=4.0).double()
    return model, vals


def test_system_errors_match_a_float64_reference(two_sizes):
    """Per-system force MAE from the model's forces frame by frame, in float64 (no
    evaluate()), then both scores by hand."""
    model, vals = two_sizes
    totals, comps = [], []
    for ds in vals:
        t = c = 0.0
        for batch in ds.batches(1, model.cutoff, dtype=torch.float64):
            with torch.enable_grad():
                forces = model(batch)["forces"].detach()
            t += (forces - batch.forces).abs().sum().item()
            c += forces.numel()
        totals.append(t)
        comps.append(c)
    assert comps[0] != comps[1]  # the two systems differ in size
    per = [1000.0 * t / c for t, c in zip(totals, comps)]
    rows = system_errors(model, vals)
    torch.testing.assert_close([r["force_mae_mev_per_a"] for r in rows], per, rtol=1e-10,
                               atol=0)
    assert combine_errors(rows, "per_system")[0] == pytest.approx(sum(per) / 2, rel=1e-10)
    assert combine_errors(rows, "pooled")[0] == pytest.approx(
        1000.0 * sum(totals) / sum(comps), rel=1e-10)


def test_agreement_error_per_source_and_pooled():
    torch.manual_seed(0)
    model, a, b = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)
    held = [[torch.randn(5, 3)], [torch.randn(2, 3), torch.randn(1, 3)]]
    with torch.no_grad():
        d = [[(model(x).double() - src(x).double()).abs() for x in batches]
             for src, batches in zip((a, b), held)]
    sums = [sum(t.sum().item() for t in ds) for ds in d]
    counts = [sum(t.numel() for t in ds) for ds in d]
    assert agreement_error(model, [a, b], held, how="per_system") == pytest.approx(
        (sums[0] / counts[0] + sums[1] / counts[1]) / 2, rel=1e-12)
    assert agreement_error(model, [a, b], held) == pytest.approx(
        sum(sums) / sum(counts), rel=1e-12)


def _scripted(monkeypatch, atoms: tuple[int, int]) -> None:
    """Candidates in the order the search scores them (average, one-shot β 0, one-shot
    β 1) get scripted per-system force MAEs; ``atoms`` is each system's atom count."""
    script = [(100.0, 100.0), (60.0, 104.0), (95.0, 95.0)]
    seen: dict[int, tuple[float, float]] = {}

    def fake(model, val_sets):
        f = seen.setdefault(id(model), script[min(len(seen), len(script) - 1)])
        return [_row(f[k], 0.0, atoms=atoms[k], frames=2) for k in range(len(val_sets))]
    monkeypatch.setattr(prog, "system_errors", fake)


@pytest.mark.parametrize("atoms", [(28, 28), (28, 2800)])
def test_the_pooled_choice_follows_the_system_with_more_atoms(two_sizes, monkeypatch, atoms):
    """One candidate is much better on system 0 and a little worse on system 1, the other
    a little better on both: per system picks the first whatever the atom counts; pooled
    picks it too with equal counts, and the second once system 1 dominates the atoms."""
    base, vals = two_sizes
    sources = fine_tunes(base, 2, scale=0.1, seed=1)
    data = load_dataset(SYSTEMS).split("train")
    batches = [list(data.for_system(s).subset(2, seed=0).batches(2, 4.0,
                                                                 dtype=torch.float64))
               for s in SYSTEMS]
    opts = {"ridge_grid": (1e-8,), "beta_grid": (1.0,), "anchor_ridges": (), "staged": "off",
            "frames": 2, "search_frames": 2, "val_frames": 3}
    chosen = {}
    for how in ("per_system", "pooled"):
        _scripted(monkeypatch, atoms)
        res = progressive_merge(sources, batches, val_data=vals, progress=False,
                                val_score=how, **opts)
        o = res.report.options
        chosen[how] = (o["chosen"], o["chosen_beta"])
        assert o["val_score"] == how
        assert [a["val_force_mae_per_system"] for a in o["anchors_tried"]] == [
            [100.0, 100.0], [60.0, 104.0], [95.0, 95.0]]
        scores = [a["val_force_mae_mev_per_a"] for a in o["anchors_tried"]]
        w = (atoms[0] / sum(atoms), atoms[1] / sum(atoms)) if how == "pooled" else (0.5, 0.5)
        want = [w[0] * f0 + w[1] * f1 for f0, f1 in ([100, 100], [60, 104], [95, 95])]
        assert scores == pytest.approx(want, rel=1e-12)
        assert o["val_force_mae_mev_per_a"] == pytest.approx(min(want), rel=1e-12)
    assert chosen["per_system"] == ("one-shot", 0.0)
    assert chosen["pooled"] == (("one-shot", 0.0) if atoms[0] == atoms[1] else ("one-shot", 1.0))
