"""SevenNet-0 through gffmerge (gffmerge.adapters.sevenn); skipped without the sevenn extra."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("sevenn", reason="the sevenn extra is not installed "
                                     "(pip install 'gffmerge[sevenn]')")

import gffmerge  # noqa: E402
from gffmerge import adapters  # noqa: E402
from gffmerge.adapters.irreps import IrrepsLinear, ScaledDense  # noqa: E402
from gffmerge.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from gffmerge.data import load_dataset  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore"),
              pytest.mark.usefixtures("models_registry_restored")]


@pytest.fixture(scope="module")
def adapter():
    return adapters.enable("sevenn-0")


@pytest.fixture(scope="module")
def foundation(adapter):
    return adapter.foundation()


@pytest.fixture(scope="module")
def data():
    return load_dataset(["lips20/P2S5"], max_frames=200, seed=42)


def _atoms(b, g=0):
    import ase

    n = int(b.natoms[g])
    start = int(b.natoms[:g].sum())
    return ase.Atoms(numbers=b.z[start:start + n].numpy(),
                     positions=b.pos[start:start + n].double().numpy(),
                     cell=b.cell[g].double().numpy(), pbc=True)


def test_no_e3nn_linear_is_left(foundation):
    from e3nn import o3
    from e3nn.nn._fc import _Layer

    kinds = {type(m) for m in foundation.modules()}
    assert o3.Linear not in kinds and _Layer not in kinds
    assert IrrepsLinear in kinds and ScaledDense in kinds
    # every weight matrix of SevenNet-0 is now an nn.Linear the collector sees; what is
    # left are vectors (radial basis, per-species scale and shift)
    linears = gffmerge.linear_layers(foundation)
    outside = {n: tuple(p.shape) for n, p in foundation.named_parameters()
               if n.rsplit(".", 1)[0] not in linears}
    assert len(linears) == 55
    assert all(len(shape) <= 1 for shape in outside.values()), outside


def test_wrapper_is_sevennet(adapter, foundation, data):
    b = next(iter(data.split("test").batches_for(foundation, 2)))
    out = foundation(b)
    atoms = _atoms(b, 1)
    atoms.calc = adapter.calculator("7net-0")
    assert atoms.get_potential_energy() == pytest.approx(float(out["energy"][1]), rel=1e-6)
    n0 = int(b.natoms[0])
    assert torch.allclose(torch.as_tensor(atoms.get_forces(), dtype=torch.float32),
                          out["forces"][n0:], atol=1e-4)


def test_identical_sources_give_back_the_source(foundation, data):
    loader = data.split("train").subset(4, seed=0).batches_for(foundation, 2)
    result = gffmerge.merge([foundation, copy.deepcopy(foundation)], [loader, loader],
                            method="gffmerge", prior="mean", ridge=1e-3,
                            ridge_mode="relative", progress=False)
    theirs = foundation.state_dict()
    for name, value in result.model.state_dict().items():
        assert torch.allclose(value.double(), theirs[name].double(), atol=1e-6, rtol=0), name


def test_export_round_trips_through_sevennet(adapter, foundation, data, tmp_path):
    """A changed model (per-irrep blocks, radial MLP, references) written as a SevenNet
    checkpoint is loaded by SevenNetCalculator and predicts what the gffmerge model does."""
    model = copy.deepcopy(foundation)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".blocks." in name or ".linear.weight" in name:
                p.mul_(1 + 0.02 * torch.randn_like(p))
        model.atomic_energies[15] += 1.25
        model.atomic_energies[16] -= 0.5
    b = next(iter(data.split("test").batches_for(model, 1)))
    want = model(b)
    path = adapter.export(model, tmp_path / "merged.pth")
    atoms = _atoms(b)
    atoms.calc = adapter.calculator(path)
    assert atoms.get_potential_energy() == pytest.approx(float(want["energy"][0]), rel=1e-6)
    assert torch.allclose(torch.as_tensor(atoms.get_forces(), dtype=torch.float32),
                          want["forces"], atol=1e-4)
    ckpt = save_checkpoint(tmp_path / "merged.pt", model)
    again = load_checkpoint(ckpt)[0]
    assert torch.allclose(again(b)["energy"], want["energy"])
