"""The paper-experiment scripts (``benchmarks/paper/``) run end to end on a tiny budget.

A tiny GNS foundation, 30 frames per system, 4 training frames and 1 epoch per model: each
script must write its table (md + csv, png where matplotlib is installed) with the rows
and provenance it promises, and reuse the shared fine-tunes across scripts.
"""

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from gffmerge import methods
from gffmerge.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ["rmd17/ethanol", "rmd17/malonaldehyde", "rmd17/benzene"]
TINY = {"latent_dim": 8, "hidden_dim": 8, "n_layers": 1, "n_rbf": 6, "cutoff": 4.0}
PAIR = "rmd17-ethanol-malonaldehyde"


def script(name):
    spec = importlib.util.spec_from_file_location(f"paper_{name}",
                                                  ROOT / "benchmarks" / "paper" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    foundation = root / "foundation.pt"
    train(TrainConfig(systems=SYSTEMS, model="gns", model_config=TINY, epochs=1,
                      train_frames=6, val_frames=4, test_frames=4, batch_size=3,
                      max_frames=30), output=foundation, progress=False)
    return root, foundation


@pytest.fixture
def run(env, monkeypatch):
    root, foundation = env
    monkeypatch.setenv("GFFMERGE_PAPER_WORK", str(root / "work"))

    def go(name, *extra):
        out = root / "results"
        argv = ["--budget", "tiny", "--models", "gns", "--foundation", str(foundation),
                "--out", str(out), *extra]
        assert script(name).main(argv) == 0
        md = (out / f"{name}.md").read_text()
        assert f"Command: `python benchmarks/paper/{name}.py --budget tiny" in md
        assert "Commit " in md and "threads" in md and "load average" in md
        assert "Budget `tiny`" in md and "Runs that failed" not in md, md
        with (out / f"{name}.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert rows
        if _has_matplotlib():
            assert (out / f"{name}.png").stat().st_size > 1000
        return md, rows, out
    return go


def test_main_table_has_every_row_per_system_and_the_run_json(run):
    chosen = ["average", "ties", "gffmerge", methods.DEFAULT_METHOD]
    md, rows, out = run("main_table", "--pairs", PAIR, "--methods", ",".join(chosen))
    names = [r["row"] for r in rows]
    d = methods.DEFAULT_METHOD
    assert names == ["foundation", "finetune:rmd17/ethanol", "finetune:rmd17/malonaldehyde",
                     "joint", "average", "ties", "gffmerge", "gffmerge+switch", d,
                     f"{d}+switch", f"{d}+repair"]
    for r in rows:
        for key in ("ethanol_F_mean", "malonaldehyde_E_mean", "combined_F_mean"):
            assert math.isfinite(float(r[key])) and float(r[key]) > 0, (r["row"], key)
        assert float(r["combined_F_std"]) == 0.0  # one seed
    payload = json.loads((out / "runs" / f"gns_{PAIR}_tiny_s42.json").read_text())
    assert list(payload["methods"]) == names
    assert f"| {d}+repair |" in md


def test_speedup_reuses_the_trainings_and_divides_their_times(run):
    run("main_table", "--pairs", PAIR, "--methods", "average")  # trains the models
    md, rows, _ = run("speedup", "--pairs", PAIR)
    (r,) = rows
    joint, merge, repair = (float(r[k]) for k in ("joint_s", "default_merge_s", "repair_s"))
    assert joint > 0 and merge > 0 and repair > 0
    assert float(r["joint_over_merge"]) == pytest.approx(joint / merge, rel=1e-4)
    assert float(r["joint_over_merge_repair"]) == pytest.approx(joint / (merge + repair),
                                                                rel=1e-4)
    assert "joint / (merge + repair)" in md
    # against the shipped joint model's recorded training time
    md, rows, _ = run("speedup", "--pairs", PAIR, "--shipped", "--name", "speedup")
    (r,) = rows
    assert float(r["joint_s"]) > 60  # the shipped rMD17 GNS joint model trained for minutes
    assert "Shipped mode" in md


def test_composition_merges_k_systems_at_once_and_in_sequence(run):
    md, rows, _ = run("composition", "--ks", "3", "--systems", *SYSTEMS)
    names = {r["row"] for r in rows}
    assert {"joint", "average", "gffmerge", methods.DEFAULT_METHOD, "best single fine-tune",
            f"{methods.DEFAULT_METHOD}, sequential pairwise"} <= names
    assert all(r["K"] == "3" and float(r["F"]) > 0 for r in rows)
    assert "| K = 3 |" in md


def test_ablations_cover_every_setting(run):
    md, rows, _ = run("ablations", "--pair", PAIR, "--samples", "3")
    groups = {r["group"] for r in rows}
    assert groups == {"reference", "data", "weighting", "ridge", "intercept", "samples",
                      "progressive", "force-aware", "switch"}
    by = {r["row"]: float(r["F"]) for r in rows}
    assert len(set(by.values())) > len(by) // 2  # the settings really change the merge
    assert all(v > 0 and math.isfinite(v) for v in by.values())


def test_data_efficiency_repairs_every_start(run):
    md, rows, _ = run("data_efficiency", "--pair", PAIR, "--starts", "foundation", "average")
    got = {(r["start"], int(r["frames"])) for r in rows}
    assert got == {(s, n) for s in ("foundation", "average") for n in (0, 4, 8)}
    assert "joint (reference)" in md


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_real_foundations_tables_render_every_candidate_kind(tmp_path):
    """`bench_real_foundations.table_lines` renders a run's JSON, candidates with one λ per
    source (a list option) included: that row used to crash a finished run's report."""
    spec = importlib.util.spec_from_file_location(
        "bench_real_foundations", ROOT / "benchmarks" / "bench_real_foundations.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    systems = ["lips20/P2S5", "lips20/P4S3"]
    anchor = {"ridge": None, "beta": 0, "val_force_mae_mev_per_a": 340.0, "seconds": 1.0,
              "val_force_mae_per_system": [350.0, 330.0]}
    payload = {
        "foundation": "chgnet", "systems": systems, "command": "python bench", "commit": "c",
        "machine": "m", "args": {"foundation": "chgnet", "train_frames": 40, "epochs": 24,
                                 "batch_size": 4, "lr": 1e-3, "stats_frames": 32,
                                 "test_frames": 30, "val_frames": 16},
        "rows": {"average": {"force_mae_mev_per_a": {s: 300.0 for s in systems},
                             "seconds": 0.0, "val_force_mae_mev_per_a": {s: 310.0
                                                                         for s in systems}}},
        "searches": {"default": {
            "val_score": "per_system", "fallback": None,
            "anchors_tried": [{**anchor, "kind": "source", "params": {"lams": [1.0, 0.0]}},
                              {**anchor, "kind": "ties", "params": {"density": 0.2}},
                              {**anchor, "kind": "one-shot", "ridge": 1e-3, "start": "ties"}],
            "grid": [{**anchor, "ridge": 1e-3, "beta": 1}]}}}
    text = "\n".join(bench.table_lines(payload))
    assert "| source lams [1, 0] | ∞ | 0 | 350.0 | 330.0 | 340.0 | 1 |" in text
    assert "| ties density 0.2 |" in text and "| one-shot from ties | 0.001 |" in text
    assert "| staged (progressive) | 0.001 | 1 |" in text
    path = tmp_path / "run.json"
    path.write_text(json.dumps(payload))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_real_foundations.py"),
                          "--tables-from", str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and "| source lams [1, 0] |" in out.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_real_foundations.py"),
                          "--tables-from", str(tmp_path / "missing.json")], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "cannot read a run's JSON" in bad.stderr
