"""Repair fine-tune (gffmerge.repair, gffmerge.cli.repairing): it lowers the validation loss,
the scope freezes exactly what it should, the options land in the checkpoint, the command
line parses and fails cleanly."""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import pytest
import torch

from gffmerge.checkpoint import load_checkpoint, save_checkpoint
from gffmerge.cli.repairing import add_parser, run
from gffmerge.data import load_dataset
from gffmerge.models import build_model, fit_reference_energies, fit_scale_shift
from gffmerge.models.embedding_switch import EmbeddingSwitch
from gffmerge.repair import linear_layers_in_forward_order, parse_scope, repair, scope_parameters
from gffmerge.train import balanced_subset

SYSTEMS = ["rmd17/ethanol", "rmd17/malonaldehyde"]
TINY = {
    "schnet": dict(n_atom_basis=8, n_filters=8, n_interactions=2, n_rbf=6, cutoff=4.0),
    "painn": dict(n_features=8, n_interactions=2, n_rbf=6, cutoff=4.0),
    "gns": dict(latent_dim=8, hidden_dim=12, n_layers=2, n_rbf=6, cutoff=4.0),
}
FAST = dict(frames=16, epochs=4, lr=1e-2, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def data():
    return load_dataset(SYSTEMS, max_frames=60)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name: str, data):
    """A small untrained model with fitted energy normalisation (a 'bad merge')."""
    torch.manual_seed(7)
    model = build_model(name, **TINY[name])
    loader = data.split("train").batches_for(model, 32)
    ref = fit_reference_energies(loader)
    ss = fit_scale_shift(loader, ref.atomic_energies)
    model.set_energy_normalisation(ref.atomic_energies, ss.scale, ss.shift)
    return model.eval()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("name", ["gns", "painn"])
