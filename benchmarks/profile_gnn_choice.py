"""Where the default GNN merge's time goes: the one-pass choice profiled on saved sources.

Reloads the sources kept by ``bench_gnn_in_domain.py`` in ``RUNS/<dataset>-<backbone>/sources``
(no training), runs :func:`gffmerge.gnn_select.choose` (the default ``gnnmerge++``) per seed
under ``cProfile`` and prints its parts (CPU seconds, ``time.process_time``), the top
functions, and writes ``benchmarks/results/gnn_choice_profile.md``. It also saves each seed's
choice and weights (``--save``) and compares them with a saved file (``--compare``), so a
change of the code can be checked to give the same picks and weights.

    OMP_NUM_THREADS=1 python benchmarks/profile_gnn_choice.py --runs /tmp/gnn_runs
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchenv import cpu_name, git_commit  # noqa: E402

from gffmerge.gnn_experiment import (  # noqa: E402
    METHODS,
    GnnExperimentConfig,
    graphs_for,
    tasks_for,
)
from gffmerge.gnn_select import choose  # noqa: E402
from gffmerge.gnn_tasks import TrainedCache  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CELLS = [("cora", "gcn"), ("citeseer", "gcn"), ("cora", "sage"), ("citeseer", "sage")]


def load(runs: Path, dataset: str, backbone: str, seed: int):
    """The saved sources, heads and tasks of one seed of one cell."""
    cfg_d = json.loads((runs / f"{dataset}-{backbone}" / "results.json").read_text())["config"]
    cfg = GnnExperimentConfig(**{**cfg_d, "methods": tuple(cfg_d["methods"])})
    tasks = tasks_for(cfg, graphs_for(cfg, seed), seed)
    trained = TrainedCache(runs / f"{dataset}-{backbone}" / "sources",
                           {k: v for k, v in cfg_d.items()
                            if k not in ("seeds", "methods", "all_tasks")})
    backbones, heads = [], []
    for k, task in enumerate(tasks):
        path = trained._path(f"source-{100 * seed + 10 * k + 1}")
        if not path.is_file():
            raise SystemExit(f"no saved source {path}; run bench_gnn_in_domain.py first")
        b, h, _ = trained.source(task, backbone, cfg, seed=100 * seed + 10 * k + 1)
        backbones.append(b)
        heads.append(h)
    return backbones, heads, tasks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--save", help="write every seed's choice and weights to this .pt file")
    p.add_argument("--compare", help="compare the choices and weights with this .pt file")
    p.add_argument("--out", default=str(RESULTS / "gnn_choice_profile.md"))
    p.add_argument("--cells", default=",".join(f"{d}-{b}" for d, b in CELLS),
                   help="dataset-backbone cells, comma separated (default: all four)")
    args = p.parse_args()
    registered, options, _ = METHODS["gnnmerge++"]
    runs = Path(args.runs)
    saved, lines, worst = {}, [], 0.0
    reference = torch.load(args.compare, weights_only=True) if args.compare else None
    rows_table = []
    cells = [tuple(c.split("-")) for c in args.cells.split(",")]
    for dataset, backbone in cells:
        parts_sum = {"measure": 0.0, "solve": 0.0, "score": 0.0, "whole": 0.0}
        prof = cProfile.Profile()
        for seed in range(args.seeds):
            backbones, heads, tasks = load(runs, dataset, backbone, seed)
            t0 = time.process_time()
            prof.enable()
            model, chosen = choose(backbones, heads, tasks, registered, options)
            prof.disable()
            whole = time.process_time() - t0
            for k in ("measure", "solve", "score"):
                parts_sum[k] += chosen[f"{k}_seconds"]
            parts_sum["whole"] += whole
            key = f"{dataset}-{backbone}-{seed}"
            saved[key] = {"rows": chosen["rows"], "ridge": chosen["ridge"],
                          "scores": torch.tensor([c["score"] for c in chosen["candidates"]]),
                          "state": {n: v.detach().clone() for n, v in
                                    model.state_dict().items()}}
            if reference is not None:
                ref = reference[key]
                if (ref["rows"], ref["ridge"]) != (chosen["rows"], chosen["ridge"]):
                    raise SystemExit(f"{key}: pick changed {ref['rows']},{ref['ridge']} -> "
                                     f"{chosen['rows']},{chosen['ridge']}")
                if not torch.equal(ref["scores"], saved[key]["scores"]):
                    raise SystemExit(f"{key}: validation scores changed")
                for n, v in ref["state"].items():
                    new = saved[key]["state"][n]
                    d = float((new.double() - v.double()).abs().max() /
                              v.double().abs().max().clamp_min(1e-30))
                    worst = max(worst, d)
        n = args.seeds
        rows_table.append((dataset, backbone, *(parts_sum[k] / n for k in
                                               ("whole", "measure", "solve", "score"))))
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.top)
        body = [ln for ln in s.getvalue().splitlines() if ln.strip()]
        start = next(i for i, ln in enumerate(body) if ln.lstrip().startswith("ncalls"))
        lines += [f"### {dataset} {backbone} (cProfile, {n} seeds summed, tottime order)", "",
                  "```", *body[start:], "```", ""]
    head = ["# Profile of the default GNN merge (`gnnmerge++`, one-pass choice)", "",
            f"Commit {git_commit()}; machine: {cpu_name()}, load average "
            f"{os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s). Command: `OMP_NUM_THREADS=1 python "
            f"benchmarks/profile_gnn_choice.py --runs RUNS --seeds {args.seeds}` on the saved "
            "500-epoch sources (no training). CPU seconds per seed (mean), "
            "`time.process_time`, with cProfile on (adds overhead to Python-heavy parts).",
            "", "| dataset | backbone | whole choice | statistics | solves | scoring |",
            "|---|---|---|---|---|---|"]
    head += [f"| {d} | {b} | {w:.3f} | {m:.3f} | {so:.3f} | {sc:.3f} |"
             for d, b, w, m, so, sc in rows_table]
    if reference is not None:
        head += ["", f"Same picks and validation scores as `{args.compare}`; largest relative "
                 f"weight difference {worst:.1e}."]
    text = "\n".join(head + [""] + lines)
    print(text)
    Path(args.out).write_text(text + "\n")
    if args.save:
        torch.save(saved, args.save)


if __name__ == "__main__":
    main()
