"""Continuing a training run from its checkpoint (gffmerge.continuation): zero more epochs
change nothing, epochs and CPU/wall time add up over the phases, the best epoch counts on
from phase 1, a second phase that never improves keeps phase 1's weights bit for bit, and
every later phase of the rMD17 recipe meets the plateau criterion whenever patience stops
it, and the recipe runs each later phase once and none on a checkpoint at its plateau."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gffmerge.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gffmerge.continuation import continue_training
from gffmerge.plateau import plateau_reached
from gffmerge.recipes import (
    RMD17,
    ContinuePhase,
    PlateauRule,
    _plateau_check,
    before_anneal,
    configs,
    next_phase,
    plateau_check_phase,
    plateau_state,
)
from gffmerge.train import TrainConfig, train

TINY = dict(latent_dim=8, hidden_dim=12, n_layers=2, n_rbf=6, cutoff=4.0)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A 3-epoch plateau run of a tiny GNS, saved: (path, metadata, state_dict)."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("cont") / "phase1.pt"
    cfg = TrainConfig(systems=["rmd17/ethanol"], model="gns", model_config=TINY,
                      batch_size=8, schedule="plateau", monitor="val_force_mae", seed=0,
                      max_frames=60, epochs=3, lr=1e-3, patience=5, min_delta=0.0)
    train(cfg, output=path, progress=False)
    model, meta = load_checkpoint(path)
    return path, meta, {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_zero_more_epochs_returns_the_same_weights_and_totals(first, tmp_path):
    path, meta, state = first
    out = tmp_path / "zero.pt"
    continue_training(path, epochs=0, patience=2, output=out, progress=False)
    model, new = load_checkpoint(out)
    assert _same(model.state_dict(), state)
    assert new["metrics"]["epochs_run"] == meta["metrics"]["epochs_run"] == 3
    assert new["metrics"]["best_epoch"] == meta["metrics"]["best_epoch"]
    assert new["cpu_seconds"] == meta["cpu_seconds"]
    assert new["wall_seconds"] == meta["wall_seconds"]
    assert new["history"] == meta["history"]
    assert [p["epochs_run"] for p in new["phases"]] == [3, 0]


def test_epochs_and_times_add_up_over_the_phases(first, tmp_path):
    path, meta, _ = first
    out = tmp_path / "more.pt"
    result = continue_training(path, epochs=4, patience=10, output=out, progress=False)
    _, new = load_checkpoint(out)
    one, two = new["phases"]
    assert two["epochs_run"] == 4 and new["metrics"]["epochs_run"] == 3 + 4
    assert new["cpu_seconds"] == pytest.approx(meta["cpu_seconds"] + two["cpu_seconds"])
    assert new["wall_seconds"] == pytest.approx(meta["wall_seconds"] + two["wall_seconds"])
    assert two["cpu_seconds"] > 0 and one["cpu_seconds"] == meta["cpu_seconds"]
    h = new["history"]
    assert [r["epoch"] for r in h] == list(range(7))
    assert all(b["seconds"] > a["seconds"] for a, b in zip(h, h[1:]))
    assert h[:3] == meta["history"]
    # phase 2 starts at the learning rate phase 1 ended with, without a warm-up
    assert h[3]["lr"] == pytest.approx(meta["history"][-1]["lr"])
    # the best epoch counts from phase 1's first epoch and is the best monitored value
    vals = [r["val_force_mae_mev_per_a"] for r in h]
    local = two["best_epoch"]
    expected = 3 + local if local >= 0 else meta["metrics"]["best_epoch"]
    assert new["metrics"]["best_epoch"] == expected
    if local >= 0:
        assert vals[expected] == min(vals[3:]) and vals[expected] < min(vals[:3])
    # the first phase's config (and so its data, split and init) is kept
    assert new["config"] == meta["config"] and two["config"]["validate_init"] is True
    assert result.metrics["epochs_run"] == 7 and len(result.history) == 7


def test_a_second_phase_that_never_improves_keeps_phase_one(first, tmp_path):
    path, meta, state = first
    out = tmp_path / "stale.pt"
    # min_delta 0.9: no epoch can beat the starting model by 90 %
    continue_training(path, epochs=5, patience=2, min_delta=0.9, output=out, progress=False)
    model, new = load_checkpoint(out)
    assert _same(model.state_dict(), state)
    assert new["metrics"]["stopped_by"] == "patience" and new["metrics"]["epochs_run"] == 5
    assert new["metrics"]["best_epoch"] == meta["metrics"]["best_epoch"]
    assert new["metrics"]["test"] == meta["metrics"]["test"]


def test_continuing_in_place_and_twice_appends_phases(first, tmp_path):
    path, meta, _ = first
    work = tmp_path / "inplace.pt"
    work.write_bytes(Path(path).read_bytes())
    continue_training(work, epochs=1, patience=3, progress=False)
    continue_training(work, epochs=1, patience=3, progress=False)
    _, new = load_checkpoint(work)
    assert [p["epochs_run"] for p in new["phases"]] == [3, 1, 1]
    assert [p["start_epoch"] for p in new["phases"][1:]] == [3, 4]
    assert new["metrics"]["epochs_run"] == 5 and len(new["history"]) == 5
    assert new["cpu_seconds"] == pytest.approx(sum(p["cpu_seconds"] for p in new["phases"]))


def test_a_cosine_phase_anneals_the_learning_rate_to_its_floor(first, tmp_path):
    """The anneal of a plateau recipe: the learning rate decays monotonically from the one
    phase 1 ended with to min_lr_ratio of it at the last step; every epoch runs when
    patience equals the epochs, and the best epoch is the lowest value (min_delta 0)."""
    path, meta, _ = first
    out = tmp_path / "anneal.pt"
    continue_training(path, epochs=4, patience=4, min_delta=0.0, schedule="cosine",
                      output=out, progress=False)
    _, new = load_checkpoint(out)
    phase = new["phases"][-1]
    assert phase["config"]["schedule"] == "cosine" and phase["epochs_run"] == 4
    lr0 = meta["history"][-1]["lr"]
    lrs = [r["lr"] for r in new["history"][3:]]
    assert all(b < a for a, b in zip(lrs, lrs[1:])) and lrs[0] < lr0
    assert lrs[-1] == pytest.approx(lr0 * meta["config"]["min_lr_ratio"], rel=1e-12)
    vals = [r["val_force_mae_mev_per_a"] for r in new["history"][3:]]
    if phase["best_epoch"] >= 0:
        assert vals[phase["best_epoch"]] == min(vals)
    with pytest.raises(ValueError, match="schedule must be plateau or cosine"):
        continue_training(path, epochs=1, patience=1, schedule="linear", progress=False)


def test_before_anneal_is_the_plateau_rules_record_before_the_last_phase(first, tmp_path):
    path, meta, _ = first
    work = tmp_path / "two.pt"
    continue_training(path, epochs=2, patience=5, output=work, progress=False)
    _, plateau_meta = load_checkpoint(work)
    assert before_anneal(plateau_meta) is None and before_anneal(meta) is None
    continue_training(work, epochs=2, patience=2, min_delta=0.0, schedule="cosine",
                      progress=False)
    _, annealed = load_checkpoint(work)
    assert before_anneal(annealed) == (5, plateau_meta["metrics"]["best_epoch"])
    assert len(annealed["history"]) == 7


def test_a_checkpoint_without_history_is_refused_in_one_line(first, tmp_path):
    path, _, _ = first
    model, _ = load_checkpoint(path)
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, model, {"role": "finetune"})
    before = bare.read_bytes()
    with pytest.raises(CheckpointError, match="cannot be continued") as err:
        continue_training(bare, epochs=2, patience=2, progress=False)
    assert "\n" not in str(err.value) and bare.read_bytes() == before
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        continue_training(path, epochs=-1, patience=2, progress=False)


def test_rmd17_later_phases_meet_the_criterion_whenever_patience_stops_them():
    phases = RMD17.plateau.then
    for model in ("gns", "painn"):
        for role, cfg in configs(RMD17, model, Path("ck"))[1:]:
            before = cfg.epochs  # worst case: every earlier phase ran its whole ceiling
            for phase in phases:
                assert cfg.role in phase.max_minutes, role
                for n in range(phase.patience + 1, phase.epochs + 1):
                    total = before + n
                    history = [{}] * total
                    assert plateau_reached(history, total - 1 - phase.patience), (role, n)
                assert phase.patience >= math.ceil(0.2 * (before + phase.epochs))
                before += phase.epochs


def _meta(n_phases: int, epochs: int, best: int) -> dict:
    phases = [{"epochs_run": epochs}] * n_phases if n_phases > 1 else None
    return {"history": [{}] * epochs, "metrics": {"best_epoch": best}, "phases": phases}


def test_next_phase_runs_each_phase_once_and_stops_a_checkpoint_at_its_plateau():
    rule = PlateauRule(max_minutes={"finetune": 1.0},
                       then=(ContinuePhase(10, 4, {"finetune": 1.0, "joint": 2.0}),
                             ContinuePhase(20, 8, {"finetune": 1.0, "joint": 2.0},
                                           only_below_plateau=True),
                             ContinuePhase(30, 9, {"joint": 2.0})))
    # a phase-1 checkpoint gets phase 2 even at a plateau (phase 2 is unconditional)
    number, phase = next_phase(rule, "finetune", _meta(1, 10, 2))
    assert number == 2 and phase is rule.then[0]
    # after phase 2: phase 3 only while the criterion is not met (best 19 of 20: not met)
    number, phase = next_phase(rule, "finetune", _meta(2, 20, 19))
    assert number == 3 and phase is rule.then[1]
    assert next_phase(rule, "finetune", _meta(2, 20, 10)) is None  # at a plateau: done
    # a plateau ends the recipe, also before a later phase that would apply to the role
    assert next_phase(rule, "joint", _meta(2, 20, 10)) is None
    number, _ = next_phase(rule, "joint", _meta(3, 40, 39))
    assert number == 4
    # every phase run: nothing left; a phase whose budget does not name the role is passed
    assert next_phase(rule, "joint", _meta(4, 70, 69)) is None
    assert next_phase(rule, "finetune", _meta(3, 40, 39)) is None
    assert next_phase(None, "finetune", _meta(1, 10, 9)) is None


def test_the_anneal_runs_once_after_the_plateau_phases_whatever_ended_them():
    anneal = ContinuePhase(5, 5, {"finetune": 1.0}, schedule="cosine", min_delta=0.0)
    rule = PlateauRule(max_minutes={"finetune": 1.0, "joint": 1.0},
                       then=(ContinuePhase(10, 4, {"finetune": 1.0, "joint": 1.0},
                                           only_below_plateau=True),
                             ContinuePhase(20, 8, {"finetune": 1.0, "joint": 1.0},
                                           only_below_plateau=True)),
                       anneal=anneal)
    # at a plateau after phase 1: the plateau phases end, the anneal comes next
    assert next_phase(rule, "finetune", _meta(1, 10, 2)) == (2, anneal)
    # short of it: the plateau phases first, then the anneal once they are used up
    assert next_phase(rule, "finetune", _meta(1, 10, 9))[0] == 2
    assert next_phase(rule, "finetune", _meta(3, 40, 39)) == (4, anneal)
    # an annealed checkpoint is finished, even one short of the criterion
    annealed = _meta(3, 40, 39)
    annealed["phases"] = annealed["phases"] + [{"config": {"schedule": "cosine"}}]
    annealed["history"] = [{}] * 45
    assert next_phase(rule, "finetune", annealed) is None
    # a role the anneal does not name ends with the plateau phases, as before
    assert next_phase(rule, "joint", _meta(3, 40, 39)) is None
    assert next_phase(rule, "joint", _meta(1, 10, 2)) is None


def test_an_interrupted_phase_is_resumed_with_what_its_budgets_left():
    """A killed or Ctrl-C'd phase is not counted as run: the next --continue runs the
    rest of it (epochs and wall minutes left), then goes on; phase 1 and the anneal too."""
    anneal = ContinuePhase(20, 20, {"finetune": 10.0}, schedule="cosine", min_delta=0.0)
    rule = PlateauRule(max_minutes={"finetune": 30.0},
                       then=(ContinuePhase(60, 24, {"finetune": 20.0}),
                             ContinuePhase(240, 96, {"finetune": 25.0})), anneal=anneal)
    p1 = {"epochs_run": 30, "stopped_by": "wall budget", "wall_seconds": 1800.0}
    cut2 = {"epochs_run": 10, "stopped_by": "interrupted", "wall_seconds": 300.0,
            "config": {"schedule": "plateau"}, "phase": 2}
    meta = {"history": [{}] * 40, "metrics": {"best_epoch": 39}, "phases": [p1, cut2]}
    number, phase = next_phase(rule, "finetune", meta)
    assert number == 2 and phase.epochs == 50 and phase.max_minutes["finetune"] == 15.0
    assert (phase.patience, phase.schedule) == (24, "plateau")
    # cut again: the two pieces count together
    cut2b = {**cut2, "epochs_run": 45, "wall_seconds": 540.0}
    meta["phases"] = [p1, cut2, cut2b]
    number, phase = next_phase(rule, "finetune", meta)
    assert number == 2 and phase.epochs == 5 and phase.max_minutes["finetune"] == 6.0
    # the rest finished (or nothing left): phase 3 follows
    meta["phases"] = [p1, cut2, {**cut2b, "stopped_by": "epochs"}]
    assert next_phase(rule, "finetune", meta) == (3, rule.then[1])
    meta["phases"] = [p1, cut2, {**cut2b, "epochs_run": 50}]
    assert next_phase(rule, "finetune", meta) == (3, rule.then[1])
    # older records carry no number: they count by position, as before
    old = {k: v for k, v in cut2.items() if k != "phase"}
    meta["phases"] = [p1, old]
    assert next_phase(rule, "finetune", meta)[0] == 2
    # an interrupted anneal is resumed, a finished one ends the checkpoint
    cut_anneal = {"epochs_run": 8, "stopped_by": "interrupted", "wall_seconds": 120.0,
                  "config": {"schedule": "cosine"}, "phase": 4}
    meta["phases"] = [p1, {**cut2b, "stopped_by": "epochs"}, {"epochs_run": 3, "phase": 3},
                      cut_anneal]
    number, phase = next_phase(rule, "finetune", meta)
    assert number == 4 and phase.schedule == "cosine" and phase.epochs == 12
    assert phase.max_minutes["finetune"] == 8.0
    meta["phases"][-1] = {**cut_anneal, "stopped_by": "epochs"}
    assert next_phase(rule, "finetune", meta) is None
    # an anneal in two pieces: before_anneal still reads the plateau phases only
    ph = [{"epochs_run": 30, "best_epoch": 25},
          {"epochs_run": 20, "best_epoch": 12, "start_epoch": 30, "config": {}},
          {"epochs_run": 8, "best_epoch": 7, "start_epoch": 50,
           "config": {"schedule": "cosine"}, "stopped_by": "interrupted"},
          {"epochs_run": 12, "best_epoch": 11, "start_epoch": 58,
           "config": {"schedule": "cosine"}}]
    assert before_anneal({"phases": ph}) == before_anneal({"phases": ph[:2] + ph[3:]}) \
        == (50, 42)
    # the criterion on the epochs before the anneal: 50 epochs, best 42 (7 >= 10 fails)
    history = [{}] * 70
    meta = {"phases": ph, "history": history, "metrics": {"best_epoch": 69}}
    assert plateau_state(meta) == (50, 42, False)
    ph2 = [{**ph[0], "best_epoch": 20}, {**ph[1], "best_epoch": -1}, *ph[2:]]
    assert plateau_state({**meta, "phases": ph2}) == (50, 20, True)
    # a plateau phase after the anneal: the whole history counts again, with its best epoch
    later = {"epochs_run": 30, "best_epoch": -1, "start_epoch": 70, "config": {}}
    meta = {"phases": [*ph, later], "history": [{}] * 100, "metrics": {"best_epoch": 69}}
    assert before_anneal(meta) is None
    assert plateau_state(meta) == (100, 69, True)
    assert plateau_state({**meta, "metrics": {"best_epoch": 85}}) == (100, 85, False)
    # phase 1 interrupted: its own config is the budget
    first = {"history": [{}] * 20, "metrics": {"best_epoch": 19}, "interrupted": True,
             "wall_seconds": 600.0,
             "config": {"epochs": 60, "patience": 12, "max_minutes": 30.0}}
    number, phase = next_phase(rule, "finetune", first)
    assert number == 1 and (phase.epochs, phase.patience) == (40, 12)
    assert phase.max_minutes["finetune"] == 20.0
    assert next_phase(rule, "finetune", {**first, "interrupted": False})[0] == 2


def test_an_interrupted_phase_keeps_its_finished_epochs(first, tmp_path, monkeypatch):
    """Ctrl-C in a later phase saves what it finished (as a first phase does) instead of
    losing the phase: history, best epoch and times cover the finished epochs."""
    import gffmerge.train as train_mod

    path, meta, _ = first
    out = tmp_path / "cut.pt"
    steps = math.ceil(meta["train_frames"] / 8)
    calls, loss = [0], train_mod._loss

    def cut(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 2 * steps:  # in the third epoch of the phase
            raise KeyboardInterrupt
        return loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_loss", cut)
    with pytest.raises(KeyboardInterrupt, match="2 finished epochs"):
        continue_training(path, epochs=5, patience=10, output=out, progress=False)
    _, new = load_checkpoint(out)
    assert new["interrupted"] is True
    assert [r["epoch"] for r in new["history"]] == list(range(5))
    assert new["history"][:3] == meta["history"]
    assert [p["epochs_run"] for p in new["phases"]] == [3, 2]
    assert new["cpu_seconds"] > meta["cpu_seconds"]
    assert load_checkpoint(path)[1]["history"] == meta["history"]  # the input is untouched


def test_a_run_from_init_records_the_architecture_it_trained(tmp_path):
    """``TrainConfig.model`` is ignored when training starts from ``init``; the checkpoint
    still records the architecture and configuration it trained (not the field's default,
    which named a PaiNN fine-tune ``"gns"``), in its config and in every continued phase."""
    from gffmerge.models import build_model

    foundation = build_model("painn", n_features=8, n_interactions=1, n_rbf=4, cutoff=4.0)
    init = save_checkpoint(tmp_path / "foundation.pt", foundation, {"role": "foundation"})
    cfg = TrainConfig(systems=["rmd17/ethanol"], role="finetune", init=str(init),
                      batch_size=8, seed=0, max_frames=40, epochs=1)
    assert cfg.model == "gns"  # the default, not what is trained
    out = tmp_path / "finetune.pt"
    train(cfg, output=out, progress=False)
    model, meta = load_checkpoint(out)
    assert model.name == "painn"
    assert meta["config"]["model"] == "painn"
    assert meta["config"]["model_config"] == foundation.config
    continue_training(out, epochs=1, patience=5, progress=False)
    _, meta = load_checkpoint(out)
    assert [p["config"]["model"] for p in meta["phases"]] == ["painn", "painn"]


def test_a_plateau_check_that_never_improves_meets_the_criterion_whatever_the_history():
    """The check's patience (a quarter of the epochs so far) is enough: after that many
    epochs without a gain the criterion holds for every length and best epoch."""
    for n in (1, 2, 3, 5, 7, 20, 104, 769, 1001):
        for best in sorted({0, n // 2, n - 2, n - 1} - {-1}):
            if best < 0:
                continue
            meta = {"history": [{"lr": 1.0}] * n, "metrics": {"best_epoch": best}}
            check = plateau_check_phase(meta)
            if plateau_reached(meta["history"], best):
                assert check is None
                continue
            lr, patience = check
            assert plateau_reached([{}] * (n + patience), best), (n, best, patience)
            # and no smaller patience is guaranteed to: the best at the last epoch
            if best == n - 1 and patience > 1:
                assert not plateau_reached([{}] * (n + patience - 1), best)


def test_a_plateau_check_starts_where_the_last_plateau_phase_ended(first, tmp_path, capsys):
    path, meta, _ = first
    work = tmp_path / "check.pt"
    continue_training(path, epochs=2, patience=5, output=work, progress=False)
    continue_training(work, epochs=2, patience=2, min_delta=0.0, schedule="cosine",
                      progress=False)
    model, annealed = load_checkpoint(work)
    # the tiny run's phase 2 may or may not have improved: say it did at its last epoch
    phases = [dict(p) for p in annealed["phases"]]
    phases[1]["best_epoch"] = 1
    annealed = {**annealed, "phases": phases}
    save_checkpoint(work, model, annealed)
    assert before_anneal(annealed) == (5, 4) and not plateau_state(annealed)[2]
    lr, patience = plateau_check_phase(annealed)
    assert lr == annealed["history"][4]["lr"] and lr > annealed["history"][-1]["lr"]
    assert patience == math.ceil(len(annealed["history"]) / 4) == 2
    summary = _plateau_check(work, "CMD --plateau-check", progress=False)
    _, checked = load_checkpoint(work)
    phase = checked["phases"][-1]
    assert phase["plateau_check"] and phase["command"] == "CMD --plateau-check"
    assert phase["start_lr"] == lr and phase["start_epoch"] == 7
    assert 1 <= phase["epochs_run"] <= 3 * patience
    assert before_anneal(checked) is None  # the whole history counts again
    n, best, reached = plateau_state(checked)
    assert (summary["epochs"], summary["best_epoch"], summary["plateau"]) == (n, best, reached)
    if phase["stopped_by"] == "patience":
        assert reached
    # a checkpoint at its plateau is left as it is
    at = tmp_path / "at.pt"
    model, m = load_checkpoint(path)
    save_checkpoint(at, model, {**m, "history": m["history"] * 4,
                                "metrics": {**m["metrics"], "best_epoch": 0}})
    before = at.read_bytes()
    assert _plateau_check(at, "CMD", progress=False)["plateau"]
    assert at.read_bytes() == before
    assert "meets the plateau criterion already" in capsys.readouterr().out


def test_plateau_check_and_continue_together_exit_2(capsys):
    from gffmerge.recipes import main
    assert main(["--plateau-check", "--continue", "--readme-only"]) == 2
    assert "--plateau-check and --continue" in capsys.readouterr().err


def test_the_readme_says_what_ended_each_checkpoint():
    from gffmerge.recipes import _stopped_by
    plateau = {"epochs_run": 60, "best_epoch": 50, "stopped_by": "wall budget", "config": {}}
    anneal = {"epochs_run": 20, "best_epoch": 19, "config": {"schedule": "cosine"}}
    check = {"epochs_run": 193, "best_epoch": -1, "stopped_by": "patience", "config": {},
             "plateau_check": True}
    assert _stopped_by({"metrics": {"stopped_by": "patience"}}) == "patience"
    assert _stopped_by({"phases": [{}, plateau, anneal]}) == \
        "wall budget, then a 20-epoch anneal"
    assert _stopped_by({"phases": [{}, plateau, anneal, check]}) == \
        "a 193-epoch plateau check (no gain, stopped by patience)"
    assert "(a gain, stopped by epochs)" in _stopped_by(
        {"phases": [{}, anneal, {**check, "best_epoch": 3, "stopped_by": "epochs"}]})
    assert "(a gain, interrupted before its end)" in _stopped_by(
        {"phases": [{}, anneal, {**check, "best_epoch": 3, "stopped_by": "interrupted"}]})


def _short_of_plateau(path: Path, root: Path) -> tuple[Path, torch.nn.Module, dict]:
    """The tiny run saved as ``ROOT/rmd17/gns_ethanol.pt`` with its best at the last epoch:
    short of the criterion, so a check runs. Returns (that path, model, metadata)."""
    (root / "rmd17").mkdir(parents=True)
    target = root / "rmd17" / "gns_ethanol.pt"
    model, m = load_checkpoint(path)
    save_checkpoint(target, model, {**m, "metrics": {**m["metrics"], "best_epoch": 2}})
    return target, model, m


def test_the_recipes_cli_runs_a_plateau_check_on_the_roles_given(first, tmp_path, capsys):
    from gffmerge.recipes import main
    path, meta, _ = first
    root = tmp_path / "ckpt"
    target, model, m = _short_of_plateau(path, root)
    other = root / "rmd17" / "gns_malonaldehyde.pt"
    save_checkpoint(other, model, m)
    untouched = other.read_bytes()
    assert main(["--root", str(root), "--dataset", "rmd17", "--model", "gns", "--roles",
                 "ethanol", "--plateau-check", "-q"]) == 0
    _, checked = load_checkpoint(target)
    phase = checked["phases"][-1]
    assert phase["plateau_check"] and phase["command"].endswith(
        "--dataset rmd17 --model gns --roles ethanol --plateau-check")
    assert len(checked["history"]) == 3 + phase["epochs_run"]
    assert other.read_bytes() == untouched
    assert (root / "README.md").is_file()
    assert '"plateau":' in capsys.readouterr().out


def _fake_check(gains: list[bool], calls: list[int]):
    """A stand-in for ``continue_training`` that runs no model: check i adds its epochs with
    the best at the last one when ``gains[i]`` (a late gain) and none otherwise."""
    def check(out, *, epochs, patience, lr, progress, metadata):
        model, meta = load_checkpoint(out)
        gain = gains[len(calls)]
        calls.append(patience)
        n = len(meta["history"])
        run = epochs if gain else patience
        history = meta["history"] + [{**meta["history"][-1], "epoch": n + i, "lr": lr}
                                     for i in range(run)]
        best = n + run - 1 if gain else meta["metrics"]["best_epoch"]
        phase = {"epochs_run": run, "best_epoch": run - 1 if gain else -1, "config": {},
                 "stopped_by": "epochs" if gain else "patience", **metadata}
        save_checkpoint(out, model, {**meta, "history": history,
                                     "metrics": {**meta["metrics"], "best_epoch": best},
                                     "phases": list(meta.get("phases") or []) + [phase]})
    return check


@pytest.mark.parametrize("gains, checks, ran, reached", [
    ([True, False, True], 3, 2, True),   # the second check stalls: plateau, no third
    ([True, True, True], 3, 3, False),   # every check gains late: stops at the limit
    ([True, False], 1, 1, False),        # one check by default, whatever it found
    ([False], 3, 1, True),
])
def test_repeated_plateau_checks_stop_at_the_plateau_or_the_limit(
        first, tmp_path, monkeypatch, gains, checks, ran, reached):
    import gffmerge.continuation as continuation
    path, meta, _ = first
    work = tmp_path / "checks.pt"
    model, m = load_checkpoint(path)
    save_checkpoint(work, model, {**m, "metrics": {**m["metrics"], "best_epoch": 2}})
    calls: list[int] = []
    monkeypatch.setattr(continuation, "continue_training", _fake_check(gains, calls))
    summary = _plateau_check(work, "CMD", progress=False, checks=checks)
    _, after = load_checkpoint(work)
    assert summary["checks"] == len(calls) == ran
    assert summary["plateau"] is reached is plateau_state(after)[2]
    added = [p for p in after["phases"] if p.get("plateau_check")]
    assert len(added) == ran and all(p["command"] == "CMD" for p in added)
    # each check's patience is a quarter of the history it started from
    lengths = [3] + [3 + sum(p["epochs_run"] for p in added[:i + 1]) for i in range(ran)]
    assert calls == [math.ceil(n / 4) for n in lengths[:ran]]


def test_checks_needs_plateau_check_and_at_least_one(capsys):
    from gffmerge.recipes import main
    assert main(["--checks", "2", "--readme-only"]) == 2
    assert "give it with --plateau-check" in capsys.readouterr().err
    assert main(["--plateau-check", "--checks", "0", "--readme-only"]) == 2
    assert "--checks 0" in capsys.readouterr().err


def test_an_interrupted_recipe_run_says_so_and_exits_130(first, tmp_path, monkeypatch, capsys):
    import gffmerge.continuation as continuation
    from gffmerge.recipes import main
    path, _, _ = first
    root = tmp_path / "ckpt"
    target, _, _ = _short_of_plateau(path, root)

    def interrupted(out, **kw):
        raise KeyboardInterrupt(f"training interrupted; the best model so far saved to {out}")
    monkeypatch.setattr(continuation, "continue_training", interrupted)
    assert main(["--root", str(root), "--dataset", "rmd17", "--model", "gns", "--roles",
                 "ethanol", "--plateau-check", "--checks", "3", "-q"]) == 130
    err = capsys.readouterr().err
    assert "interrupted: training interrupted" in err and str(target) in err
    assert (root / "README.md").is_file()
