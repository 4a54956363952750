"""SIGTERM during training (what a batch scheduler sends at a job's time limit) saves the
best model so far, like Ctrl-C, and leaves the process's SIGTERM handler as it was."""

from __future__ import annotations

import math
import signal

import pytest
import torch

import gffmerge.train as train_mod
from gffmerge.checkpoint import load_checkpoint
from gffmerge.continuation import continue_training
from gffmerge.train import TrainConfig, train

TINY = dict(latent_dim=8, hidden_dim=12, n_layers=2, n_rbf=6, cutoff=4.0)

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(epochs: int) -> TrainConfig:
    return TrainConfig(systems=["rmd17/ethanol"], model="gns", model_config=TINY,
                       batch_size=8, schedule="plateau", monitor="val_force_mae", seed=0,
                       max_frames=60, epochs=epochs, lr=1e-3, patience=10, min_delta=0.0)


def _term_at(monkeypatch, step: int) -> None:
    """Send this process SIGTERM in training step ``step`` (1-based)."""
    calls, loss = [0], train_mod._loss

    def cut(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            signal.raise_signal(signal.SIGTERM)
        return loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_loss", cut)


def _steps_per_epoch(path) -> int:
    return math.ceil(load_checkpoint(path)[1]["train_frames"] / 8)


def test_sigterm_saves_the_finished_epochs_and_restores_the_handler(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    ref = tmp_path / "ref.pt"
    train(_cfg(1), output=ref, progress=False)
    steps = _steps_per_epoch(ref)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "cut.pt"
    _term_at(monkeypatch, 2 * steps + 1)  # first step of the third epoch
    with pytest.raises(KeyboardInterrupt, match="saved to"):
        train(_cfg(6), output=out, progress=False)
    assert signal.getsignal(signal.SIGTERM) is before
    model, meta = load_checkpoint(out)
    assert meta["interrupted"] is True
    assert meta["metrics"]["stopped_by"] == "interrupted"
    assert [r["epoch"] for r in meta["history"]] == [0, 1]
    assert meta["metrics"]["best_epoch"] in (0, 1)
    # the finished epochs are those of an uninterrupted run of the same seed
    monkeypatch.undo()
    full = tmp_path / "full.pt"
    train(_cfg(6), output=full, progress=False)
    key = "val_force_mae_mev_per_a"
    assert [r[key] for r in meta["history"]] == [
        r[key] for r in load_checkpoint(full)[1]["history"][:2]]


def test_sigterm_in_a_later_phase_keeps_it(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    first = tmp_path / "phase1.pt"
    train(_cfg(2), output=first, progress=False)
    _term_at(monkeypatch, _steps_per_epoch(first) + 1)  # second epoch of the phase
    out = tmp_path / "phase2.pt"
    with pytest.raises(KeyboardInterrupt, match="1 finished epoch"):
        continue_training(first, epochs=4, patience=10, output=out, progress=False)
    meta = load_checkpoint(out)[1]
    assert meta["interrupted"] is True
    assert [p["epochs_run"] for p in meta["phases"]] == [2, 1]
