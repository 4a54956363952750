"""Force-aware statistics: forward-mode tangents of layer inputs along displacements."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from gffmerge.architecture import linear_layers
from gffmerge.collect.progressive import prepare_sources, run_recording, stage_sums
from gffmerge.collect.tangents import directions, is_conservative
from gffmerge.data import load_dataset
from gffmerge.models.base import ForceField
from gffmerge.models.layers import CosineCutoff, GaussianRBF
from gffmerge.models.painn import PaiNN


class LinearInFeatures(ForceField):
    """``E = Σ_i head(φ_i)`` with fixed radial features ``φ_i = Σ_j rbf(r_ij) fc(r_ij)``:
    a force field linear in its features."""

    name = "linear-in-features"
    conservative = True

    def __init__(self, n_rbf: int = 10, cutoff: float = 4.0):
        super().__init__(cutoff=cutoff)
        self.rbf = GaussianRBF(n_rbf, cutoff)
        self.fc = CosineCutoff(cutoff)
        self.head = nn.Linear(n_rbf, 1)

    def atomwise(self, batch, direct_forces):
        r = batch.edge_vectors().norm(dim=-1)
        f = self.rbf(r) * self.fc(r).unsqueeze(-1)
        phi = f.new_zeros(batch.num_atoms, f.shape[1]).index_add_(0, batch.edge_index[1], f)
        return self.head(phi).squeeze(-1), None


@pytest.fixture(scope="module")
def frames():
    ds = load_dataset(["rmd17/ethanol"]).split("train").subset(6, seed=0)
    return ds


def _batches(ds, cutoff, size=3):
    return list(ds.batches(size, cutoff, dtype=torch.float64))


def test_directions_are_unit_per_frame_and_seeded(frames):
    batch = _batches(frames, 4.0)[0]
    u = directions(batch, "random", seed=3)
    norms = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(
        0, batch.batch, u.square().sum(1))
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert torch.equal(u, directions(batch, "random", seed=3))
    assert not torch.equal(u, directions(batch, "random", seed=4))
    f = directions(batch, "force")
    cos = (f * batch.forces).sum() / (f.norm() * batch.forces.norm())
    assert cos > 0.99 or batch.num_graphs > 1  # per-frame normalisation changes weights
    per_frame = (f * batch.forces).sum(1)
    assert (per_frame >= 0).all()
    with pytest.raises(ValueError, match="directions must be"):
        directions(batch, "sideways")


def test_conservative_flag():
    assert is_conservative(PaiNN(n_features=8, n_interactions=1))
    assert not is_conservative(nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["painn", "schnet"])
def test_jvp_tangents_equal_central_differences(frames, name):
    from gffmerge.models.schnet import SchNet

    torch.manual_seed(0)
    if name == "painn":
        model = PaiNN(n_features=8, n_interactions=2, n_rbf=6, cutoff=4.0)
    else:
        model = SchNet(n_atom_basis=8, n_filters=8, n_interactions=2, n_rbf=6, cutoff=4.0)
    model = model.double().eval()
    batch = _batches(frames, model.cutoff)[0]
    names = list(linear_layers(model))
    u = directions(batch, "random", seed=1)
    for what in ("input", "output"):
        dual = run_recording(model, batch, names, what, u=u)
        eps = 1e-5
        plus = run_recording(model, replace(batch, pos=batch.pos + eps * u), names, what)
        minus = run_recording(model, replace(batch, pos=batch.pos - eps * u), names, what)
        for n in names:
            (x, dx), = dual[n]
            (xp, none), = plus[n]
            assert none is None
            fd = (xp - minus[n][0][0]) / (2 * eps)
            scale = max(fd.abs().max().item(), 1e-3)
            assert (dx - fd).abs().max().item() <= 1e-6 * scale, (what, n)
            torch.testing.assert_close(x, run_recording(model, batch, [n], what)[n][0][0],
                                       rtol=0, atol=1e-12)


_OPS = {
    "a + b": lambda a, b: a + b, "b + a": lambda a, b: b + a,
    "a - b": lambda a, b: a - b, "b - a": lambda a, b: b - a,
    "a * b": lambda a, b: a * b, "b * a": lambda a, b: b * a,
    "a / b": lambda a, b: a / b, "b / a": lambda a, b: b / a,
    "torch.mul": torch.mul, "torch.sub": lambda a, b: torch.sub(a, b),
    "a.add(b)": lambda a, b: a.add(b), "torch.div": lambda a, b: torch.div(a, b),
    "alpha": lambda a, b: torch.add(a, b, alpha=2.0),
}


@pytest.mark.parametrize("op", list(_OPS))
@pytest.mark.parametrize("plain", ["tensor", "column", "number", "dual"])
def test_direct_elementwise_tangents_equal_autograd(op, plain):
    """``+ − × ÷`` with a dual ``a`` and a plain ``b`` (a tensor, a broadcast column, a
    number; both dual: autograd's rule) give autograd's values and tangents to the bit,
    with the layout of autograd's result."""
    import torch.autograd.forward_ad as fwad

    from gffmerge.collect.tangents import _TangentRules

    g = torch.Generator().manual_seed(0)
    a, ta = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    b = {"tensor": torch.randn(5, 4, generator=g) + 3, "column": torch.rand(5, 1,
         generator=g) + 1, "number": 0.37, "dual": torch.randn(5, 4, generator=g) + 3}[plain]
    if op == "b / a":
        a = a.abs() + 1
    f = _OPS[op]
    results = []
    for mode in (_TangentRules(), _TangentRules(elementwise=False)):
        with torch.no_grad(), fwad.dual_level():
            bb = fwad.make_dual(b, torch.ones_like(b)) if plain == "dual" else b
            if plain == "number" and op in ("torch.mul", "torch.sub", "torch.div"):
                bb = torch.tensor(b)
            with mode:
                out = f(fwad.make_dual(a, ta), bb)
            p, t = fwad.unpack_dual(out)
            results.append((p.clone(), t.clone(), t.stride()))
    (p, t, stride), (pr, tr, stride_r) = results
    assert torch.equal(p, pr) and torch.equal(t, tr) and stride == stride_r
    assert t.abs().max() > 0


@pytest.mark.parametrize("affine", ["weight and bias", "weight", "none"])
@pytest.mark.parametrize("shape", [(7, 6), (5, 3, 4)])
def test_direct_layer_norm_tangent_equals_autograd(affine, shape):
    """``F.layer_norm`` of a dual input with plain affine weights gives autograd's values
    and tangents to the bit (over the last one or two dimensions)."""
    import torch.autograd.forward_ad as fwad
    import torch.nn.functional as F

    from gffmerge.collect.tangents import _TangentRules

    g = torch.Generator().manual_seed(1)
    x, tx = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    norm = shape[-1:] if len(shape) == 2 else shape[-2:]
    w = torch.randn(*norm, generator=g) if affine != "none" else None
    b = torch.randn(*norm, generator=g) if affine == "weight and bias" else None
    results = []
    for mode in (_TangentRules(), _TangentRules(elementwise=False)):
        with torch.no_grad(), fwad.dual_level(), mode:
            out = F.layer_norm(fwad.make_dual(x, tx), norm, w, b, 1e-5)
            p, t = fwad.unpack_dual(out)
            results.append((p.clone(), t.clone()))
    (p, t), (pr, tr) = results
    assert torch.equal(p, pr) and torch.equal(t, tr)
    assert t.abs().max() > 0


def test_linear_model_is_recovered_from_derivative_rows_alone(frames):
    torch.manual_seed(0)
    target = LinearInFeatures().double()
    other = copy.deepcopy(target)  # the model whose inputs are used: another head
    with torch.no_grad():
        target.head.weight.normal_()
        other.head.weight.normal_()
        other.head.bias.fill_(3.0)
    infos = linear_layers(target)
    sources = prepare_sources([target], [_batches(frames, target.cutoff, 2)], frames=None,
                              names=["head"], tangents=True, seed=5)
    (sums,) = stage_sums(other, sources, ["head"], infos, tangents=True)
    s = sums["head"]
    assert s.trows == s.rows == 6 * 9
    theta = torch.linalg.solve(s.tgram, s.tcross)  # no value rows, no bias column
    torch.testing.assert_close(theta.T, target.head.weight.detach(), rtol=0, atol=1e-10)
    # the tangents of the output are W ẋ exactly (the bias drops out)
    torch.testing.assert_close(s.tcross, s.tgram @ target.head.weight.detach().T,
                               rtol=0, atol=1e-10)


def test_reference_energy_refit_removes_per_element_offsets():
    """A merged model that differs from the source by per-element energy constants gets
    them back; its forces are untouched."""
    from gffmerge.collect.progressive import refit_reference_energies

    torch.manual_seed(0)
    source = PaiNN(n_features=8, n_interactions=1, n_rbf=6, cutoff=4.0).double().eval()
    merged = copy.deepcopy(source)
    with torch.no_grad():
        merged.atomic_energies[[1, 6, 8]] += torch.tensor([0.3, -0.2, 0.5],
                                                          dtype=torch.float64)
    ds = load_dataset(["rmd17/ethanol", "rmd17/malonaldehyde"]).split("train").subset(
        8, seed=0)
    batches = _batches(ds, source.cutoff, 4)
    sources = prepare_sources([source], [batches], frames=None, names=[], tangents=False)
    shift = refit_reference_energies(merged, sources)
    assert sorted(shift) == [1, 6, 8]
    for b in batches:
        want, got = source(b), merged(b)
        torch.testing.assert_close(got["energy"], want["energy"], rtol=0, atol=1e-8)
        torch.testing.assert_close(got["forces"], want["forces"], rtol=0, atol=1e-12)


def test_tangent_rows_reach_every_layer_of_a_direct_force_model(frames):
    """With tangents on a direct-force model the dual pass runs the full forward, so the
    force head is measured and solved too."""
    from gffmerge.methods.progressive import ProgressiveOptions, progressive_merge
    from gffmerge.models.gns import GNS
    from gffmerge.testing import fine_tunes

    torch.manual_seed(0)
    base = GNS(latent_dim=8, hidden_dim=8, n_layers=1, n_rbf=6, cutoff=4.0).double()
    sources = fine_tunes(base, 2, scale=0.05, seed=2)
    batches = [_batches(frames, base.cutoff, 3) for _ in sources]
    res = progressive_merge(sources, batches, ProgressiveOptions(ridge=1e-2, tangents="on",
                                                                 beta=1.0, frames=None),
                            progress=False)
    assert res.report.options["chosen_beta"] == 1.0
    names = {lr.name for lr in res.report.layers if lr.solved}
    assert {"force_head.0", "force_head.2", "energy_head.2"} <= names
    assert all(lr.solved for lr in res.report.layers)
