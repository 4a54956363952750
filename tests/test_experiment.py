"""``gffmerge experiment`` end to end on a tiny foundation and a few rMD17 frames."""

import json
import math

import pytest

from gffmerge import methods
from gffmerge.checkpoint import load_checkpoint
from gffmerge.cli import main
from gffmerge.experiment import RESULT_METRICS
from gffmerge.train import TrainConfig, train

SYSTEMS = ["rmd17/ethanol", "rmd17/malonaldehyde"]
TINY = {"latent_dim": 8, "hidden_dim": 8, "n_layers": 1, "n_rbf": 6, "cutoff": 4.0}
# A cheap run: 30 frames per system (24/3/3 after the split), 4 training frames, 1 epoch.
NO_FOUNDATION = "<no --foundation>"  # marks a bad-argument case that omits --foundation
FAST = ["--train-frames", "4", "--finetune-epochs", "1", "--max-frames", "30"]


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    path = tmp_path_factory.mktemp("foundation") / "foundation.pt"
    train(TrainConfig(systems=SYSTEMS, model="gns", model_config=TINY, epochs=1,
                      train_frames=6, val_frames=4, test_frames=4, batch_size=3,
                      max_frames=30), output=path, progress=False)
    return path


@pytest.fixture(scope="module")
def finished(foundation, tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    chosen = ["average", "ties", "gffmerge", methods.DEFAULT_METHOD]
    argv = ["experiment", "-q", "--foundation", str(foundation), "--systems", *SYSTEMS,
            "--methods", ",".join(chosen), *FAST, "--repair", "--switch", "--out", str(out)]
    assert main(argv) == 0
    return out, chosen, argv


def test_results_json_has_every_row_in_the_issue_shape(finished):
    out, chosen, _ = finished
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"default_method", "methods", "command", "git_commit", "machine"}
    assert res["default_method"] == methods.DEFAULT_METHOD
    expected = ["foundation", *(f"finetune:{s}" for s in SYSTEMS), "joint", "average",
                "ties", "gffmerge", "gffmerge+switch", methods.DEFAULT_METHOD,
                f"{methods.DEFAULT_METHOD}+switch", f"{methods.DEFAULT_METHOD}+repair"]
    assert list(res["methods"]) == expected
    for name, row in res["methods"].items():
        assert set(row) == {"combined", "systems", "seconds"}, name
        assert set(row["systems"]) == set(SYSTEMS), name
        for part in (row["combined"], *row["systems"].values()):
            assert set(part) == set(RESULT_METRICS), name
            assert all(math.isfinite(v) and v > 0 for v in part.values()), (name, part)
        # the combined force MAE lies between the systems' (it is their pooled mean)
        f = [row["systems"][s]["force_mae_mev_per_a"] for s in SYSTEMS]
        assert min(f) - 1e-9 <= row["combined"]["force_mae_mev_per_a"] <= max(f) + 1e-9
    assert res["methods"]["foundation"]["seconds"] == 0.0  # given, not trained here
    assert all(res["methods"][n]["seconds"] > 0 for n in expected[1:])
    # the repair row's time includes the merge it started from
    assert (res["methods"][f"{methods.DEFAULT_METHOD}+repair"]["seconds"]
            > res["methods"][methods.DEFAULT_METHOD]["seconds"])
    assert res["command"].startswith("gffmerge experiment --foundation ")
    assert "--train-frames 4 --finetune-epochs 1" in res["command"]
    assert res["command"].endswith(
        f"--repair --switch --repair-probe-epochs 1 --repair-lr auto --out {out}")
    # the switch keeps the merge's time and changes only the embedding: different errors
    for m in ("gffmerge", methods.DEFAULT_METHOD):
        assert res["methods"][f"{m}+switch"]["seconds"] == res["methods"][m]["seconds"]
        assert (res["methods"][f"{m}+switch"]["combined"]["force_mae_mev_per_a"]
                != res["methods"][m]["combined"]["force_mae_mev_per_a"])
    assert res["git_commit"] and res["machine"]
    report = (out / "report.md").read_text()
    assert all(f"| {n} |" in report for n in expected)
    # the repair chose its start among the default's pick and its other families
    line = next(x for x in report.splitlines() if "validation loss after a 1-epoch probe" in x)
    assert "pick " in line and "average " in line
    assert "the best again for 2 epochs: " in line
    assert (out / "methods.png").stat().st_size > 1000 or not _has_matplotlib()


def test_models_are_trained_from_the_foundation_and_different_rows_differ(finished,
                                                                          foundation):
    out, _, _ = finished
    for name in ("finetune_rmd17_ethanol.pt", "finetune_rmd17_malonaldehyde.pt", "joint.pt"):
        _, meta = load_checkpoint(out / "checkpoints" / name)
        assert meta["init"] == str(foundation) and meta["role"] in ("finetune", "joint")
        assert meta["train_frames"] == (8 if name == "joint.pt" else 4), name
    res = json.loads((out / "results.json").read_text())["methods"]
    maes = {n: r["combined"]["force_mae_mev_per_a"] for n, r in res.items()}
    assert maes["average"] != maes["gffmerge"] != maes["foundation"]


