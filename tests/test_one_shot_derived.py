"""One-shot sums derive the targets' sums of affine layers from their Grams and weights
(``stage_sums(None, ..., cross="auto")``): ``Σ x̃ yᵀ = G̃ Θᵀ``, ``Σ ‖y‖² = tr(Θ G̃ Θᵀ)``,
``Σ ẋ ẏᵀ = Gₜ Wᵀ``, ``Σ ‖ẏ‖² = tr(W Gₜ Wᵀ)``. Checked against the measured route
(products with the recorded outputs, ``cross="measured"``) on random models with tangent
rows: float64 to 1e-10, float32 to its own rounding; layers whose recorded output is not
their affine map keep the measured route; the progressive default picks the same point."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from gffmerge.collect import progressive as collect_progressive
from gffmerge.collect.order import mergeable_layers
from gffmerge.collect.progressive import derives_targets, prepare_sources, stage_sums
from gffmerge.data import load_dataset
from gffmerge.models.gns import GNS
from gffmerge.models.layers import EdgeConcatLinear
from gffmerge.models.painn import PaiNN
from gffmerge.models.schnet import SchNet
from gffmerge.testing import fine_tunes

SYSTEM = "rmd17/ethanol"


@pytest.fixture(scope="module")
def train():
    return load_dataset([SYSTEM]).split("train")


def _model(name: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    base = {"gns": lambda: GNS(latent_dim=8, hidden_dim=8, n_layers=2, n_rbf=6, cutoff=4.0),
            "painn": lambda: PaiNN(n_features=8, n_interactions=2, n_rbf=6, cutoff=4.0),
            "schnet": lambda: SchNet(n_atom_basis=8, n_filters=8, n_interactions=2, n_rbf=6,
                                     cutoff=4.0)}[name]()
    # perturbed so that no weight or bias is left at a zero initialisation
    return fine_tunes(base, 1, scale=0.1, seed=1)[0].to(dtype).eval()


def _sums(model, train, dtype, *, norms: bool = False, **kw):
    infos = mergeable_layers(model, norms=norms)
    names = list(infos)
    batches = list(train.subset(6, seed=0).batches(3, 4.0, dtype=dtype))
    out = {}
    for route in ("auto", "measured"):
        srcs = prepare_sources([model], [batches], frames=None, names=names, tangents=True,
                               draws=2, seed=5, outputs=False)
        out[route] = stage_sums(None, srcs, names, infos, tangents=True, cross=route,
                                **kw)[0]
    return names, out["auto"], out["measured"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("name", ["gns", "painn", "schnet"])
@pytest.mark.parametrize("structured", [True, False])
def test_derived_target_sums_equal_the_measured_ones_in_float64(train, name, structured):
    model = _model(name, torch.float64)
    names, fast, ref = _sums(model, train, torch.float64, structured=structured)
    modules = dict(model.named_modules())
    derived = [n for n in names if fast[n].route == "derived"]
    assert derived == [n for n in names if derives_targets(modules[n])]
    assert len(derived) == len(names)  # every layer of these models is a plain affine map
    if name == "gns":
        assert any(isinstance(modules[n], EdgeConcatLinear) for n in derived)
    for n in names:
        a, b = fast[n], ref[n]
        assert b.route == "measured"
        assert (a.rows, a.trows) == (b.rows, b.trows) and a.rows > 0 and a.trows > 0, n
        assert _rel(a.gram, b.gram) <= 1e-12 and _rel(a.tgram, b.tgram) <= 1e-12, n
        assert b.cross.abs().max() > 0, n
        assert _rel(a.cross, b.cross) <= 1e-10, n
        assert a.ysq == pytest.approx(b.ysq, rel=1e-10, abs=0), n
        if b.tcross.abs().max() > 0:
            assert _rel(a.tcross, b.tcross) <= 1e-10, n
            assert a.tysq == pytest.approx(b.tysq, rel=1e-10, abs=0), n
        else:  # rows that do not depend on the positions: nothing on either route
            assert a.tcross.abs().max() == 0 and a.tysq == b.tysq == 0, n
    assert sum(bool(ref[n].tcross.abs().max() > 0) for n in names) > len(names) // 2


@pytest.mark.parametrize("name", ["gns", "painn", "schnet"])
def test_derived_target_sums_match_a_float32_model_to_its_rounding(train, name):
    """The derived sums are the exact sums of ``Θ x̃``; the measured ones carry the float32
    rounding of the model's ``y`` (one float32 product per entry, ~1e-7 relative)."""
    model = _model(name, torch.float32)
    names, fast, ref = _sums(model, train, torch.float32)
    for n in names:
        a, b = fast[n], ref[n]
        assert a.route == "derived" and b.route == "measured", n
        assert _rel(a.cross, b.cross) <= 1e-6, n
        assert a.ysq == pytest.approx(b.ysq, rel=1e-6), n
        if b.tcross.abs().max() > 0:
            assert _rel(a.tcross, b.tcross) <= 1e-6, n
            assert a.tysq == pytest.approx(b.tysq, rel=1e-6), n


