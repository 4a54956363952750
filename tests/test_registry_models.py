"""The model registry: @register_model, checkpoints of registered models, refusals."""

from __future__ import annotations

import pkgutil
import sys

import pytest
import torch
from torch import nn

import gffmerge.models
from gffmerge.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gffmerge.data.batch import AtomsBatch
from gffmerge.models import MODELS, ForceField, SchNet, build_model, model_class, register_model
from gffmerge.models import registry as model_registry

SHIPPED = ["gns", "painn", "schnet"]


@pytest.fixture
def registry():
    """The registry as it was before the test, restored after it."""
    before = dict(model_registry._REGISTRY)
    yield MODELS
    model_registry._REGISTRY.clear()
    model_registry._REGISTRY.update(before)


def pair_model_class(model_name: str) -> type[ForceField]:
    """A small conservative model defined outside gffmerge.models (not yet registered)."""

    class PairModel(ForceField):
        name = model_name
        conservative = True

        def __init__(self, width: int = 4, cutoff: float = 3.0, max_z: int = 10):
            super().__init__(cutoff=cutoff, max_z=max_z)
            self.config = dict(width=width, cutoff=float(cutoff), max_z=max_z)
            self.embedding = nn.Embedding(max_z + 1, width)
            self.radial = nn.Linear(1, width)
            self.readout = nn.Linear(width, 1)

        def atomwise(self, batch, direct_forces):
            sender, receiver = batch.edge_index
            r = batch.edge_vectors().norm(dim=-1, keepdim=True)
            w = torch.tanh(self.radial(r)) * (1 - r / self.cutoff) ** 2
            h = self.embedding(batch.z)
            agg = torch.zeros_like(h).index_add_(0, receiver, h.index_select(0, sender) * w)
            return self.readout(h + agg).squeeze(-1), None

    return PairModel


def water_dimer(dtype=torch.float64) -> AtomsBatch:
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0],
                        [2.9, 0.1, 0.2], [3.4, 0.8, 0.5], [3.5, -0.6, 0.1]], dtype=dtype)
    i, j = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    keep = (i != j) & ((pos[i] - pos[j]).norm(dim=-1) < 3.0)
    edge_index = torch.stack([j[keep], i[keep]])
    return AtomsBatch(
        z=torch.tensor([8, 1, 1, 8, 1, 1]), pos=pos, batch=torch.zeros(6, dtype=torch.int64),
        edge_index=edge_index, cell_shift=torch.zeros(edge_index.shape[1], 3, dtype=dtype),
        cell=torch.zeros(1, 3, 3, dtype=dtype), pbc=torch.zeros(1, 3, dtype=torch.bool),
        natoms=torch.tensor([6]))


def test_shipped_models_are_registered_by_their_own_files():
    assert set(SHIPPED) <= set(MODELS)
    for name, cls in MODELS.items():
        assert cls.__dict__["name"] == name and model_class(name) is cls
    for name in SHIPPED:
        assert MODELS[name].__module__ == f"gffmerge.models.{name}"
    # The package imports every module in its folder: a new model is one new file.
    for module in pkgutil.iter_modules(gffmerge.models.__path__):
        assert f"gffmerge.models.{module.name}" in sys.modules, module.name
    with pytest.raises(TypeError):
        MODELS["x"] = SchNet  # read-only view: registration goes through the decorator


def test_registered_model_round_trips_through_checkpoint(tmp_path, registry):
    cls = register_model(pair_model_class("pairtest"))
    assert registry["pairtest"] is cls and "pairtest" in sorted(registry)
    torch.manual_seed(3)
    model = build_model("pairtest", width=5).double()
    assert type(model) is cls and model.config["width"] == 5
    model.set_energy_normalisation(shift=-0.25, scale=1.5)
    path = save_checkpoint(tmp_path / "pair.pt", model, {"note": "registered in a test"})
    assert torch.load(path, weights_only=True)["model_name"] == "pairtest"
    loaded, meta = load_checkpoint(path)
    assert type(loaded) is cls and loaded.config == model.config and meta["note"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    batch = water_dimer()
    out, out2 = model.eval()(batch), loaded(batch)
    assert torch.equal(out["energy"], out2["energy"])
    assert torch.equal(out["forces"], out2["forces"])
    assert out["forces"].abs().max() > 0  # the model really depends on the positions


def test_unregistered_name_in_checkpoint_is_refused(tmp_path, registry):
    register_model(pair_model_class("pairgone"))
    path = save_checkpoint(tmp_path / "gone.pt", build_model("pairgone"))
    del model_registry._REGISTRY["pairgone"]  # e.g. the defining module was not imported
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert f"unknown model 'pairgone'; known models: {sorted(MODELS)}" in message
    assert "schnet" in message


def test_import_path_in_checkpoint_is_never_imported(tmp_path, monkeypatch):
    """A class path in the file must not be imported: that would run arbitrary code."""
    (tmp_path / "planted_model.py").write_text(
        "import gffmerge.models as m\n"
        "class Planted(m.SchNet):\n    name = 'planted'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    payload = torch.load(save_checkpoint(tmp_path / "ok.pt", SchNet(n_interactions=1)),
                         weights_only=True)
    for name in ("planted_model.Planted", "planted_model:Planted", "planted"):
        payload["model_name"] = name
        torch.save(payload, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=f"unknown model '{name}'; known models"):
            load_checkpoint(tmp_path / "bad.pt")
    assert "planted_model" not in sys.modules
    payload["model_name"] = ["schnet"]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"unknown model \['schnet'\]"):
        load_checkpoint(tmp_path / "bad.pt")


def test_save_refuses_unregistered_classes(tmp_path, registry):
    with pytest.raises(TypeError, match="register_model"):
        save_checkpoint(tmp_path / "a.pt", pair_model_class("notregistered")())

    class Renamed(SchNet):  # inherits name "schnet" but would load back as a plain SchNet
        pass

    with pytest.raises(TypeError, match="got Renamed.*register_model"):
        save_checkpoint(tmp_path / "b.pt", Renamed(n_interactions=1))
    assert not list(tmp_path.iterdir())


def test_register_model_checks(registry):
    before = sorted(registry)
    with pytest.raises(TypeError, match="ForceField subclass"):
        register_model(nn.Linear)

    class NoName(ForceField):
        pass

    with pytest.raises(ValueError, match="NoName needs its own class attribute `name"):
        register_model(NoName)

    class Inherited(SchNet):
        pass

    with pytest.raises(ValueError, match="Inherited needs its own"):
        register_model(Inherited)

    with pytest.raises(ValueError, match="'schnet' .* is already registered by "
                                         r"gffmerge\.models\.schnet\.SchNet"):
        register_model(pair_model_class("schnet"))
    assert register_model(SchNet) is SchNet  # the same class again is harmless
    assert sorted(registry) == before
    with pytest.raises(KeyError, match=r"unknown model 'mace'; known models: \['gns'"):
        build_model("mace")
