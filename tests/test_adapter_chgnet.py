"""CHGNet through gffmerge (gffmerge.adapters.chgnet); skipped without the chgnet extra."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("chgnet", reason="the chgnet extra is not installed "
                                     "(pip install 'gffmerge[chgnet]')")

import gffmerge  # noqa: E402
from gffmerge import adapters  # noqa: E402
from gffmerge.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from gffmerge.data import load_dataset  # noqa: E402
from gffmerge.evaluate import evaluate  # noqa: E402
from gffmerge.train import TrainConfig, train  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore"),
              pytest.mark.usefixtures("models_registry_restored")]
SYSTEMS = ["lips20/P2S5", "lips20/P4S3"]  # cheap cells of different composition


@pytest.fixture(scope="module")
def adapter():
    return adapters.enable("chgnet")


@pytest.fixture(scope="module")
def foundation(adapter):
    return adapter.foundation()


@pytest.fixture(scope="module")
def data():
    return load_dataset(SYSTEMS, max_frames=1000, seed=42)


def test_wrapper_is_chgnet(adapter, foundation, data):
    """Energies and forces equal CHGNet's own prediction on the same structure."""
    from pymatgen.core import Lattice, Structure

    net = adapters.chgnet.load_pretrained("0.3.0")
    b = next(iter(data.split("test").batches_for(foundation, 2)))
    out = foundation(b)
    n = int(b.natoms[0])
    s = Structure(Lattice(b.cell[0].double().numpy()), b.z[:n].tolist(),
                  b.pos[:n].double().numpy(), coords_are_cartesian=True)
    want = net.predict_structure(s, task="ef")
    assert float(out["energy"][0]) == pytest.approx(float(want["e"]) * n, rel=1e-5)
    assert torch.allclose(out["forces"][:n], torch.as_tensor(want["f"]), atol=1e-4)


def test_identical_sources_give_back_the_source(foundation, data):
    loaders = [data.split("train").for_system(s).subset(4, seed=0).batches_for(foundation, 2)
               for s in SYSTEMS]
    result = gffmerge.merge([foundation, copy.deepcopy(foundation)], loaders,
                            method="gffmerge", prior="mean", ridge=1e-3,
                            ridge_mode="relative", progress=False)
    solved = [lr.name for lr in result.report.layers if lr.solved]
    assert len(solved) > 40  # every CHGNet linear that the energy path reaches
    theirs = foundation.state_dict()
    for name, value in result.model.state_dict().items():
        assert torch.allclose(value.double(), theirs[name].double(), atol=1e-6, rtol=0), name


def test_export_round_trips_through_chgnet(adapter, foundation, data, tmp_path):
    """A changed model (weights and references) written in CHGNet's format is loaded by
    CHGNet.from_file and CHGNetCalculator and predicts what the gffmerge model predicts;
    it also round-trips through a gffmerge checkpoint."""
    model = copy.deepcopy(foundation)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.net.mlp.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
        model.atomic_energies[15] += 1.25
        model.atomic_energies[16] -= 0.5
    b = next(iter(data.split("test").for_system("lips20/P2S5").batches_for(model, 1)))
    want = model(b)
    path = adapter.export(model, tmp_path / "merged.pth.tar")
    import ase

    atoms = ase.Atoms(numbers=b.z.numpy(), positions=b.pos.double().numpy(),
                      cell=b.cell[0].double().numpy(), pbc=True)
    atoms.calc = adapter.calculator(path)
    assert atoms.get_potential_energy() == pytest.approx(float(want["energy"][0]), rel=1e-5)
    assert torch.allclose(torch.as_tensor(atoms.get_forces(), dtype=torch.float32),
                          want["forces"], atol=1e-4)
    ckpt = save_checkpoint(tmp_path / "merged.pt", model)
    again = load_checkpoint(ckpt)[0]
    assert torch.allclose(again(b)["energy"], want["energy"])


@pytest.mark.slow
def test_short_merge_beats_average_on_both_systems(adapter, foundation, data):
    """Two short force fine-tunes (one per system) merged with a mean prior and relative
    ridge 1e-3: lower force MAE than the average of the two on both systems' test frames."""
    base = copy.deepcopy(foundation)
    adapter.fit_references(base, data.split("train").subset(16, seed=0).batches_for(base, 4))
    sources = []
    for s in SYSTEMS:
        cfg = TrainConfig(systems=[s], role="finetune", init="chgnet", epochs=8, lr=1e-3,
                          batch_size=2, train_frames=16, val_frames=4, test_frames=4,
                          patience=100)
        sources.append(train(cfg, model=copy.deepcopy(base), dataset=data.for_system(s),
                             progress=False).model)
    loaders = [data.split("train").for_system(s).subset(32, seed=1).batches_for(base, 4)
               for s in SYSTEMS]
    test = data.split("test").subset(30, seed=0)
    merged = gffmerge.merge(sources, loaders, method="gffmerge", prior="mean", ridge=1e-3,
                            ridge_mode="relative", progress=False).model
    average = gffmerge.merge(sources, None, method="average", progress=False).model
    ours = evaluate(merged, test, batch_size=4, progress=False)
    avg = evaluate(average, test, batch_size=4, progress=False)
    for s in SYSTEMS:
        assert ours[s]["force_mae_mev_per_a"] < avg[s]["force_mae_mev_per_a"], (
            s, ours[s]["force_mae_mev_per_a"], avg[s]["force_mae_mev_per_a"])


def test_experiment_route_makes_a_foundation_checkpoint(tmp_path):
    """``gffmerge experiment --foundation chgnet`` is accepted, and the foundation it starts
    from is a gffmerge checkpoint with references fitted to the systems, made once."""
    from gffmerge.experiment import ExperimentConfig

    cfg = ExperimentConfig(foundation="chgnet", systems=SYSTEMS, out=str(tmp_path / "exp"),
                           methods=["average"])
    assert "--foundation chgnet" in cfg.command()
    path = adapters.foundation_checkpoint("chgnet", SYSTEMS, tmp_path, frames=4,
                                          max_frames=100, batch_size=2)
    model, meta = load_checkpoint(path)
    assert meta["adapter_recipe"]["adapter"] == "chgnet"
    test = load_dataset(SYSTEMS, max_frames=100, seed=42).split("test").subset(4, seed=0)
    err = evaluate(model, test, batch_size=2, progress=False)["all"]
    assert err["energy_mae_mev_per_atom"] < 200  # raw CHGNet is ~2e5 meV/atom off here
    stamp = path.stat().st_mtime_ns
    again = adapters.foundation_checkpoint("chgnet", SYSTEMS, tmp_path, frames=4,
                                           max_frames=100, batch_size=2)
    assert again == path and path.stat().st_mtime_ns == stamp