def test_repair_lowers_the_validation_loss_and_keeps_the_input(data, name):
    model = _model(name, data)
    before = copy.deepcopy(model.state_dict())
    result = repair(model, data, scope="all", **FAST)
    assert result.best_val_loss < 0.9 * result.start_val_loss
    assert result.metrics["best_epoch"] >= 0
    assert result.frames_per_system == {"rmd17/ethanol": 8, "rmd17/malonaldehyde": 8}
    # The model passed in is not touched.
    assert all(_same(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in result.model.parameters())


@pytest.mark.parametrize(("name", "scope"), [("gns", "heads"), ("painn", "heads"),
                                             ("schnet", "last:2"), ("painn", "last:7")])
def test_scope_freezes_everything_else_bit_identically(data, name, scope):
    model = _model(name, data)
    result = repair(model, data, scope=scope, **FAST)
    chosen = set(result.trainable)
    assert chosen
    after = dict(result.model.named_parameters())
    changed = set()
    for k, v in model.named_parameters():
        if k in chosen:
            if not torch.equal(v, after[k]):
                changed.add(k)
        else:
            assert _same(v, after[k]), f"{k} is outside scope {scope} but changed"
    assert changed, "nothing in scope was trained"
    for k, v in model.state_dict().items():  # buffers (energy references, scale) too
        if k not in chosen:
            assert _same(v, result.model.state_dict()[k])


def test_scopes_name_the_right_layers(data):
    painn = _model("painn", data)
    batch = data.collate([0], 4.0)
    heads = scope_parameters(painn, "heads")
    assert heads == ["readout.0.weight", "readout.0.bias", "readout.2.weight",
                     "readout.2.bias"]
    gns_heads = scope_parameters(_model("gns", data), "heads")
    assert {n.split(".")[0] for n in gns_heads} == {"energy_head", "force_head"}
    # Forward order interleaves message and update blocks; registration order does not.
    order = linear_layers_in_forward_order(painn, batch)
    assert order.index("updates.0.mlp.2") < order.index("messages.1.phi.0")
    last7 = {n.rsplit(".", 1)[0] for n in scope_parameters(painn, "last:7", batch)}
    assert "messages.1.filter" in last7 and "updates.0.mlp.2" not in last7
    assert len(last7) == 7
    assert scope_parameters(painn, "all") == [n for n, _ in painn.named_parameters()]
    with pytest.raises(ValueError, match="more linear layers"):
        scope_parameters(painn, "last:99", batch)
    for bad in ("last:0", "last:x", "head", ""):
        with pytest.raises(ValueError, match="scope must be"):
            parse_scope(bad)


def test_balanced_subset_spreads_frames_over_systems(data):
    train = data.split("train")
    counts = np.bincount(train.system_ids)
    small = train.take(np.concatenate([np.flatnonzero(train.system_ids == 0)[:5],
                                       np.flatnonzero(train.system_ids == 1)]))
    picked = balanced_subset(small, 20, seed=1)
    assert np.bincount(picked.system_ids).tolist() == [5, 15]  # the shortfall moves over
    even = balanced_subset(train, 21, seed=1)
    assert sorted(np.bincount(even.system_ids).tolist()) == [10, 11]
    assert even.frame_keys == balanced_subset(train, 21, seed=1).frame_keys
    assert even.frame_keys != balanced_subset(train, 21, seed=2).frame_keys
    assert len(balanced_subset(train, 10_000, seed=0)) == int(counts.sum())


def test_checkpoint_metadata_and_switched_models(tmp_path, data):
    a = _model("gns", data)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.embedding.weight.add_(0.1)
    switched = EmbeddingSwitch.from_sources(a, [a, b], SYSTEMS)
    result = repair(switched, data, scope="all", output=tmp_path / "r.pt",
                    metadata={"note": "x"}, **FAST)
    assert "base.embedding.tables" in result.trainable
    loaded, meta = load_checkpoint(tmp_path / "r.pt")
    assert isinstance(loaded, EmbeddingSwitch)
    assert meta["role"] == "repair" and meta["note"] == "x"
    assert meta["repair"]["options"]["scope"] == "all"
    assert meta["repair"]["options"]["frames"] == 16
    assert meta["wall_seconds"] > 0 and meta["train_frames"] == 16
    assert meta["metrics"]["best_val_loss"] <= meta["metrics"]["start_val_loss"]
    batch = data.collate([0, len(data) - 1], 4.0)
    torch.testing.assert_close(loaded(batch)["forces"], result.model.eval()(batch)["forces"],
                               rtol=0, atol=0)


def _cli(argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_run_repairs_and_reports(tmp_path, data, capsys):
    model = _model("schnet", data)
    save_checkpoint(tmp_path / "merged.pt", model, {"role": "merged", "method": "average",
                                                    "foundation_sha256": "ab" * 32})
    out = tmp_path / "repaired.pt"
    args = _cli(["repair", "--model", str(tmp_path / "merged.pt"), "--data", *SYSTEMS,
                 "--frames", "12", "--epochs", "2", "--scope", "last:2", "--max-frames", "60",
                 "--batch-size", "4", "--lr", "3e-3", "-o", str(out), "--json"])
    assert run(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["output"] == str(out) and payload["trainable_parameters"] == 4
    assert payload["best_val_loss"] <= payload["start_val_loss"]
    _, meta = load_checkpoint(out)
    assert meta["repaired_from"] == {"path": str(tmp_path / "merged.pt"), "role": "merged",
                                     "method": "average"}
    assert meta["repair"]["options"]["scope"] == "last:2"
    assert meta["foundation_sha256"] == "ab" * 32  # its lineage goes on


@pytest.mark.parametrize(("extra", "message"), [
    (["--scope", "tail"], "scope must be 'heads', 'last:N'"),
    (["--frames", "0"], "frames must be >= 1"),
    (["--data", "rmd17/no-such-molecule"], "no-such-molecule"),
])
def test_cli_user_errors_exit_2_with_one_line(tmp_path, data, capsys, extra, message):
    save_checkpoint(tmp_path / "m.pt", _model("schnet", data))
    argv = ["repair", "--model", str(tmp_path / "m.pt"), "--data", *SYSTEMS,
            "-o", str(tmp_path / "r.pt"), "--quiet", *extra]
    assert run(_cli(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("gffmerge repair: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.pt").exists()


def test_cli_refuses_missing_model_and_overwriting_it(tmp_path, capsys):
    assert run(_cli(["repair", "--model", str(tmp_path / "none.pt"), "--data", *SYSTEMS,
                     "-o", str(tmp_path / "r.pt")])) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert run(_cli(["repair", "--model", str(tmp_path / "m.pt"), "--data", *SYSTEMS,
                     "-o", str(tmp_path / "m.pt")])) == 2
    assert "overwrite the input model" in capsys.readouterr().err
