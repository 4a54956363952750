"""In-domain GNN merges on Cora and CiteSeer (GCN, SAGE), with the issue's targets checked.

Runs ``gffmerge gnn-experiment --setting in-domain`` for each dataset and backbone into
``RUNS/<dataset>-<backbone>`` (a run whose ``results.json`` exists there is reused, so the
runs can also be made by the CLI, e.g. in parallel) and writes
``benchmarks/results/gnn_in_domain.md`` plus a copy of every run's report, results and chart
under ``benchmarks/results/gnn_in_domain/``.

    OMP_NUM_THREADS=1 python benchmarks/bench_gnn_in_domain.py --runs /tmp/gnn_runs --epochs 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchenv import cpu_name, git_commit  # noqa: E402

from gffmerge.gnn_experiment import GnnExperimentConfig, run  # noqa: E402
from gffmerge.gnn_experiment_report import targets  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NOTES = [
    "- **Rows.** Measured on all nodes, both sources see the same graph and raw features, so "
    "their first-layer Grams are identical and, with the mean prior and equal weights, the "
    "first layer is exactly the average (the solver now returns Θ̄ without a Cholesky). "
    "Measuring each source on its own labelled nodes (GNNMerge++'s code, `gnnmerge++/own`) "
    "changes the first layer; it is the best fixed choice on both SAGE cells and the worst "
    "on the GCN cells. The default chooses rows and ridge on the 500 validation nodes "
    "(about 250 per label set): a noisy score (±2-3 %); on Cora SAGE it picked all nodes "
    "(seed 0) and own + neighbours (seed 2) where own nodes scored higher on test, so the "
    "default stays below `gnnmerge++/own` there. The test nodes are never read by the "
    "choice (a test scrambles them and gets the same scores).",
    "- **The +0.05 margin is bounded by the average.** The merges reach 0.98-1.0 of the "
    "sources; the average of the two backbones already reaches 0.93-0.98 with 100-epoch "
    "sources (and 1.01 on CiteSeer GCN seed 0, where the sources generalise worse than their "
    "average on one label set), so where the average is above 0.95 the target asks for "
    "a merge better than its sources.",
    "- **Tried, not kept:** a layer-by-layer variant (layer 2 fitted on the partly merged "
    "model's hidden features against each source's own layer-2 outputs, RegMean++'s order): "
    "on seed 0 of Cora GCN / SAGE over the same 9 rows × ridge candidates it scored test "
    "0.918-0.995 / 0.955-0.991 against the one-shot 0.920-0.993 / 0.961-1.001, no better.",
    "- **Merge cost.** Profiled on seed 0 (CPU seconds, one thread, `gnnmerge++/all`): before "
    "this change Cora GCN 1.58 s (measure 1.15 + solve 0.43), CiteSeer GCN 16.6 s (13.6 + "
    "2.9), Cora SAGE 5.2 s (3.5 + 1.7); the measure was the dense float64 Gram of the "
    "1433/3703-dimensional first-layer rows, twice (once per source). Now the bag-of-words "
    "rows (Cora 1.3 % non-zero, Â·X 4.7 %) are propagated and multiplied as sparse float64 "
    "matrices, the first layer's Gram is formed once for both sources (same graph, same "
    "features), and the solver takes one product per distinct Gram: 0.76 s (0.36 + 0.40), "
    "2.8 s (0.95 + 1.86), 2.0 s (0.77 + 1.22); with the mean prior (the default's usual "
    "pick: layer 1 without a solve) 0.43 s, 1.9 s and 1.2 s. What remains is the sparse Gram "
    "(0.6 s of CiteSeer's 0.95 s measure), the Cholesky of the 3704-dimensional system "
    "(0.8 s), forming B = G Σ Θ_k (0.4 s) and the report's residual (0.3 s).",
    "- **Speed-up.** Sources and the all-task model train 100 epochs here (the paper: 500), "
    "so the all-task model takes 12-90 CPU s and the 100× target needs a merge of "
    "0.1-0.9 s: the chosen configuration alone (measure + solve) is 31× faster on Cora GCN "
    "and 9-19× on the others; the default with its validation choice (9 candidates "
    "measured, solved and scored) 1-4×. Training time is linear in the epochs, so with the "
    "paper's 500 epochs these would be 5× larger (about 150× for Cora GCN's chosen merge, "
    "45-95× for the others), not measured here. CiteSeer SAGE's first layer is a "
    "7407-dimensional joint group: its own-node choice is a Cholesky of that size. Times "
    "are CPU seconds of the process (`time.process_time`, one thread): wall times on this "
    "shared machine were 2-4× larger and varied with the load.",
    "- **Seeds and reuse.** Seed 0's sources of every cell were trained by a development "
    "script with the same code and seeds before these runs (their training seconds are wall "
    "time at a load of 6-8, the other seeds' CPU time); the all-task models and every merge "
    "were timed in these runs.",
    "- **gnnmerge (gradient)** was not rerun (minutes per seed on these Grams); the previous "
    "run's numbers (Cora GCN 0.997, Cora SAGE 0.988) are in this file's git history.",
    "- task_arithmetic and ties have no common pre-trained model here (different random "
    "initialisations): their base is the zero model, so task arithmetic is 0.6× the average "
    "(λ = 0.3) and TIES a trimmed, sign-elected average (d = 0.2, λ = 1).",
]
CONFIGS = [("cora", "gcn"), ("citeseer", "gcn"), ("cora", "sage"), ("citeseer", "sage")]
ORDER = ["gnnmerge++", "gnnmerge++/all", "gnnmerge++/own", "gffmerge", "gnnmerge", "regmean",
         "ties", "task_arithmetic", "average"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="folder of the runs (reused when present)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--methods", default=",".join(m for m in ORDER if m != "gnnmerge"),
                   help="methods (default: all but the gradient gnnmerge, minutes per seed)")
    p.add_argument("--existing", action="store_true",
                   help="summarise only the runs already in RUNS (list the others as not run)")
    args = p.parse_args()
    load = os.getloadavg()
    runs = Path(args.runs)
    results, missing = {}, []
    for dataset, backbone in CONFIGS:
        out = runs / f"{dataset}-{backbone}"
        if not (out / "results.json").is_file() and args.existing:
            missing.append(f"{dataset}-{backbone}")
            continue
        if not (out / "results.json").is_file():
            run(GnnExperimentConfig(dataset=dataset, setting="in-domain", backbone=backbone,
                                    seeds=args.seeds, epochs=args.epochs,
                                    methods=tuple(args.methods.split(","))), out)
        results[(dataset, backbone)] = json.loads((out / "results.json").read_text())
        keep = RESULTS / "gnn_in_domain" / f"{dataset}-{backbone}"
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("report.md", "results.json", "normalized_accuracy.png"):
            src = out / name
            if src.is_file() and src.resolve() != (keep / name).resolve():
                shutil.copyfile(src, keep / name)
    first = next(iter(results.values()))["config"]
    n_seeds = len(next(iter(results.values()))["seeds"])
    shown = [m for m in ORDER if any(m in r["methods"] for r in results.values())]
    lines = ["# In-domain GNN merges: Cora and CiteSeer, GCN and SAGE", "",
             f"Commit {git_commit()}; machine: {cpu_name()}, {os.cpu_count()} cores shared with "
             f"other jobs (load average {load[0]:.1f} when this summary was written), torch "
             f"{torch.__version__}, 1 thread. Runs: `OMP_NUM_THREADS=1 nice python "
             f"benchmarks/bench_gnn_in_domain.py --runs RUNS --epochs {first['epochs']} "
             f"--seeds {n_seeds}` (the four cells one after another; the same as `gffmerge "
             "gnn-experiment --setting in-domain --dataset D --backbone B --methods ...`); "
             "each run's report, results.json and chart are in "
             "`gnn_in_domain/<dataset>-<backbone>/`.", "",
             "Setting (GNNMerge §8.2): classes split into the first ⌈C/2⌉ and the rest, one "
             "source per half trained on the standard split's training nodes of its classes, "
             f"{first['epochs']} epochs of Adam (lr {first['lr']}, weight decay "
             f"{first['weight_decay']}; the paper trains 500), hidden {first['hidden']}, "
             "different random initialisations. The merged backbone is evaluated with each "
             "source's own head on the test nodes of that source's classes.", "",
             "Methods: `gnnmerge++` (default): closed form, equal per-model weighting, prior = "
             "the sources' mean, with the rows (all nodes | each source's own labelled nodes | "
             "own nodes + their neighbours) and the relative ridge (1e-4, 1e-2, 1) chosen "
             "together on the validation nodes (standard split, each source's classes); "
             "`gnnmerge++/all`: all nodes, ridge 1e-4, prior zero (the previous default); "
             "`gnnmerge++/own`: each source's own labelled nodes (GNNMerge++'s code), ridge "
             "1e-4, prior mean; `gffmerge`: pooled weighting, all nodes.", "",
             "| dataset | backbone | " + " | ".join(
                 f"{m} (default)" if m == "gnnmerge++" else m for m in shown) + " |",
             "|---|---|" + "---|" * len(shown)]
    for (dataset, backbone), r in results.items():
        cells = []
        for m in shown:
            v = r["methods"].get(m)
            cells.append("–" if v is None else f"{v['normalized_accuracy']:.3f} ± "
                                               f"{v['normalized_accuracy_std']:.3f}")
        lines.append(f"| {dataset} | {backbone} | " + " | ".join(cells) + " |")
    if missing:
        lines += ["", f"Not run: {', '.join(missing)}."]
    lines += ["", "Normalised accuracy (mean over the two label sets of merged / source "
              "accuracy), mean ± std over seeds.", "", "Rows and ridge chosen by the default "
              "on the validation nodes, per seed:", ""]
    for (dataset, backbone), r in results.items():
        v = r["methods"].get("gnnmerge++", {})
        picks = "; ".join(f"{c['rows']}, ridge {c['ridge']:g} (val {c['score']:.3f})"
                          for c in v.get("chosen", []))
        lines.append(f"- {dataset} {backbone}: {picks}")
    lines += ["", "## Times (CPU seconds, one thread)", "",
              "| dataset | backbone | sources' training | all-task model from scratch | "
              "gnnmerge++ (default), everything | its statistics / solves / scoring | "
              "gnnmerge++/all (measure + solve) | speed-up: default / all |",
              "|---|---|---|---|---|---|---|---|"]
    for (dataset, backbone), r in results.items():
        m = r["methods"]
        full = m["gnnmerge++"]["seconds"]
        parts = m["gnnmerge++"].get("choice_seconds")
        split = ("–" if parts is None else
                 f"{parts['measure']:.2f} / {parts['solve']:.2f} / {parts['score']:.2f}")
        plain = m.get("gnnmerge++/all", {}).get("seconds", float("nan"))
        t = r["all_tasks_training_seconds"]
        lines.append(f"| {dataset} | {backbone} | {r['sources_training_seconds']:.1f} | "
                     f"{t:.1f} | {full:.2f} | {split} | {plain:.2f} | "
                     f"{t / full:.0f}× / {t / plain:.0f}× |")
    lines += ["", "## Targets (default merge)", "", "| dataset | backbone | target | measured "
              "| met |", "|---|---|---|---|---|"]
    for (dataset, backbone), r in results.items():
        for target, measured, met in targets(r):
            lines.append(f"| {dataset} | {backbone} | {target} | {measured} | "
                         f"{'yes' if met else '**no**'} |")
    seeds = ", ".join(f"{d} {b} {len(r['seeds'])}" for (d, b), r in results.items())
    lines += ["", "## Notes", "", f"- **Seeds per cell** (rows are means over them): {seeds}.",
              *NOTES]
    (RESULTS / "gnn_in_domain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
