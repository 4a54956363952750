"""Resumable measuring (issue 11, item 4): an interrupted measurement keeps its sums in a
partial file, and resuming from it gives the statistics of an uninterrupted run bit for bit;
a partial file of another model, other data or other options is refused."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gffmerge
from gffmerge.checkpoint import load_checkpoint, save_checkpoint
from gffmerge.cli import main
from gffmerge.collect import MeasureOptions, ResumeError, default_forward
from gffmerge.collect.partial import PartialState, rank_path
from gffmerge.data import load_dataset
from gffmerge.models import SchNet

TINY = {"n_atom_basis": 8, "n_filters": 8, "n_interactions": 1, "n_rbf": 6, "cutoff": 4.0}


def _molecules(path: Path, n: int, *, seed: int) -> str:
    rng = np.random.default_rng(seed)
    z = [8, 1, 1, 6, 1]
    data = {"z": np.array(z), "pos": rng.normal(scale=1.2, size=(n, len(z), 3)),
            "energy": rng.normal(size=n) - 50.0,
            "forces": rng.normal(scale=0.1, size=(n, len(z), 3))}
    np.savez(path, **data)
    return str(path)


def _model(seed: int) -> SchNet:
    torch.manual_seed(seed)
    return SchNet(**TINY)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return {"root": root,
            "a.pt": str(save_checkpoint(root / "a.pt", _model(1), {})),
            "b.pt": str(save_checkpoint(root / "b.pt", _model(2), {})),
            # float64: float32 forwards differ in the last bit between batch shapes
            "a64.pt": str(save_checkpoint(root / "a64.pt", _model(1).double(), {})),
            "a.npz": _molecules(root / "a.npz", 40, seed=1),
            "b.npz": _molecules(root / "b.npz", 40, seed=2)}


def _loader(env, batch=3, data="a.npz"):
    model = load_checkpoint(env["a.pt"])[0]
    return model, load_dataset([env[data]]).batches_for(model, batch)


class Stop(Exception):
    """Raised by a forward to cut a measurement short."""


def _stopping_at(batch: int, how: str):
    """A forward that fails (``how="raise"``) or sends this process SIGINT/SIGTERM
    (``"SIGINT"``, ``"SIGTERM"``, ``"twice"``: two SIGINTs) during batch ``batch``."""
    seen = {"n": 0}

    def forward(model, b):
        k = seen["n"]
        seen["n"] += 1
        if k == batch:
            if how == "raise":
                raise Stop(f"stopped in batch {k}")
            signal.raise_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
            if how == "twice":
                signal.raise_signal(signal.SIGINT)
        return default_forward(model, b)
    return forward


def _same(a: gffmerge.Stats, b: gffmerge.Stats) -> None:
    """Bit-identical sums and equal counts."""
    ma, mb = a.models[0], b.models[0]
    assert (ma.graphs, ma.fingerprint, ma.data) == (mb.graphs, mb.fingerprint, mb.data)
    assert list(ma.layers) == list(mb.layers)
    for name, ls in ma.layers.items():
        other = mb.layers[name]
        assert ls.rows == other.rows, name
        assert torch.equal(ls.gram, other.gram), name
        assert (ls.cross is None) == (other.cross is None)
        if ls.cross is not None:
            assert torch.equal(ls.cross, other.cross), name


@pytest.mark.parametrize(("how", "every", "saved"), [
    ("raise", 2, 4),        # a failure in batch 5: the last periodic save (4 batches) stands
    ("SIGINT", None, 6),    # a signal in batch 5: the run stops after it, with 6 batches saved
    ("SIGTERM", None, 6),
    ("twice", 1, 5),        # a second signal stops mid-batch: the save after batch 4 stands
])
def test_resumed_measurement_equals_uninterrupted(env, tmp_path, capsys, how, every, saved):
    model, loader = _loader(env)
    assert len(loader) == 14
    full = gffmerge.measure(model, loader, cross=True, progress=False, label="a")
    partial = tmp_path / "a.partial"
    opts = {"cross": True, "label": "a", "partial_every": every, "partial_seconds": None}
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stop if how == "raise" else KeyboardInterrupt) as err:
        gffmerge.measure(model, loader, progress=False, partial=partial,
                         forward=_stopping_at(5, how), **opts)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    if how in ("SIGINT", "SIGTERM"):
        assert f"stopped by {how} after 6 of 14 batches" in str(err.value)
        assert str(partial) in str(err.value) and "--resume" in str(err.value)
    state = PartialState.load(partial)
    assert state.batches == saved and state.graphs == 3 * saved
    assert capsys.readouterr().err == ""
    resumed = gffmerge.measure(model, loader, progress=True, resume=partial, **opts)
    assert f"{saved}/14" in capsys.readouterr().err  # the bar starts where the run stopped
    _same(full, resumed)
    assert not partial.exists()  # removed after success
    assert resumed.models[0].seconds >= state.seconds


def test_resume_with_limit_and_after_the_last_batch(env, tmp_path):
    model, loader = _loader(env)
    full = gffmerge.measure(model, loader, limit=20, progress=False)
    partial = tmp_path / "p"
    with pytest.raises(Stop):
        gffmerge.measure(model, loader, limit=20, partial=partial, partial_every=1,
                         progress=False, forward=_stopping_at(4, "raise"))
    _same(full, gffmerge.measure(model, loader, limit=20, resume=partial, progress=False))
    assert full.models[0].graphs == 21
    # interrupted after the last batch (the signal arrives in it): resuming measures nothing
    with pytest.raises(KeyboardInterrupt):
        gffmerge.measure(model, loader, partial=partial, progress=False, partial_every=None,
                         forward=_stopping_at(13, "SIGINT"))
    assert PartialState.load(partial).batches == 14
    calls = []
    again = gffmerge.measure(model, loader, resume=partial, progress=False,
                             forward=lambda m, b: calls.append(1))
    _same(gffmerge.measure(model, loader, progress=False), again)
    assert calls == []


def test_refusals_through_the_api(env, tmp_path):
    model, loader = _loader(env)
    partial = tmp_path / "p"
    with pytest.raises(ResumeError, match="there is no partial measurement .* run without "
                                          "resume= to measure afresh"):
        gffmerge.measure(model, loader, resume=partial, progress=False)
    with pytest.raises(Stop):
        gffmerge.measure(model, loader, partial=partial, partial_every=1, progress=False,
                         forward=_stopping_at(3, "raise"))
    other = load_checkpoint(env["b.pt"])[0]
    cases = [
        (other, loader, {}, "another model"),
        (model, loader, {"cross": True}, r"other measure options \(cross was False, now True\)"),
        (model, loader, {"layers": ["interactions.0.*"]}, "other measure options .layers"),
        (model, _loader(env, batch=4)[1], {}, r"other data \(14 batches then, 10 now\)"),
        (model, _loader(env, data="b.npz")[1], {}, "other data .the content of the 3 batches"),
    ]
    stamp = partial.read_bytes()
    for m, data, extra, message in cases:
        with pytest.raises(ResumeError, match=message) as err:
            gffmerge.measure(m, data, resume=partial, progress=False, **extra)
        assert f"delete '{partial}' to start afresh" in str(err.value)
        assert partial.read_bytes() == stamp
    with pytest.raises(ValueError, match="name two files"):
        gffmerge.measure(model, loader, partial=tmp_path / "x", resume=partial)
    # without resume=, an old partial file is replaced, with a warning
    with pytest.warns(UserWarning, match="holds an unfinished measurement; it is replaced"):
        gffmerge.measure(model, loader, partial=partial, progress=False)
    assert not partial.exists()


# ---------------------------------------------------------------- the command line
def _cli(env, out, *extra, data="a.npz"):
    return ["measure", "-q", "--model", env["a.pt"], "--data", env[data], "--split", "all",
            "--batch-size", "3", *extra, "-o", str(out)]


def _interrupted(env, monkeypatch, out, batch=5, *extra):
    """Run ``gffmerge measure`` in-process until SIGINT arrives in batch ``batch``."""
    monkeypatch.setattr("gffmerge.collect.runner.default_forward",
                        _stopping_at(batch, "SIGINT"))
    assert main(_cli(env, out, "--save-every", "100", *extra)) == 130
    monkeypatch.undo()


def test_cli_interrupt_then_resume_equals_one_run(env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.safetensors"
    _interrupted(env, monkeypatch, out)
    err = capsys.readouterr().err
    assert "interrupted: measuring 'a' stopped by SIGINT after 6 of 14 batches" in err
    partial = tmp_path / "s.safetensors.partial"
    assert partial.exists() and not out.exists()
    assert main(_cli(env, out, "--resume")) == 0
    assert not partial.exists()
    assert main(_cli(env, tmp_path / "one.safetensors")) == 0
    _same(gffmerge.Stats.load(tmp_path / "one.safetensors"), gffmerge.Stats.load(out))
    # --resume without a partial file is an error, not a silent fresh start
    capsys.readouterr()
    assert main(_cli(env, tmp_path / "new.safetensors", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gffmerge measure: error: there is no partial measurement")
    assert err.endswith("run without --resume to measure afresh") and "\n" not in err
    assert not (tmp_path / "new.safetensors").exists()


@pytest.mark.parametrize(("extra", "data", "message"), [
    (["--model", "b.pt"], "a.npz", "was written for another model"),
    (["--cross"], "a.npz", r"other measure options \(cross was False, now True\)"),
    (["--limit", "9"], "a.npz", r"other measure options \(limit was None, now 9\)"),
    (["--batch-size", "4"], "a.npz", r"other data \(14 batches then, 10 now\)"),
    ([], "b.npz", r"other data \(the content of the 6 batches measured then differs\)"),
])
def test_cli_refuses_a_foreign_partial_file(env, tmp_path, monkeypatch, capsys, extra, data,
                                            message):
    out = tmp_path / "s.safetensors"
    out.write_bytes(b"an older result")
    _interrupted(env, monkeypatch, out)
    partial = tmp_path / "s.safetensors.partial"
    stamp = (partial.read_bytes(), partial.stat().st_mtime_ns)
    capsys.readouterr()
    argv = _cli(env, out, "--resume", data=data)
    for flag in ("--model", "--batch-size"):
        if flag in extra:
            value = extra[extra.index(flag) + 1]
            argv[argv.index(flag) + 1] = env.get(value, value)
    argv[-2:-2] = [x for x in extra if x not in ("--model", "b.pt", "--batch-size", "4")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("gffmerge measure: error: partial measurement")
    import re
    assert re.search(message, err), err
    assert err.endswith(f"delete '{partial}' to start afresh, or drop --resume")
    assert (partial.read_bytes(), partial.stat().st_mtime_ns) == stamp
    assert out.read_bytes() == b"an older result"


def test_cli_refuses_a_corrupt_partial_file(env, tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    partial = tmp_path / "s.safetensors.partial"
    partial.write_bytes(b"\x00" * 64)
    assert main(_cli(env, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "is not a readable partial measurement" in err and "drop --resume" in err
    assert partial.read_bytes() == b"\x00" * 64 and not out.exists()


def test_sigint_to_a_cli_process_keeps_the_partial_file(env, tmp_path):
    """A real SIGINT to a running ``gffmerge measure`` (each batch slowed to 100 ms)."""
    out = tmp_path / "s.safetensors"
    partial = tmp_path / "s.safetensors.partial"
    script = textwrap.dedent("""
        import sys, time
        import gffmerge.collect.runner as runner
        from gffmerge.cli import main
        slow = runner.default_forward
        def forward(model, batch):
            time.sleep(0.1)
            return slow(model, batch)
        runner.default_forward = forward
        sys.exit(main(sys.argv[1:]))
    """)
    argv = _cli(env, out, "--save-every", "1", "--max-frames", "400")
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], env=env_vars,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "stopped by SIGINT after" in err and "--resume" in err
    state = PartialState.load(partial)
    assert 1 <= state.batches < 14 and not out.exists()
    assert main(_cli(env, out, "--resume")) == 0
    assert main(_cli(env, tmp_path / "one.safetensors")) == 0
    _same(gffmerge.Stats.load(tmp_path / "one.safetensors"), gffmerge.Stats.load(out))


# ---------------------------------------------------------------- one file per process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, ckpt, data, out):
    """Measure until a failure in batch 5 of this rank's shard, keep the partial file, then
    resume from it (in the same processes: one spawn is what costs)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = load_checkpoint(ckpt)[0]
        loader = load_dataset([data]).batches_for(model, 3)
        partial = Path(out) / "s.partial"
        try:
            gffmerge.measure(model, loader, distributed=True, progress=False, partial=partial,
                             partial_every=2, forward=_stopping_at(5, "raise"))
            raise AssertionError("the measurement was not stopped")
        except Stop:
            pass
        mine = rank_path(partial, rank, world)
        Path(out, f"batches{rank}").write_text(str(PartialState.load(mine).batches))
        shutil.copy(mine, Path(out) / f"kept{rank}")
        stats = gffmerge.measure(model, loader, distributed=True, progress=False,
                                 resume=partial, partial_every=2)
        assert not mine.exists()
        if rank == 0:
            stats.save(Path(out) / "s.safetensors")
        # a partial file on one rank only: every rank refuses (none waits for the others)
        if rank == 0:
            shutil.copy(Path(out) / "kept0", mine)
        try:
            gffmerge.measure(model, loader, distributed=True, progress=False, resume=partial)
        except ResumeError as exc:
            Path(out, f"refused{rank}").write_text(str(exc))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_keep_and_resume_one_partial_file_each(env, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), env["a64.pt"], env["a.npz"], str(tmp_path)),
             nprocs=2, join=True)
    names = [rank_path(tmp_path / "s.partial", r, 2).name for r in range(2)]
    assert names == ["s.rank0-of-2.partial", "s.rank1-of-2.partial"]
    # 20 frames per process: 7 batches; stopped in the sixth, saved every 2
    assert [(tmp_path / f"batches{r}").read_text() for r in range(2)] == ["4", "4"]
    refused = [(tmp_path / f"refused{r}").read_text() for r in range(2)]
    assert "is here, but another process of this run has none" in refused[0]
    assert "there is no partial measurement" in refused[1]
    model = load_checkpoint(env["a64.pt"])[0]
    loader = load_dataset([env["a.npz"]]).batches_for(model, 3)
    # resuming per-process files with one process, or the reverse, is refused with the fix
    assert (tmp_path / "s.rank0-of-2.partial").is_file()  # left by the refused resume
    with pytest.raises(ResumeError, match=r"per-process ones \('s.rank0-of-2.partial', ...\) "
                                          r"of a run with 2 processes; resume under torchrun "
                                          r"--nproc_per_node=2"):
        gffmerge.measure(model, loader, resume=tmp_path / "s.partial", progress=False)
    single = gffmerge.measure(model, loader, progress=False).models[0]
    multi = gffmerge.Stats.load(tmp_path / "s.safetensors").models[0]
    assert multi.graphs == single.graphs == 40
    for name, ls in single.layers.items():
        err = (multi.layers[name].gram - ls.gram).norm() / ls.gram.norm()
        assert err <= 1e-12 and multi.layers[name].rows == ls.rows


def test_merge_refuses_a_partial_file_instead_of_sharing_it(env, tmp_path):
    """merge measures several models in one call: one partial file cannot serve them all."""
    model, loader = _loader(env)
    other = load_checkpoint(env["b.pt"])[0]
    for key in ("partial", "resume"):
        opts = MeasureOptions(**{key: tmp_path / "p"})
        with pytest.raises(ValueError, match="keeps no partial file .* gffmerge.measure"):
            gffmerge.merge([model, other], [loader, loader], method="gffmerge",
                           measure_options=opts)
    assert not (tmp_path / "p").exists()
