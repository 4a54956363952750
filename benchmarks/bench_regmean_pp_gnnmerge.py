"""RegMean++ and gradient GNNMerge on the shipped rMD17 ethanol / malonaldehyde fine-tunes.

Rows: average, RegMean (α 0.9, for contrast), RegMean++ (α 0.9 and α 1), GNNMerge (Adam
on a small grid of steps × lr, chosen on the combined validation frames, and L-BFGS toward
the closed form) and the package default (``progressive``). Every
closed-form and gradient merge sees the same ``--frames`` random training frames per
source. The table gives the combined validation and test force MAE; test frames are used
for the table only. Writes ``benchmarks/results/merge_baselines_rmd17.md``.

    python benchmarks/bench_regmean_pp_gnnmerge.py [--models gns] [--frames 200]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import torch
from benchenv import cpu_name, git_commit

import gffmerge
from gffmerge import methods
from gffmerge.checkpoint import load_checkpoint
from gffmerge.data import load_dataset
from gffmerge.evaluate import evaluate, pooled_errors
from gffmerge.solver import build_model, mean_state_dict

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("rmd17/ethanol", "rmd17/malonaldehyde")
ADAM_GRID = ((100, 1e-3), (300, 1e-3), (300, 1e-2), (1000, 5e-2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["gns"])
    p.add_argument("--frames", type=int, default=200, help="training frames per source")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/merge_baselines_rmd17.md"))
    args = p.parse_args()
    cmd = ("python benchmarks/bench_regmean_pp_gnnmerge.py --models " + " ".join(args.models)
           + f" --frames {args.frames}")
    commit = git_commit()
    t_start, load_before = time.perf_counter(), os.getloadavg()
    data = load_dataset(list(SYSTEMS))
    train, val, test = data.split("train"), data.split("val"), data.split("test")
    rows = []

    for name in args.models:
        bench_model(name, args.frames, train, val, test, rows)

    total = time.perf_counter() - t_start
    lines = ["# RegMean++ and gradient GNNMerge on rMD17 ethanol / malonaldehyde", "",
             f"Command: `{cmd}`; commit {commit}; machine: {cpu_name()}, {os.cpu_count()} "
             f"cores shared with other jobs, {torch.get_num_threads()} torch threads, torch "
             f"{torch.__version__}; load average {load_before[0]:.1f} at start, "
             f"{os.getloadavg()[0]:.1f} at end; total {total / 60:.1f} min.", "",
             f"Combined splits: {len(val)} validation and {len(test)} test frames. F: force "
             "MAE over components (meV/Å), E: energy MAE (meV/atom). Every merge uses the "
             f"same {args.frames} random training frames per source; the GNNMerge grid "
             "point is chosen on validation force MAE, test frames are used for the table "
             "only. Seconds (wall, shared machine) include measuring for the methods that "
             "use statistics.", "",
             "| model | method | val F | test F | test E | ethanol F | malonaldehyde F | "
             "seconds | notes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['val_f']:.1f} | {r['test_f']:.1f} "
                     f"| {r['test_e']:.1f} | {r['per'][0]:.1f} | {r['per'][1]:.1f} | "
                     f"{r['seconds']:.1f} | {r['note']} |")
    lines += ["", *notes(rows)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def bench_model(name: str, frames: int, train, val, test, rows: list[dict]) -> None:
    """All rows of one architecture, appended to ``rows``."""
    ck = ROOT / "checkpoints" / "rmd17"
    sources = [load_checkpoint(ck / f"{name}_{s.split('/')[1]}.pt")[0] for s in SYSTEMS]
    subsets = [train.for_system(s).subset(frames, seed=0) for s in SYSTEMS]
    batches = [sub.batches_for(m, 8) for sub, m in zip(subsets, sources)]
    vals = [val.for_system(s) for s in SYSTEMS]

    def record(label, model, seconds, note=""):
        v = pooled_errors(model, vals)[0]
        ev = evaluate(model, test, progress=False)
        row = dict(model=name, method=label, val_f=v, seconds=seconds, note=note,
                   test_f=ev["all"]["force_mae_mev_per_a"],
                   test_e=ev["all"]["energy_mae_mev_per_atom"],
                   per=[ev[s]["force_mae_mev_per_a"] for s in SYSTEMS])
        rows.append(row)
        print(f"{name:6s} {label:48s} val F {v:7.1f}  test F {row['test_f']:7.1f}  "
              f"E {row['test_e']:6.1f}  {seconds:6.1f} s  {note}", flush=True)
        return row

    t0 = time.perf_counter()
    record("average", build_model(sources[0], mean_state_dict(sources)),
           time.perf_counter() - t0)
    t0 = time.perf_counter()
    stats = gffmerge.Stats.concat(gffmerge.measure(m, b, progress=False)
                                  for m, b in zip(sources, batches))
    measure_s = time.perf_counter() - t0

    def run(label, method, note="", **options):
        t1 = time.perf_counter()
        spec = methods.get(method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if spec.needs_for().data:
                res = spec.invoke(sources, None, spec.options(**options),
                              data=[list(b) for b in batches], val_data=vals,
                              progress=False)
                extra = 0.0
            else:
                res = spec(sources, stats, **options)
                extra = measure_s
        return record(label, res.model, time.perf_counter() - t1 + extra, note), res

    run("regmean (α 0.9)", "regmean")
    run("**regmean_pp** (α 0.9, default)", "regmean_pp", frames=frames)
    run("regmean_pp (α 1)", "regmean_pp", frames=frames, alpha=1.0)
    adam = []
    for steps, lr in ADAM_GRID:
        row, res = run(f"gnnmerge Adam {steps} steps, lr {lr:g}", "gnnmerge",
                       steps=steps, lr=lr)
        o = res.report.options
        row["note"] = (f"loss {o['loss_final'] / o['loss_at_mean']:.3f}× the mean's")
        adam.append(row)
    best = min(adam, key=lambda r: r["val_f"])
    best["method"] = "**" + best["method"] + "** (best on validation)"
    row, res = run("gnnmerge L-BFGS 200 iterations", "gnnmerge",
                   optimizer="lbfgs", steps=200, lr=1.0)
    o = res.report.options
    row["note"] = f"loss {o['loss_final'] / o['loss_at_mean']:.3f}× the mean's"
    run("progressive (package default, auto)", "progressive",
        frames=frames)


def notes(rows: list[dict]) -> list[str]:
    """Ratios of combined test force MAE measured in this run, one line per architecture."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        f = {r["method"].replace("**", ""): r["test_f"] for r in rows if r["model"] == name}

        def pick(prefix: str, f: dict = f) -> float:
            return next(v for k, v in f.items() if k.startswith(prefix))
        rm, pp, pp1 = pick("regmean ("), pick("regmean_pp (α 0.9"), pick("regmean_pp (α 1")
        gnn = next(v for k, v in f.items() if "best on validation" in k)
        avg, default = pick("average"), pick("progressive")
        out.append(f"{name}: RegMean++ (α 0.9) {pp / rm:.2f}× RegMean's test force MAE at "
                   f"the same α, {pp1 / rm:.2f}× with α 1; GNNMerge (validation-chosen) "
                   f"{gnn / avg:.2f}× the average's, {gnn / rm:.2f}× RegMean's; the package "
                   f"default (progressive) {default / pp:.2f}× RegMean++'s.")
    return out

if __name__ == "__main__":
    main()