def test_layers_whose_output_is_not_their_affine_map_keep_the_measured_route(train):
    """A forward hook changing a layer's output (here a post-activation) and an affine
    LayerNorm (``norms``) keep their measured sums, equal to the measured route's exactly;
    the derived sums of the hooked layer would be wrong."""
    model = _model("gns", torch.float64)
    names = list(mergeable_layers(model))
    hooked = names[1]
    modules = dict(model.named_modules())
    handle = modules[hooked].register_forward_hook(lambda m, a, out: torch.tanh(out))
    try:
        assert not derives_targets(modules[hooked])
        names, fast, ref = _sums(model, train, torch.float64, norms=True)
    finally:
        handle.remove()
    norms = [n for n in names if isinstance(modules[n], nn.LayerNorm)]
    assert norms and hooked in names
    for n in [hooked, *norms]:
        a, b = fast[n], ref[n]
        assert a.route == "measured", n
        for x, y in ((a.cross, b.cross), (a.tcross, b.tcross)):
            assert torch.equal(x, y), n
        assert (a.ysq, a.tysq) == (b.ysq, b.tysq), n
    wrong = fast[hooked]
    collect_progressive.derive_targets(wrong, modules[hooked])
    assert _rel(wrong.cross, ref[hooked].cross) > 1e-3
    assert all(fast[n].route == "derived" for n in names if n not in {hooked, *norms})


def test_route_is_checked_and_added_sums_say_mixed():
    with pytest.raises(ValueError, match="cross must be one of"):
        stage_sums(None, [], [], {}, cross="derived")
    a = collect_progressive.LayerSums.empty(2, 1, False, None)
    b = collect_progressive.LayerSums.empty(2, 1, False, None)
    b.route = "derived"
    assert (a + a).route == "measured" and (b + b).route == "derived"
    assert (a + b).route == "mixed"


def test_progressive_default_chooses_the_same_point_with_derived_sums(monkeypatch):
    """The default merge scores the same anchors and grid points (validation errors to
    1e-8) and picks the same one whether the one-shot sums are derived or measured."""
    from gffmerge.methods import _progressive_anchors as anchors
    from gffmerge.methods import progressive as prog

    systems = ["rmd17/ethanol", "rmd17/malonaldehyde"]
    data = load_dataset(systems)
    torch.manual_seed(0)
    base = PaiNN(n_features=8, n_interactions=1, n_rbf=6, cutoff=4.0).double()
    sources = fine_tunes(base, 2, scale=0.3, seed=1)
    tr, val = data.split("train"), data.split("val")
    batches = [list(tr.for_system(s).subset(6, seed=0).batches(3, 4.0, dtype=torch.float64))
               for s in systems]
    vals = [val.for_system(s).subset(6, seed=0) for s in systems]
    opts = prog.ProgressiveOptions(ridge_grid=(1e-8,), beta_grid=(1.0,), frames=6,
                                   search_frames=6, val_frames=6)

    derived = []
    derive = collect_progressive.derive_targets
    monkeypatch.setattr(collect_progressive, "derive_targets",
                        lambda s, m: (derived.append(1), derive(s, m)))

    def run():
        derived.clear()
        return (prog.progressive_merge(sources, batches, opts, val_data=vals,
                                       progress=False).report.options, len(derived))

    auto, n_auto = run()
    measured = functools.partial(collect_progressive.stage_sums, cross="measured")
    monkeypatch.setattr(anchors, "stage_sums", measured)
    monkeypatch.setattr(prog, "stage_sums", measured)
    ref, n_ref = run()
    assert n_auto > 0 and n_ref == 0  # the anchors' sums took either route
    for key in ("chosen", "chosen_ridge", "chosen_beta"):
        assert auto[key] == ref[key], key
    tried = [(a, b) for a, b in zip(auto["anchors_tried"], ref["anchors_tried"], strict=True)]
    assert sum(a["kind"] == "one-shot" for a, _ in tried) >= 4
    for a, b in tried:
        assert (a["kind"], a["ridge"], a["beta"]) == (b["kind"], b["ridge"], b["beta"])
        assert a["val_force_mae_mev_per_a"] == pytest.approx(b["val_force_mae_mev_per_a"],
                                                             rel=1e-8)
    assert auto["val_force_mae_mev_per_a"] == pytest.approx(ref["val_force_mae_mev_per_a"],
                                                            rel=1e-8)
