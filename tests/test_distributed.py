"""Multi-process measuring (gloo on localhost) equals single-process measuring."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gffmerge
from gffmerge.checkpoint import load_checkpoint, save_checkpoint
from gffmerge.cli import main
from gffmerge.data import load_dataset
from gffmerge.distributed import measure_distributed
from gffmerge.models import build_model
from gffmerge.testing import fine_tunes

pytestmark = pytest.mark.distributed

TINY = {"latent_dim": 12, "hidden_dim": 12, "n_layers": 1, "n_rbf": 8, "cutoff": 4.0}
SYSTEMS = ("lips20/beta-Li3PS4", "lips20/gamma-Li3PS4")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loaders(models, frames=7, batch=3):
    data = load_dataset(list(SYSTEMS), max_frames=40).split("train")
    return [data.for_system(s).subset(frames).batches_for(m, batch)
            for s, m in zip(SYSTEMS, models)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    # float64 models: float32 forwards differ in the last bit between batch shapes, which
    # would hide the reduction's own error (we check the sums, not MKL's blocking)
    models = fine_tunes(build_model("gns", **TINY).double(), 2, seed=3)
    paths = []
    for k, m in enumerate(models):
        paths.append(save_checkpoint(root / f"m{k}.pt", m, {}))
    return root, paths


def _worker(rank, world, port, paths, out, limits):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        models = [load_checkpoint(p)[0] for p in paths]
        for limit in limits:
            for k, (m, loader) in enumerate(zip(models, _loaders(models))):
                if k == 0:
                    stats = measure_distributed(m, loader, limit=limit, progress=False,
                                                label=f"m{k}")
                else:  # the same through the public entry point
                    stats = gffmerge.measure(m, loader, limit=limit, progress=False,
                                             label=f"m{k}", distributed=True)
                if rank == 0:
                    stats.save(Path(out) / f"s{k}-{limit}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one(ckpts, tmp_path):
    """Two processes (one spawn, every batch and a limit of 4 batches) equal one process."""
    _, paths = ckpts
    limits = [None, 4]
    mp.spawn(_worker, args=(2, _free_port(), [str(p) for p in paths], str(tmp_path), limits),
             nprocs=2, join=True)
    models = [load_checkpoint(p)[0] for p in paths]
    for limit in limits:
        single = [gffmerge.measure(m, loader, limit=limit, progress=False)
                  for m, loader in zip(models, _loaders(models))]
        multi = [gffmerge.Stats.load(tmp_path / f"s{k}-{limit}.safetensors") for k in range(2)]
        for s, d in zip(single, multi):
            a, b = s.models[0], d.models[0]
            assert a.graphs == b.graphs == (6 if limit else 7)
            assert a.fingerprint == b.fingerprint
            for name, ls in a.layers.items():
                other = b.layers[name]
                assert other.rows == ls.rows
                err = (other.gram - ls.gram).norm() / ls.gram.norm()
                assert err <= 1e-12, name
        # a well-posed solve (cond ~1e4) maps the 1e-13 differences to ~1e-9; the official
        # tiny absolute ridge leaves near-singular layers whose solution amplifies any
        # rounding
        opts = {"ridge": 1e-4, "ridge_mode": "relative", "prior": "mean"}
        m1 = gffmerge.solve(models, single, **opts).model.state_dict()
        m2 = gffmerge.solve(models, multi, **opts).model.state_dict()
        for k, v in m1.items():
            assert torch.allclose(v, m2[k], rtol=1e-8, atol=1e-10), k


def test_torchrun_cli_equals_single_process(ckpts, tmp_path):
    _, paths = ckpts
    common = ["measure", "-q", "--model", str(paths[0]), "--data", SYSTEMS[0],
              "--max-frames", "30", "--batch-size", "4"]
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(torchrun), "--nproc_per_node=2", "--master_port", str(_free_port()),
                    "-m", "gffmerge", *common, "-o", str(tmp_path / "multi.safetensors")],
                   check=True, env=env, timeout=300, capture_output=True)
    assert main([*common, "-o", str(tmp_path / "single.safetensors")]) == 0
    multi = gffmerge.Stats.load(tmp_path / "multi.safetensors").models[0]
    single = gffmerge.Stats.load(tmp_path / "single.safetensors").models[0]
    assert multi.graphs == single.graphs > 0
    assert "measured by 2 processes" in multi.data[0]
    for name, ls in single.layers.items():
        err = (multi.layers[name].gram - ls.gram).norm() / ls.gram.norm()
        assert err <= 1e-12 and multi.layers[name].rows == ls.rows


def test_sharding_is_disjoint_and_exhaustive():
    model = build_model("gns", **TINY)
    (loader,) = _loaders([model], frames=10, batch=3)[:1]
    parts = [loader.shard(r, 3) for r in range(3)]
    keys = [k for p in parts for k in p.dataset.frame_keys]
    assert sorted(keys) == sorted(loader.dataset.frame_keys) and len(set(keys)) == 10
    limited = [loader.shard(r, 2, limit=4) for r in range(2)]
    assert sum(p.num_frames for p in limited) == 6  # two whole batches of 3
