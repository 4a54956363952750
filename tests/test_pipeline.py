"""Training, the command line and the demo, end to end on a few real LiPS20 frames."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

import gffmerge
import gffmerge.demo
from gffmerge.checkpoint import load_checkpoint
from gffmerge.cli import main
from gffmerge.data import load_dataset
from gffmerge.demo import DEMO_SYSTEMS, PAIRS, demo_checkpoints, pair_checkpoints
from gffmerge.train import TrainConfig, train

TINY = {"latent_dim": 12, "hidden_dim": 12, "n_layers": 1, "n_rbf": 8, "cutoff": 4.0}
FEW = {"train_frames": 6, "val_frames": 4, "test_frames": 4, "batch_size": 3}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A tiny foundation, two fine-tunes and a joint model laid out like checkpoints/."""
    root = tmp_path_factory.mktemp("ckpts")
    paths = demo_checkpoints(root)
    train(TrainConfig(systems=["lips20/Li3P", "lips20/P2S5"], model="gns", model_config=TINY,
                      epochs=1, **FEW), output=paths["foundation"], progress=False)
    for system in DEMO_SYSTEMS:
        train(TrainConfig(systems=[system], role="finetune", init=str(paths["foundation"]),
                          epochs=1, **FEW), output=paths[system], progress=False)
    train(TrainConfig(systems=list(DEMO_SYSTEMS), role="joint", init=str(paths["foundation"]),
                      epochs=1, **FEW), output=paths["joint"], progress=False)
    return root, paths


def test_training_reduces_the_loss():
    cfg = TrainConfig(systems=["lips20/beta-Li3PS4"], model="gns", model_config=TINY,
                      epochs=6, lr=1e-2, patience=100, warmup_fraction=0.0, **FEW)
    result = train(cfg, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0] and losses[-1] < losses[1], losses
    assert result.metrics["best_epoch"] >= 0 and "test" in result.metrics


def test_checkpoint_metadata_records_the_run(ckpts):
    _, paths = ckpts
    _, meta = load_checkpoint(paths["lips20/beta-Li3PS4"])
    assert meta["role"] == "finetune" and meta["seed"] == 42
    assert meta["config"]["systems"] == ["lips20/beta-Li3PS4"]
    assert meta["wall_seconds"] > 0 and "test" in meta["metrics"]
    assert meta["init"].endswith("gns_foundation.pt")
    # the fine-tune kept the foundation's reference energies
    f, _ = load_checkpoint(paths["foundation"])
    m, _ = load_checkpoint(paths["lips20/beta-Li3PS4"])
    assert torch.equal(f.atomic_energies, m.atomic_energies)


