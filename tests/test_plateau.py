"""The plateau rule of training (gffmerge.plateau, TrainConfig(schedule="plateau")): a flat
validation curve stops a run early, the learning rate is cut when validation stalls, the
weights kept are the best epoch's, and the rMD17 recipe trains with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gffmerge.data import load_dataset
from gffmerge.evaluate import evaluate
from gffmerge.plateau import Plateau, plateau_reached
from gffmerge.recipes import LIPS20, LIPS20_PAIR, RMD17, checkpoint_path, configs
from gffmerge.train import TrainConfig, train

TINY = dict(latent_dim=8, hidden_dim=12, n_layers=2, n_rbf=6, cutoff=4.0)


@pytest.fixture(scope="module")
def data():
    return load_dataset(["rmd17/ethanol"], max_frames=60)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw) -> TrainConfig:
    base = dict(systems=["rmd17/ethanol"], model="gns", model_config=TINY, batch_size=8,
                schedule="plateau", monitor="val_force_mae", seed=0)
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------- the rule on its own
def test_flat_values_stop_after_patience_and_keep_the_first():
    p = Plateau(patience=3)
    decisions = [p.step(e, 5.0) for e in range(4)]
    assert decisions == [True, False, False, False] and p.stop and p.best_epoch == 0


def test_min_delta_is_relative_and_small_gains_do_not_count():
    p = Plateau(patience=2, min_delta=0.01)
    assert p.step(0, 100.0)
    assert not p.step(1, 99.5)  # 0.5 % better: not an improvement
    assert p.step(2, 98.9)      # 1.1 % better than the best (100)
    assert (p.best, p.best_epoch, p.bad_epochs) == (98.9, 2, 0)


def test_learning_rate_is_cut_every_lr_patience_bad_epochs_down_to_the_floor():
    p = Plateau(patience=100, lr_patience=2, lr_factor=0.5, min_lr_ratio=0.2)
    scales = []
    p.step(0, 1.0)
    for e in range(1, 8):
        p.step(e, 2.0)
        scales.append(p.lr_scale)
    assert scales == [1.0, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2]
    p.step(8, 0.5)  # an improvement resets the count, not the learning rate
    assert p.bad_epochs == 0 and p.lr_scale == 0.2


def test_a_starting_value_must_be_beaten():
    p = Plateau(patience=2)
    p.start(1.0)
    assert not p.step(0, 1.5) and p.best_epoch == -1


@pytest.mark.parametrize(("kw", "message"), [
    (dict(patience=0), "patience must be >= 1"),
    (dict(patience=3, min_delta=1.0), "min_delta is relative"),
    (dict(patience=3, lr_patience=0), "lr_patience must be >= 1"),
    (dict(patience=3, lr_factor=1.5), "lr_factor must be in"),
])
def test_bad_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        Plateau(**kw)


def test_plateau_criterion_needs_a_stale_tail():
    history = [{}] * 10
    assert plateau_reached(history, best_epoch=7)      # last 2 of 10 epochs without a best
    assert not plateau_reached(history, best_epoch=8)  # only 1
    assert not plateau_reached(history, best_epoch=9)
    assert not plateau_reached([], best_epoch=-1)


# ---------------------------------------------------------------- in training
def test_flat_validation_curve_stops_early(data):
    """With lr = 0 nothing changes, so the validation curve is flat: the run stops after
    ``patience`` epochs that do not beat epoch 0, far short of its epoch ceiling."""
    result = train(_cfg(epochs=40, lr=0.0, patience=3), dataset=data, progress=False)
    m = result.metrics
    assert (m["epochs_run"], m["best_epoch"], m["stopped_by"]) == (4, 0, "patience")
    vals = [h["val_force_mae_mev_per_a"] for h in result.history]
    assert max(vals) == min(vals)


def test_progress_bar_shows_the_best_epoch_and_the_patience_used(data, capsys):
    """A user watching a long run sees whether it still improves: the epoch bar names the
    best epoch so far and the epochs since it against the patience."""
    train(_cfg(epochs=40, lr=0.0, patience=3), dataset=data, progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    last = [line for line in bar if line.startswith("train ")][-1]
    assert "best=0" in last and "wait=3/3" in last, last
    assert any("wait=1/3" in line for line in bar)
    # a continued run that never beats its starting model says so
    train(_cfg(epochs=40, lr=0.0, patience=2, validate_init=True), dataset=data, progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    last = [line for line in bar if line.startswith("train ")][-1]
    assert "best=start" in last and "wait=2/2" in last, last


def test_kept_weights_are_the_best_epochs_and_lr_follows_the_rule(data):
    """A large learning rate makes validation go up and down: the model returned scores what
    its best epoch scored, and the logged learning rate is the peak times 0.5 per
    ``lr_patience`` epochs without improvement (recounted here from the history)."""
    lr, lr_patience = 5e-2, 2
    result = train(_cfg(epochs=10, lr=lr, patience=10, lr_patience=lr_patience,
                        warmup_fraction=0.0), dataset=data, progress=False)
    vals = [h["val_force_mae_mev_per_a"] for h in result.history]
    best = result.metrics["best_epoch"]
    assert best == min(range(len(vals)), key=vals.__getitem__)
    again = evaluate(result.model, data.split("val"), batch_size=8, progress=False)["all"]
    assert again["force_mae_mev_per_a"] == pytest.approx(vals[best], rel=1e-5)
    assert result.metrics["val"]["force_mae_mev_per_a"] == pytest.approx(vals[best], rel=1e-5)
    # independent recount: the rate used in epoch e is set by the epochs before it
    expected, scale, best_so_far, bad = [], 1.0, float("inf"), 0
    for v in vals:
        expected.append(lr * scale)  # the rate logged at the end of this epoch
        if v < best_so_far:
            best_so_far, bad = v, 0
        else:
            bad += 1
            if bad % lr_patience == 0:
                scale *= 0.5
    logged = [h["lr"] for h in result.history]
    assert min(expected) < lr, "the run never stalled, so the cut was not exercised"
    assert logged == pytest.approx(expected, rel=1e-9)
    assert result.metrics["stopped_by"] in ("epochs", "patience")


def test_checkpoint_records_the_budget_and_the_stop(tmp_path, data):
    from gffmerge.checkpoint import load_checkpoint

    out = tmp_path / "m.pt"
    train(_cfg(epochs=5, lr=0.0, patience=2), dataset=data, progress=False, output=out)
    _, meta = load_checkpoint(out)
    assert meta["metrics"]["stopped_by"] == "patience" and meta["metrics"]["epochs_run"] == 3
    assert meta["cpu_seconds"] > 0 and meta["wall_seconds"] > 0
    assert meta["config"]["schedule"] == "plateau"


def test_cosine_schedule_is_unchanged_by_default():
    cfg = TrainConfig(systems=["rmd17/ethanol"])
    assert (cfg.schedule, cfg.monitor, cfg.min_delta) == ("cosine", "val_loss", 0.0)
    with pytest.raises(ValueError, match="schedule must be cosine or plateau"):
        TrainConfig(systems=["rmd17/ethanol"], schedule="step")
    with pytest.raises(ValueError, match="monitor must be one of"):
        TrainConfig(systems=["rmd17/ethanol"], monitor="val_energy")


# ---------------------------------------------------------------- the recipes
@pytest.mark.parametrize("recipe", [RMD17, LIPS20], ids=["rmd17", "lips20"])
def test_sources_train_to_a_plateau_and_the_foundation_keeps_its_schedule(recipe):
    for model in ("gns", "painn"):
        (_, foundation), *rest = configs(recipe, model, Path("ck"))
        assert foundation.schedule == "cosine"  # shipped as trained, not retrained
        for role, cfg in rest:
            assert cfg.schedule == "plateau" and cfg.monitor == "val_force_mae", role
            # a run stopped by patience has its best epoch in the first 80 % of the ceiling
            assert cfg.patience >= 0.2 * cfg.epochs and cfg.max_minutes is not None
    assert [c.epochs for _, c in configs(LIPS20, "gns", Path("ck"))] == [15, 60, 60, 60]
    assert [c.train_frames for _, c in configs(LIPS20, "painn", Path("ck"))][1:] == [
        400, 400, 800]


def test_lips20_pair_recipe_fine_tunes_from_the_lips20_foundation_to_a_plateau(tmp_path):
    for model in ("gns", "painn"):
        cfgs = configs(LIPS20_PAIR, model, tmp_path)
        # no foundation of its own: the pair starts from the LiPS20 recipe's foundation
        assert [role for role, _ in cfgs] == ["lips20/Li3P", "lips20/P2S5", "joint-Li3P-P2S5"]
        base = str(checkpoint_path(tmp_path, "lips20", model, "foundation"))
        for role, cfg in cfgs:
            assert cfg.init == base and cfg.schedule == "plateau", role
            assert cfg.patience >= 0.2 * cfg.epochs and cfg.max_minutes is not None
        assert [c.train_frames for _, c in cfgs] == [400, 400, 800]
        assert [c.systems for _, c in cfgs][-1] == ["lips20/Li3P", "lips20/P2S5"]
    assert checkpoint_path(tmp_path, LIPS20_PAIR.dir, "gns", "joint-Li3P-P2S5") == \
        tmp_path / "lips20" / "gns_joint-Li3P-P2S5.pt"
    # its later phase runs only on a checkpoint still short of the plateau criterion
    ceiling = 60
    for phase in LIPS20_PAIR.plateau.then:
        ceiling += phase.epochs
        assert phase.only_below_plateau and phase.patience >= 0.2 * ceiling


def test_demo_retrain_builds_the_checkpoints_its_pairs_use(tmp_path, monkeypatch):
    import gffmerge.recipes as recipes
    from gffmerge import demo

    calls = []
    monkeypatch.setattr(recipes, "build", lambda recipe, model, root, roles=None, **kw:
                        calls.append((recipe.name, model, root, roles)))
    demo._retrain(tmp_path, False, ["lips20"])
    assert calls == [("lips20", "gns", tmp_path, ["foundation"]),
                     ("lips20-Li3P-P2S5", "gns", tmp_path, None)]
    calls.clear()
    demo._retrain(tmp_path, False, None)
    assert [c[0] for c in calls] == ["lips20", "lips20-Li3P-P2S5", "rmd17"]
    # every checkpoint a demo pair reads is one a recipe makes
    for pair in demo.PAIRS:
        made = set()
        for recipe in recipes.DATASETS.values():
            if recipe.dir == pair.dataset:
                made |= {recipes.checkpoint_path(tmp_path, recipe.dir, pair.model, r)
                         for r, _ in recipes.configs(recipe, pair.model, tmp_path)}
        assert set(demo.pair_checkpoints(tmp_path, pair).values()) <= made, pair.name


def test_recipes_cli_refuses_a_role_no_recipe_has(tmp_path, capsys):
    """`--roles joint` on the pair recipe (whose joint role is `joint-Li3P-P2S5`) used to
    train nothing and exit 0; it must say which roles exist and exit 2, writing nothing."""
    from gffmerge.recipes import main

    code = main(["--dataset", "lips20-Li3P-P2S5", "--model", "painn", "--roles", "joint",
                 "--root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--roles joint" in err and "joint-Li3P-P2S5" in err and "Li3P" in err
    assert not any(tmp_path.iterdir())


def test_recipe_records_the_foundation_relative_to_its_root(tmp_path):
    """A checkpoint trained under a scratch --root and copied into another tree (as the
    shipped ones are) still finds the foundation it records: the path is kept relative to
    the root, not absolute."""
    import shutil

    from gffmerge.checkpoint import load_checkpoint, save_checkpoint
    from gffmerge.lineage import recorded_base
    from gffmerge.models import build_model
    from gffmerge.recipes import MODEL_CONFIGS, DatasetRecipe, build

    root = tmp_path / "scratch"
    foundation = save_checkpoint(root / "rmd17" / "gns_foundation.pt",
                                 build_model("gns", **MODEL_CONFIGS["gns"]),
                                 {"role": "foundation"})
    tiny = DatasetRecipe("tiny", foundation=(), tasks=("rmd17/ethanol",), foundation_frames=0,
                         epochs={"finetune": 1, "joint": 1},
                         lr={"finetune": 1e-3, "joint": 1e-3}, folder="rmd17",
                         train_foundation=False, train_frames=4)
    build(tiny, "gns", root, roles=["ethanol"], progress=False)
    out = root / "rmd17" / "gns_ethanol.pt"
    meta = load_checkpoint(out)[1]
    assert meta["init"] == "rmd17/gns_foundation.pt"
    assert recorded_base([(out, meta)]).samefile(foundation)
    shipped = tmp_path / "repo" / "checkpoints"
    shutil.copytree(root, shipped)
    moved = shipped / "rmd17" / "gns_ethanol.pt"
    assert recorded_base([(moved, meta)]).samefile(shipped / "rmd17" / "gns_foundation.pt")
