"""Wider validation choices for the in-domain GNN merge: more candidates, chosen on the
validation nodes only, reported on the test nodes as they come out.

Reads the sources that ``bench_gnn_in_domain.py`` trained into ``RUNS/<dataset>-<backbone>/
sources`` (nothing is trained here: a missing source is an error) and, per seed, forms every
candidate with the one-pass route (:class:`gffmerge.gnn_one_pass.OnePass`):

* ``default``: rows (all | own | own+nbr) × relative ridge (1e-4, 1e-2, 1), per-model
  weighting (the default ``gnnmerge++``: 9 candidates);
* ``+pooled``: the same with pooled weighting too (18);
* ``+ridges``: per-model, ridges 1e-4 … 10 (6 values, 18);
* ``+both``: pooled and per-model, 6 ridges (36).

Each variant takes its best validation candidate (ties: the earlier); its test score is the
normalised accuracy (merged / source accuracy, mean over the label sets) of that candidate,
both evaluated in float64 from the unit weights. ``best on test`` is the best candidate of
``+both`` on the test nodes: an upper bound of what any choice among them could reach, not
a method.

    OMP_NUM_THREADS=1 python benchmarks/bench_gnn_choice_variants.py --runs /tmp/runs --epochs 500
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchenv import cpu_name, git_commit  # noqa: E402

from gffmerge.gnn_experiment import GnnExperimentConfig, graphs_for, tasks_for  # noqa: E402
from gffmerge.gnn_one_pass import OnePass  # noqa: E402
from gffmerge.gnn_rows import ROWS  # noqa: E402
from gffmerge.gnn_tasks import TrainedCache  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = [("cora", "gcn"), ("citeseer", "gcn"), ("cora", "sage"), ("citeseer", "sage")]
SMALL, WIDE = (1e-4, 1e-2, 1.0), (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
VARIANTS = {"default": (("per_model",), SMALL), "+pooled": (("per_model", "pooled"), SMALL),
            "+ridges": (("per_model",), WIDE), "+both": (("per_model", "pooled"), WIDE)}


def candidates(one: OnePass, heads) -> list[dict]:
    """Every (weighting, rows, ridge) of ``+both`` with its validation and test score."""
    ref_val, ref_test = one.references(heads), one.references(heads, "test_mask")
    out = []
    for weighting in ("per_model", "pooled"):
        for r in ROWS:
            path = one.path(r, WIDE, weighting=weighting)
            for j, ridge in enumerate(WIDE):
                thetas = {n: p[j] for n, p in path.items()}
                out.append({"weighting": weighting, "rows": r, "ridge": ridge,
                            "val": one.scores(thetas, heads, ref_val),
                            "test": one.scores(thetas, heads, ref_test, "test_mask")})
    return out


def pick(cands: list[dict], weightings, ridges) -> dict:
    """The best validation candidate among ``weightings`` × rows × ``ridges`` (ties: the
    earlier in the order per_model, pooled; rows; ridges)."""
    pool = [c for c in cands if c["weighting"] in weightings and c["ridge"] in ridges]
    pool.sort(key=lambda c: (weightings.index(c["weighting"]), ROWS.index(c["rows"]),
                             ridges.index(c["ridge"])))
    return max(pool, key=lambda c: c["val"])  # max keeps the first of equal values


def cell(runs: Path, dataset: str, backbone: str, epochs: int, seeds: int) -> dict:
    cfg = GnnExperimentConfig(dataset=dataset, setting="in-domain", backbone=backbone,
                              seeds=seeds, epochs=epochs)
    folder = runs / f"{dataset}-{backbone}" / "sources"
    trained = TrainedCache(folder, {k: v for k, v in asdict(cfg).items()
                                    if k not in ("seeds", "methods", "all_tasks")})
    per_seed = []
    for seed in range(seeds):
        tasks = tasks_for(cfg, graphs_for(cfg, seed), seed)
        backbones, heads = [], []
        for k, task in enumerate(tasks):
            sid = 100 * seed + 10 * k + 1
            if not trained._path(f"source-{sid}").is_file():
                raise SystemExit(f"error: no trained source {sid} for {dataset} {backbone} "
                                 f"({epochs} epochs) in {folder}; run "
                                 "benchmarks/bench_gnn_in_domain.py with the same --runs, "
                                 "--epochs and --seeds first")
            b, h, _ = trained.source(task, backbone, cfg, seed=sid)
            backbones.append(b)
            heads.append(h)
        t0 = time.process_time()
        cands = candidates(OnePass(backbones, tasks), heads)
        picks = {name: pick(cands, list(w), list(r)) for name, (w, r) in VARIANTS.items()}
        picks["best on test"] = max(cands, key=lambda c: c["test"])
        per_seed.append({"seed": seed, "seconds": time.process_time() - t0,
                         "picks": picks, "candidates": cands})
    return {"dataset": dataset, "backbone": backbone, "seeds": per_seed}


def mean_std(values):
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / max(1, len(values) - 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="folder of bench_gnn_in_domain's runs")
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    load = os.getloadavg()
    runs = Path(args.runs)
    cells = [cell(runs, d, b, args.epochs, args.seeds) for d, b in CONFIGS]
    names = [*VARIANTS, "best on test"]
    lines = ["# In-domain GNN merges: wider validation choices", "",
             f"Commit {git_commit()}; machine: {cpu_name()}, {os.cpu_count()} cores shared "
             f"(load average {load[0]:.1f}), torch {torch.__version__}, 1 thread. Command: "
             f"`OMP_NUM_THREADS=1 python benchmarks/bench_gnn_choice_variants.py --runs RUNS "
             f"--epochs {args.epochs} --seeds {args.seeds}` on the sources of "
             "`gnn_in_domain.md`.", "", __doc__.split("\n\n")[2], "",
             __doc__.split("\n\n")[3].replace("\n", " "), "",
             "Test normalised accuracy of the validation pick (mean ± std over seeds):", "",
             "| dataset | backbone | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for c in cells:
        row = []
        for n in names:
            m, s = mean_std([sd["picks"][n]["test"] for sd in c["seeds"]])
            row.append(f"{m:.3f} ± {s:.3f}")
        lines.append(f"| {c['dataset']} | {c['backbone']} | " + " | ".join(row) + " |")
    lines += ["", "Picks per seed (weighting, rows, ridge: validation → test):", ""]
    for c in cells:
        for n in names:
            picks = "; ".join(f"{p['weighting']}, {p['rows']}, {p['ridge']:g}: "
                              f"{p['val']:.3f} → {p['test']:.3f}"
                              for p in (sd["picks"][n] for sd in c["seeds"]))
            lines.append(f"- {c['dataset']} {c['backbone']} {n}: {picks}")
    secs = [sd["seconds"] for c in cells for sd in c["seeds"]]
    lines += ["", f"All 36 candidates of one seed (statistics, solves, validation and test "
              f"scores): {min(secs):.2f}-{max(secs):.2f} CPU s."]
    (RESULTS / "gnn_choice_variants.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "gnn_choice_variants.json").write_text(json.dumps(cells, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