def test_cli_measure_solve_equals_merge(ckpts, tmp_path, capsys):
    _, paths = ckpts
    src = [str(paths[s]) for s in DEMO_SYSTEMS]
    stats = []
    for ck, system in zip(src, DEMO_SYSTEMS):
        out = tmp_path / f"{system.split('/')[1]}.safetensors"
        assert main(["measure", "-q", "--model", ck, "--data", system, "--limit", "4",
                     "-o", str(out)]) == 0
        stats.append(str(out))
    assert main(["solve", "-q", "--model", *src, "--stats", *stats, "-O", "prior=mean",
                 "-O", "ridge_mode=relative", "-O", "ridge=1e-3", "-o",
                 str(tmp_path / "a.pt"), "--report", str(tmp_path / "r.md")]) == 0
    assert main(["merge", "-q", "--method", "gffmerge", "--model", *src, "--data",
                 *DEMO_SYSTEMS, "--limit", "4", "-O", "prior=mean", "-O", "ridge_mode=relative",
                 "-O", "ridge=1e-3", "-o", str(tmp_path / "b.pt")]) == 0
    a, meta = load_checkpoint(tmp_path / "a.pt")
    b, _ = load_checkpoint(tmp_path / "b.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert meta["method"] == "gffmerge" and meta["options"]["prior"] == "mean"
    assert "| layer |" in (tmp_path / "r.md").read_text()
    # the YAML form in the mergekit shape gives the same model
    cfg = {"merge_method": "gffmerge", "limit": 4,
           "parameters": {"prior": "mean", "ridge_mode": "relative", "ridge": 1e-3},
           "models": [{"model": c, "data": s} for c, s in zip(src, DEMO_SYSTEMS)],
           "output": str(tmp_path / "c.pt")}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", "-q", "--config", str(tmp_path / "m.yaml")]) == 0
    c, _ = load_checkpoint(tmp_path / "c.pt")
    assert all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_cli_eval_and_methods_json(ckpts, capsys):
    _, paths = ckpts
    assert main(["eval", "--json", "-q", "--model", str(paths["joint"]), "--data",
                 *DEMO_SYSTEMS, "--max-frames", "20"]) == 0
    res = json.loads(capsys.readouterr().out)[str(paths["joint"])]
    assert set(res) == {"all", *DEMO_SYSTEMS}
    assert res["all"]["frames"] == sum(res[s]["frames"] for s in DEMO_SYSTEMS)
    assert main(["methods", "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)["methods"]]
    assert {"average", "gffmerge", "regmean"} <= set(names)


@pytest.mark.parametrize(("argv", "message"), [
    (["merge", "--model", "missing.pt", "--data", "x", "-o", "o.pt"], "checkpoint not found"),
    (["merge", "--model", "{beta}", "--data", "lips20/nope", "-o", "o.pt"],
     "no shipped system"),
    (["merge", "--model", "{beta}", "{gamma}", "--data", "lips20/beta-Li3PS4", "-o", "o.pt"],
     "2 models but 1 --data"),
    (["solve", "--model", "{beta}", "--method", "tiez", "-o", "o.pt"], "unknown merge method"),
    (["solve", "--model", "{beta}", "-O", "ridge_scale=2", "-o", "o.pt"], "no option"),
])
def test_cli_bad_input_is_one_line_and_exit_2(ckpts, capsys, argv, message):
    _, paths = ckpts
    subs = {"{beta}": str(paths["lips20/beta-Li3PS4"]),
            "{gamma}": str(paths["lips20/gamma-Li3PS4"])}
    assert main([subs.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_demo_end_to_end_on_a_few_frames(tmp_path, monkeypatch):
    """The demo's rMD17 pair on tiny models laid out like checkpoints/: every row, a chart."""
    root = tmp_path / "ckpts"
    pair = next(p for p in PAIRS if p.name == "rmd17")
    paths = pair_checkpoints(root, pair)
    train(TrainConfig(systems=list(pair.systems), model="gns", model_config=TINY, epochs=1,
                      **FEW), output=paths["foundation"], progress=False)
    for system in pair.systems:
        train(TrainConfig(systems=[system], role="finetune", init=str(paths["foundation"]),
                          epochs=1, **FEW), output=paths[system], progress=False)
    train(TrainConfig(systems=list(pair.systems), role="joint", init=str(paths["foundation"]),
                      epochs=1, **FEW), output=paths["joint"], progress=False)
    monkeypatch.setattr(gffmerge.demo, "PAIRS", (replace(pair, frames=8, search_frames=4,
                                                         val_frames=4, repair_frames=6,
                                                         repair_epochs=1),))
    monkeypatch.setenv("GFFMERGE_CHECKPOINTS", str(root))
    out = tmp_path / "demo"
    assert main(["demo", "-q", "--out", str(out), "--frames", "2"]) == 0
    report = (out / "report.md").read_text()
    for label in ("foundation", "fine-tune ethanol", "joint (gold standard)", "average",
                  "gffmerge (paper recipe)", "default + repair"):
        assert f"| {label} |" in report
    assert "| default (progressive): " in report  # with what it returned
    assert (out / "methods.png").stat().st_size > 1000
    assert main(["demo", "-q", "--out", str(out), "--pair", "nope"]) == 2


def test_synthetic_demo(tmp_path):
    assert main(["demo", "--synthetic", "-q", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "synthetic.md").read_text()
    assert "| gffmerge |" in text and "| regmean |" in text


def test_merge_api_on_force_fields(ckpts):
    _, paths = ckpts
    models = [load_checkpoint(paths[s])[0] for s in DEMO_SYSTEMS]
    data = load_dataset(list(DEMO_SYSTEMS)).split("train")
    loaders = [data.for_system(s).batches(3, models[0].cutoff) for s in DEMO_SYSTEMS]
    result = gffmerge.merge(models, loaders, method="gffmerge", limit=3, progress=False)
    names = [lr.name for lr in result.report.layers]
    assert any(n.endswith("edge_in") for n in names)  # the EdgeConcatLinear is solved
    edge = next(lr for lr in result.report.layers if lr.name.endswith("edge_in"))
    node = next(lr for lr in result.report.layers if lr.name.endswith("node_mlp.0"))
    assert edge.rows[0] > node.rows[0] > 0  # edge layers see edges, node layers atoms


def test_cli_merge_default_is_progressive_with_validation_split(tmp_path, capsys):
    """Without --method, `gffmerge merge` runs the package default on the sources' training
    frames and picks its ridge on the same systems' validation frames."""
    root = Path(__file__).resolve().parents[1] / "checkpoints" / "rmd17"
    src = [str(root / f"gns_{m}.pt") for m in ("ethanol", "malonaldehyde")]
    out = tmp_path / "merged.pt"
    assert main(["merge", "--json", "-q", "--model", *src, "--data", "rmd17/ethanol",
                 "rmd17/malonaldehyde", "--limit", "16", "-O", "search_frames=8",
                 "-O", "val_frames=8", "-O", "ridge_grid=[1e-3, 1e-2]", "--no-base",
                 "-o", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["picked"].startswith("progressive, ridge ")  # told what it chose
    assert "validation force MAE" in summary["picked"] and "the average's" in summary["picked"]
    model, meta = load_checkpoint(out)
    assert meta["method"] == "progressive"
    opts = meta["options"]
    assert opts["frames"] == 16 and opts["chosen_ridge"] in (1e-3, 1e-2)
    assert opts["validation"].startswith("val_data")
    assert len(opts["grid"]) == 2 and all(p["val_force_mae_mev_per_a"] > 0 for p in opts["grid"])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