def test_a_rerun_reuses_the_saved_trainings(finished, capsys):
    out, _, argv = finished
    before = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    rerun = [a if a != "average,ties,gffmerge," + methods.DEFAULT_METHOD else "average"
             for a in argv if a != "--repair"]
    assert main(rerun) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    assert before == after
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == ["foundation", *(f"finetune:{s}" for s in SYSTEMS),
                                    "joint", "average"]
    report = (out / "report.md").read_text()
    assert report.count("reused checkpoint") == 3


@pytest.mark.parametrize(("args", "message"), [
    (["--systems", "rmd17/ethanol"], "at least 2 systems"),
    (["--systems", *SYSTEMS, "--methods", "average,tiez"], "unknown merge method"),
    (["--systems", *SYSTEMS, "--train-frames", "0"], "train-frames must be >= 1"),
    (["--systems", "rmd17/ethanol", "rmd17/nope"], "no shipped system"),
    (["--systems", *SYSTEMS, "--foundation", "missing.pt"], "foundation checkpoint not found"),
    (["--systems", *SYSTEMS, "--model-kind", "painn"], "is a gns model but --model-kind is "
                                                       "painn"),
    (["--systems", *SYSTEMS, "--model-kind", "mace"], "unknown --model-kind 'mace'"),
    (["--systems", *SYSTEMS, NO_FOUNDATION, "--model-kind", "schnet"],
     "no shipped schnet foundation for rmd17"),
    (["--systems", "rmd17/ethanol", "lips20/Li3P", NO_FOUNDATION],
     "shipped systems of one dataset"),
])
def test_bad_arguments_exit_2_with_one_line(foundation, tmp_path, capsys, args, message):
    given = [] if NO_FOUNDATION in args else ["--foundation", str(foundation)]
    argv = ["experiment", "-q", *given, *(a for a in args if a != NO_FOUNDATION), "--out",
            str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out" / "results.json").exists()


def test_without_foundation_the_shipped_one_of_the_model_kind_is_used(tmp_path,
                                                                      monkeypatch):
    from gffmerge.experiment import ExperimentConfig

    root = tmp_path / "shipped"
    (root / "rmd17").mkdir(parents=True)
    monkeypatch.setenv("GFFMERGE_CHECKPOINTS", str(root))
    with pytest.raises(FileNotFoundError, match="no shipped painn foundation for rmd17"):
        ExperimentConfig(None, SYSTEMS, str(tmp_path / "out"), model_kind="painn")
    model = train(TrainConfig(systems=SYSTEMS, model="painn", epochs=1, train_frames=2,
                              val_frames=2, test_frames=2, batch_size=2, max_frames=30,
                              model_config={"n_features": 4, "n_interactions": 1}),
                  output=root / "rmd17" / "painn_foundation.pt", progress=False)
    assert model.model.name == "painn"
    cfg = ExperimentConfig(None, SYSTEMS, str(tmp_path / "out"), model_kind="painn")
    assert cfg.foundation == str(root / "rmd17" / "painn_foundation.pt")
    assert "--model-kind painn" in cfg.command()
    # the default kind is gns, which this folder does not have
    with pytest.raises(FileNotFoundError, match="no shipped gns foundation"):
        ExperimentConfig(None, SYSTEMS, str(tmp_path / "out"))


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_ctrl_c_keeps_the_finished_rows(foundation, tmp_path, monkeypatch, capsys):
    import gffmerge.experiment as experiment

    real = experiment._Experiment.merge

    def interrupted(self, method, sources, foundation_path):
        if method == "regmean":
            raise KeyboardInterrupt
        return real(self, method, sources, foundation_path)

    monkeypatch.setattr(experiment._Experiment, "merge", interrupted)
    out = tmp_path / "out"
    argv = ["experiment", "-q", "--foundation", str(foundation), "--systems", *SYSTEMS,
            "--methods", "average,regmean,gffmerge", *FAST, "--out", str(out)]
    assert main(argv) == 130
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == ["foundation", *(f"finetune:{s}" for s in SYSTEMS),
                                    "joint", "average"]
    assert "| average |" in (out / "report.md").read_text()
    assert not list(out.glob(".*.tmp"))  # no half-written file left behind


def test_a_failing_method_is_recorded_and_the_others_still_run(foundation, tmp_path,
                                                                monkeypatch, capsys):
    import gffmerge.experiment as experiment

    real = experiment._Experiment.merge

    def singular(self, method, sources, foundation_path):
        if method == "regmean":
            raise ValueError("the Gram of layer(s) x is singular\nsecond line")
        return real(self, method, sources, foundation_path)

    monkeypatch.setattr(experiment._Experiment, "merge", singular)
    out = tmp_path / "out"
    argv = ["experiment", "-q", "--foundation", str(foundation), "--systems", *SYSTEMS,
            "--methods", "average,regmean,gffmerge", *FAST, "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"])[-2:] == ["average", "gffmerge"]
    assert res["failures"] == {"regmean": "ValueError: the Gram of layer(s) x is singular"}
    assert "`regmean`: ValueError: the Gram" in (out / "report.md").read_text()


