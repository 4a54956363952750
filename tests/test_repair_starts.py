"""A repair that chooses its start (gffmerge.repair, ``starts=``): every candidate is probed
on the same frames, the full repair starts from the best probe and equals a plain repair
of that candidate; the command line's ``--starts``; the progressive merge's
``alternatives`` that feed it."""

from __future__ import annotations

import argparse
import copy
import json
from types import SimpleNamespace

import pytest
import torch

from gffmerge.checkpoint import load_checkpoint, save_checkpoint
from gffmerge.cli.repairing import add_parser, run
from gffmerge.data import load_dataset
from gffmerge.errors import ArchitectureMismatchError
from gffmerge.models import build_model, fit_reference_energies, fit_scale_shift
from gffmerge.repair import repair

SYSTEMS = ["rmd17/ethanol", "rmd17/malonaldehyde"]
TINY = dict(latent_dim=8, hidden_dim=12, n_layers=2, n_rbf=6, cutoff=4.0)
FAST = dict(frames=16, epochs=3, lr=1e-2, batch_size=4, seed=0)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return load_dataset(SYSTEMS, max_frames=60)


def _model(data, seed: int, scale: float = 1.0, **kw):
    """A small GNS with fitted energy normalisation; ``scale`` multiplies every weight
    matrix (a large one makes a start that a short repair cannot rescue)."""
    torch.manual_seed(seed)
    model = build_model("gns", **{**TINY, **kw})
    loader = data.split("train").batches_for(model, 32)
    ref = fit_reference_energies(loader)
    ss = fit_scale_shift(loader, ref.atomic_energies)
    model.set_energy_normalisation(ref.atomic_energies, ss.scale, ss.shift)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim == 2:
                p.mul_(scale)
    return model.eval()


@pytest.fixture(scope="module")
def good_and_bad(data):
    """A start a repair helps and one it cannot: the first has a lower probe loss."""
    good = repair(_model(data, 1), data, **FAST).model.eval()
    return good, _model(data, 2, scale=6.0)


def test_the_start_with_the_best_probe_is_repaired_as_if_given_alone(data, good_and_bad):
    good, bad = good_and_bad
    kept = copy.deepcopy(good.state_dict())
    res = repair(bad, data, starts={"other": good}, probe_epochs=1, **FAST)
    assert set(res.probe_val_loss) == {"given", "other"}
    assert res.probe_val_loss["other"] < res.probe_val_loss["given"]
    assert res.start == "other" and res.probe_seconds > 0
    alone = repair(good, data, **FAST)
    for k, v in alone.model.state_dict().items():  # the same seeded run, bit for bit
        torch.testing.assert_close(res.model.state_dict()[k], v, rtol=0, atol=0)
    assert res.best_val_loss == alone.best_val_loss
    assert all(torch.equal(v, good.state_dict()[k]) for k, v in kept.items())  # untouched
    # the probe of each candidate is a repair of probe_epochs on the same frames
    probe = repair(bad, data, **{**FAST, "epochs": 1})
    assert res.probe_val_loss["given"] == pytest.approx(probe.best_val_loss, rel=1e-12)


def test_the_best_two_probes_go_again_for_twice_the_epochs(data, good_and_bad, monkeypatch):
    """Three starts: the two best first probes are probed again for 2 epochs, and the start
    is the best of that second round even where the first round ranked them the other way."""
    import gffmerge.repair as rp

    good, bad = good_and_bad
    worse = _model(data, 3, scale=9.0)
    # first-round scores favour "bad" over "given" (good); the second round reverses them
    first = {id(good): 2.0, id(bad): 1.0, id(worse): 3.0}
    second = {id(good): 0.5, id(bad): 0.8}
    real = rp._train_copy
    seen = []

    def fake(model, dataset, opts, epochs, output, metadata, progress=False,
             with_scope=False):
        if with_scope:  # the full repair
            return real(model, dataset, opts, epochs, output, metadata, progress=progress,
                        with_scope=True)
        seen.append((id(model), epochs))
        loss = (first if epochs == 1 else second)[id(model)]
        return SimpleNamespace(metrics={"best_val_loss": loss})
    monkeypatch.setattr(rp, "_train_copy", fake)
    res = repair(good, data, starts={"bad": bad, "worse": worse}, probe_epochs=1, **FAST)
    assert seen == [(id(good), 1), (id(bad), 1), (id(worse), 1), (id(bad), 2), (id(good), 2)]
    assert res.probe_val_loss == {"given": 2.0, "bad": 1.0, "worse": 3.0}
    assert res.final_probe_val_loss == {"bad": 0.8, "given": 0.5}
    assert res.start == "given"


def test_the_given_model_is_kept_when_its_probe_is_best(data, good_and_bad):
    good, bad = good_and_bad
    res = repair(good, data, starts={"other": bad}, probe_epochs=1, **FAST)
    assert res.start == "given"
    assert res.probe_val_loss["given"] < res.probe_val_loss["other"]
    plain = repair(good, data, **FAST)
    assert res.best_val_loss == plain.best_val_loss and not plain.probe_val_loss


