"""Checkpoint round trips and error messages (gffmerge.checkpoint)."""

from __future__ import annotations

import warnings

import pytest
import torch

from gffmerge.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gffmerge.data.batch import AtomsBatch
from gffmerge.models import MODELS, build_model

# Small configs for speed; a registered model not listed here is built from its defaults.
TINY = {
    "schnet": dict(n_atom_basis=8, n_filters=8, n_interactions=2, n_rbf=6, cutoff=3.0),
    "painn": dict(n_features=8, n_interactions=2, n_rbf=6, cutoff=3.0),
    "gns": dict(latent_dim=8, hidden_dim=12, n_layers=2, n_rbf=6, cutoff=3.0),
}


def water_dimer(dtype=torch.float32) -> AtomsBatch:
    """Non-periodic, all pairs within 3 Å are edges."""
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


def trained_like(name: str):
    torch.manual_seed(5)
    model = build_model(name, **TINY.get(name, {}))
    ref = torch.zeros(119, dtype=torch.float64)
    ref[[1, 8]] = torch.tensor([-13.587654321, -2041.123456789], dtype=torch.float64)
    model.set_energy_normalisation(ref, scale=0.37, shift=0.011)
    return model.eval()


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_is_exact(tmp_path, name, dtype):
    model = trained_like(name).to(dtype)
    metadata = {"data": ["beta-Li3PS4"], "split": {"train": 800, "seed": 42}, "seed": 0,
                "metrics": {"force_mae_ev_per_a": 0.0123}, "note": None,
                "history": torch.arange(3.0)}
    path = save_checkpoint(tmp_path / "sub" / "model.pt", model, metadata)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left
    loaded, meta = load_checkpoint(path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config
    assert meta.keys() == metadata.keys() and meta["metrics"] == metadata["metrics"]
    assert torch.equal(meta["history"], metadata["history"])
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    batch = water_dimer(dtype)
    out, out2 = model(batch), loaded(batch)
    assert torch.equal(out["energy"], out2["energy"])
    assert torch.equal(out["forces"], out2["forces"])
    # Plain containers only: loadable with weights_only=True.
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "gffmerge-checkpoint" and payload["version"] == 1
    assert payload["model_name"] == name


def test_overwrite(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, trained_like("gns"), {"step": 1})
    save_checkpoint(path, trained_like("gns"), {"step": 2})
    assert load_checkpoint(path)[1] == {"step": 2}


def _payload(tmp_path):
    path = save_checkpoint(tmp_path / "ok.pt", trained_like("schnet"), {})
    return torch.load(path, weights_only=True)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="not a gffmerge checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(CheckpointError, match="not a gffmerge checkpoint"):
        load_checkpoint(other)


def test_unknown_model(tmp_path):
    payload = _payload(tmp_path)
    payload["model_name"] = "mace"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"unknown model 'mace'.*gns.*painn.*schnet"):
        load_checkpoint(tmp_path / "bad.pt")


def test_version_too_new(tmp_path):
    payload = _payload(tmp_path)
    payload["version"] = 2
    torch.save(payload, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="version 2"):
        load_checkpoint(tmp_path / "new.pt")


def test_state_dict_mismatch(tmp_path):
    payload = _payload(tmp_path)
    del payload["state_dict"]["readout.0.weight"]
    payload["state_dict"]["extra"] = torch.zeros(1)
    payload["state_dict"]["readout.2.weight"] = torch.zeros(1, 5)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "bad.pt")
    message = str(info.value)
    assert "missing keys: ['readout.0.weight']" in message
    assert "unexpected keys: ['extra']" in message
    assert "readout.2.weight: checkpoint (1, 5) vs model (1, 4)" in message


def test_bad_config(tmp_path):
    payload = _payload(tmp_path)
    payload["config"]["n_layers"] = 3
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path / "bad.pt")


def test_metadata_must_be_plain(tmp_path):
    with pytest.raises(TypeError, match=r"metadata\['when'\]"):
        save_checkpoint(tmp_path / "m.pt", trained_like("gns"), {"when": object()})
    assert not list(tmp_path.iterdir())


def test_a_model_that_loads_packaged_weights_in_its_constructor_loads_quietly(
        tmp_path, monkeypatch):
    """A class whose constructor loads weights shipped with its package (CHGNet's adapter
    does) copies them onto the shape-checking skeleton's meta tensors too: torch's warning
    about that no-op, once per tensor, must not reach the user, and the loaded model holds
    the checkpoint's values."""
    from gffmerge.models import registry
    from gffmerge.models.schnet import SchNet

    class Packaged(SchNet):
        name = "test-packaged"

        def __init__(self, **kw):
            super().__init__(**kw)
            packaged = {k: torch.full(v.shape, 0.5, dtype=v.dtype, device="cpu")
                        for k, v in self.state_dict().items() if v.is_floating_point()}
            self.load_state_dict(packaged, strict=False)

    monkeypatch.setitem(registry._REGISTRY, Packaged.name, Packaged)
    torch.manual_seed(3)
    model = Packaged(**TINY["schnet"])
    for p in model.parameters():
        p.data.normal_()
    path = save_checkpoint(tmp_path / "m.pt", model, {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, _ = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