def test_statistics_passes_measure_the_same_frames_in_atom_budget_batches(foundation, tmp_path):
    """Without --stats-batch-size the experiment's statistics pass measures the frames that
    batches of batch_size up to merge_frames measure, in batches of ~1 024 atoms: the same
    sums (1e-10); with it, the batches and limit of before."""
    import torch

    from gffmerge.collect import measure
    from gffmerge.experiment import ExperimentConfig, _Experiment

    model = load_checkpoint(foundation)[0].to(torch.float64)
    cfg = ExperimentConfig(str(foundation), SYSTEMS, str(tmp_path / "out"), max_frames=30,
                           merge_frames=10, batch_size=3)
    run = _Experiment(cfg, progress=False)
    auto = run.stats_loaders([model, model])
    given = run.loaders("train", [model, model])
    for a, g in zip(auto, given, strict=True):
        assert a.batch_size > cfg.batch_size and len(a) == 1  # 12 ethanol frames, one batch
        assert len(a.dataset) == 12  # ceil(10 / 3) batches of 3 frames
        sa = measure(model, a, progress=False).models[0]
        sg = measure(model, g, limit=cfg.merge_frames, progress=False).models[0]
        assert sa.graphs == sg.graphs == 12
        for name, la in sa.layers.items():
            lg = sg.layers[name]
            assert la.rows == lg.rows
            err = float((la.gram - lg.gram).abs().max() / lg.gram.abs().max())
            assert err <= 1e-10, (name, err)
    explicit = ExperimentConfig(str(foundation), SYSTEMS, str(tmp_path / "out"),
                                stats_batch_size=5)
    assert "--stats-batch-size 5" in explicit.command()
    with pytest.raises(ValueError, match="stats-batch-size"):
        ExperimentConfig(str(foundation), SYSTEMS, str(tmp_path / "o2"), stats_batch_size=0)
    for bad in (0.0, -1e-3, "fast"):
        with pytest.raises(ValueError, match="repair-lr must be a rate > 0 or 'auto'"):
            ExperimentConfig(str(foundation), SYSTEMS, str(tmp_path / "o3"), repair_lr=bad)
    fixed = ExperimentConfig(str(foundation), SYSTEMS, str(tmp_path / "o4"), repair=True,
                             repair_lr=1e-3)
    assert "--repair-lr 0.001" in fixed.command()


def test_given_sources_and_joint_are_used_as_they_are(finished, foundation, tmp_path):
    """--sources/--joint: nothing is trained, the given models' rows equal the rows they
    had where they were trained (same test split), and so does a merge of them."""
    out, _, _ = finished
    ck = out / "checkpoints"
    given = [str(ck / "finetune_rmd17_ethanol.pt"), str(ck / "finetune_rmd17_malonaldehyde.pt")]
    new = tmp_path / "given"
    argv = ["experiment", "-q", "--foundation", str(foundation), "--systems", *SYSTEMS,
            "--methods", "average", *FAST, "--sources", *given, "--joint",
            str(ck / "joint.pt"), "--out", str(new)]
    assert main(argv) == 0
    assert not (new / "checkpoints").exists() or not any((new / "checkpoints").iterdir())
    old = json.loads((out / "results.json").read_text())["methods"]
    res = json.loads((new / "results.json").read_text())
    for name in (*(f"finetune:{s}" for s in SYSTEMS), "joint", "average"):
        assert res["methods"][name]["combined"] == old[name]["combined"], name
    wall = load_checkpoint(ck / "joint.pt")[1]["wall_seconds"]
    assert res["methods"]["joint"]["seconds"] == pytest.approx(wall)
    assert f"--sources {given[0]} {given[1]} --joint" in res["command"]
    assert (new / "report.md").read_text().count("given: ") == 3


@pytest.mark.parametrize(("case", "message"), [
    ("count", "--sources gives 1 checkpoints for 2 systems"),
    ("order", "was trained on rmd17/malonaldehyde, not on rmd17/ethanol"),
    ("seed", "pass --seed 42"),
    ("missing", "--joint checkpoint not found"),
    ("base", "pass --foundation"),
])
def test_given_models_that_cannot_be_compared_are_refused(finished, foundation, tmp_path,
                                                          capsys, case, message):
    out, _, _ = finished
    ck = out / "checkpoints"
    eth, mal = str(ck / "finetune_rmd17_ethanol.pt"), str(ck / "finetune_rmd17_malonaldehyde.pt")
    extra = {"count": ["--sources", eth], "order": ["--sources", mal, eth],
             "seed": ["--sources", eth, mal, "--seed", "7"],
             "missing": ["--joint", str(tmp_path / "nope.pt")],
             "base": ["--sources", eth, mal]}[case]
    base = eth if case == "base" else str(foundation)  # a fine-tune is not their foundation
    argv = ["experiment", "-q", "--foundation", base, "--systems", *SYSTEMS, *FAST, *extra,
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()