def test_starts_of_another_architecture_and_bad_probe_epochs_are_refused(data, good_and_bad):
    good, _ = good_and_bad
    wide = _model(data, 3, hidden_dim=16)
    with pytest.raises(ArchitectureMismatchError, match="every repair start must have"):
        repair(good, data, starts={"wide": wide}, **FAST)
    with pytest.raises(ValueError, match="probe_epochs must be >= 1"):
        repair(good, data, starts={"other": good}, probe_epochs=0, **FAST)


def _cli(argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_starts_choose_and_record(tmp_path, data, good_and_bad, capsys):
    good, bad = good_and_bad
    save_checkpoint(tmp_path / "bad.pt", bad, {"role": "merged", "method": "average"})
    save_checkpoint(tmp_path / "good.pt", good, {"role": "merged", "method": "ties"})
    out = tmp_path / "r.pt"
    argv = ["repair", "--model", str(tmp_path / "bad.pt"), "--starts", str(tmp_path / "good.pt"),
            "--data", *SYSTEMS, "--frames", "16", "--epochs", "2", "--max-frames", "60",
            "--batch-size", "4", "--lr", "1e-2", "--seed", "0", "-o", str(out), "--json"]
    assert run(_cli(argv)) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["start"] == "good.pt" and set(payload["probe_val_loss"]) == {"given",
                                                                               "good.pt"}
    meta = load_checkpoint(out)[1]
    assert meta["repair"]["start"] == "good.pt" and meta["repair"]["probe_epochs"] == 1
    assert meta["repair"]["probe_val_loss"] == payload["probe_val_loss"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--starts", "{good}", "--probe-epochs", "0"], "--probe-epochs must be >= 1"),
    (["--starts", "{good}", "{good}"], "names a checkpoint twice"),
    (["--starts", "{model}"], "names a checkpoint twice"),
    (["--starts", "{good}", "-o", "{good}"], "would overwrite an input model"),
])
def test_cli_start_errors_exit_2_and_write_nothing(tmp_path, data, good_and_bad, capsys,
                                                   extra, message):
    good, bad = good_and_bad
    paths = {"good": str(tmp_path / "good.pt"), "model": str(tmp_path / "m.pt")}
    save_checkpoint(paths["good"], good)
    save_checkpoint(paths["model"], bad)
    before = (tmp_path / "good.pt").read_bytes()
    argv = ["repair", "--model", paths["model"], "--data", *SYSTEMS, "--quiet",
            *[e.format(**paths) for e in extra]]
    if "-o" not in extra:
        argv += ["-o", str(tmp_path / "r.pt")]
    assert run(_cli(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("gffmerge repair: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.pt").exists()
    assert (tmp_path / "good.pt").read_bytes() == before


def test_cli_merge_writes_the_alternatives_beside_the_output(tmp_path, data, good_and_bad,
                                                             capsys):
    """`gffmerge merge -O alternatives=true`: each alternative is written (not computed and
    dropped) beside the merged model, named by its family, and listed in the output."""
    from gffmerge.cli.merging import _merge_summary, _save_merged, alternative_paths
    from gffmerge.report import MergeReport, MergeResult

    good, bad = good_and_bad
    rec = {"average": {"key": ["average"], "val_force_mae_mev_per_a": 1.5}}
    result = MergeResult(good, MergeReport("progressive", {"alternatives": rec}, 2),
                         {"average": bad, "closed form from the mean": good})
    out = tmp_path / "merged.pt"
    args = argparse.Namespace(output=str(out), report=None, json=True, quiet=False)
    _save_merged(args, result, ["a.pt", "b.pt"], {"data": SYSTEMS})
    paths = alternative_paths(str(out), result.alternatives)
    assert paths == {"average": str(tmp_path / "merged.alt-average.pt"),
                     "closed form from the mean":
                         str(tmp_path / "merged.alt-closed-form-from-the-mean.pt")}
    for label, path in paths.items():
        model, meta = load_checkpoint(path)
        assert meta["role"] == "merge-alternative" and meta["label"] == label
        assert meta["merged"] == str(out) and meta["sources"] == ["a.pt", "b.pt"]
        want = result.alternatives[label].state_dict()
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    assert load_checkpoint(paths["average"])[1]["record"] == rec["average"]
    _merge_summary(args, result)
    assert json.loads(capsys.readouterr().out)["alternatives"] == paths


# ---- the rate chosen on validation (lr="auto") ------------------------------------------


def test_auto_rate_probes_each_rate_from_the_chosen_start(data, good_and_bad, monkeypatch):
    """Starts first (at the default rate), then the chosen start once per rate for twice the
    probe epochs, the default rate's second probe reused; the full repair runs at the best."""
    import gffmerge.repair as rp

    good, bad = good_and_bad
    first = {id(good): 1.0, id(bad): 2.0}
    second = {id(good): 0.5, id(bad): 0.8}
    by_rate = {1e-3: 0.7, 4e-3: 0.3}
    real = rp._train_copy
    seen = []

    def fake(model, dataset, opts, epochs, output, metadata, progress=False,
             with_scope=False):
        if with_scope:
            seen.append(("full", opts.lr))
            return real(model, dataset, opts, epochs, output, metadata, progress=progress,
                        with_scope=True)
        seen.append((id(model), epochs, opts.lr))
        if opts.lr != rp.DEFAULT_LR:
            return SimpleNamespace(metrics={"best_val_loss": by_rate[opts.lr]})
        return SimpleNamespace(metrics={"best_val_loss": (first if epochs == 1
                                                          else second)[id(model)]})
    monkeypatch.setattr(rp, "_train_copy", fake)
    fast = {k: v for k, v in FAST.items() if k != "lr"}
    res = repair(bad, data, starts={"good": good}, probe_epochs=1, lr="auto",
                 lr_grid=(1e-3, rp.DEFAULT_LR, 4e-3), **fast)
    d = rp.DEFAULT_LR
    assert seen == [(id(bad), 1, d), (id(good), 1, d), (id(good), 2, d), (id(bad), 2, d),
                    (id(good), 2, 1e-3), (id(good), 2, 4e-3), ("full", 4e-3)]
    assert res.start == "good" and res.options.lr == 4e-3
    assert res.lr_probe_val_loss == {1e-3: 0.7, d: 0.5, 4e-3: 0.3}


def test_auto_rate_without_starts_equals_a_plain_repair_at_the_chosen_rate(data, good_and_bad):
    good, _ = good_and_bad
    fast = {k: v for k, v in FAST.items() if k != "lr"}
    res = repair(good, data, lr="auto", lr_grid=(1e-3, 1e-2), probe_epochs=1, **fast)
    assert set(res.lr_probe_val_loss) == {1e-3, 1e-2} and res.start == "given"
    best = min(res.lr_probe_val_loss, key=res.lr_probe_val_loss.get)
    assert res.options.lr == best
    # each rate's probe is a repair of 2 * probe_epochs at that rate on the same frames
    probe = repair(good, data, **{**fast, "epochs": 2, "lr": 1e-3})
    assert res.lr_probe_val_loss[1e-3] == pytest.approx(probe.best_val_loss, rel=1e-12)
    plain = repair(good, data, lr=best, **fast)
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(res.model.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize(("kw", "message"), [
    ({"lr": "fast"}, "lr must be a rate > 0 or 'auto'"),
    ({"lr": "auto", "lr_grid": ()}, "lr_grid must be a non-empty"),
    ({"lr": "auto", "lr_grid": (1e-3, -1.0)}, "lr_grid must be a non-empty"),
    ({"lr": "auto", "probe_epochs": 0}, "probe_epochs must be >= 1"),
])
def test_bad_rates_are_refused(data, good_and_bad, kw, message):
    good, _ = good_and_bad
    fast = {k: v for k, v in FAST.items() if k != "lr"}
    with pytest.raises(ValueError, match=message):
        repair(good, data, **{**fast, **kw})


def test_cli_auto_rate_records_the_choice(tmp_path, data, good_and_bad, capsys):
    good, _ = good_and_bad
    save_checkpoint(tmp_path / "m.pt", good, {"role": "merged", "method": "average"})
    out = tmp_path / "r.pt"
    argv = ["repair", "--model", str(tmp_path / "m.pt"), "--data", *SYSTEMS, "--frames",
            "16", "--epochs", "1", "--max-frames", "60", "--batch-size", "4", "--lr", "auto",
            "--seed", "0", "-o", str(out), "--json"]
    assert run(_cli(argv)) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload["lr_probe_val_loss"]) == {"0.0005", "0.001"}
    assert payload["lr"] == float(min(payload["lr_probe_val_loss"],
                                      key=payload["lr_probe_val_loss"].get))
    meta = load_checkpoint(out)[1]
    assert meta["repair"]["options"]["lr"] == payload["lr"]
    assert meta["repair"]["lr_probe_val_loss"] == payload["lr_probe_val_loss"]
    assert meta["repair"]["probe_epochs"] == 1  # the rates' probes: 2 x 1 epoch each


def test_cli_bad_rate_exits_2(tmp_path, data, good_and_bad, capsys):
    good, _ = good_and_bad
    save_checkpoint(tmp_path / "m.pt", good)
    argv = ["repair", "--model", str(tmp_path / "m.pt"), "--data", *SYSTEMS, "--lr", "fast",
            "-o", str(tmp_path / "r.pt")]
    with pytest.raises(SystemExit) as exc:
        run(_cli(argv))
    assert exc.value.code == 2
    assert "must be a rate > 0 or 'auto'" in capsys.readouterr().err
    assert not (tmp_path / "r.pt").exists()
