"""Repair started from the default merge against repair started from the average.

For the shipped rMD17 ethanol / malonaldehyde fine-tunes (GNS and PaiNN): merge by averaging
and by the package default (validation frames pick its hyperparameters), repair each with
the same budget (≤ 250 frames, 10 epochs, scope all), and report the combined test force MAE
before and after, the epochs the default's repair needs to reach the validation loss the
average's repair ends with (issue target: ≤ 1/3 of the steps), and the wall times against
the joint model's training time. Writes ``benchmarks/results/repair_start_rmd17.md``.

    python benchmarks/bench_repair_start.py [--models gns painn] [--frames 250] [--epochs 10]
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
from gffmerge.checkpoint import load_checkpoint
from gffmerge.data import load_dataset
from gffmerge.evaluate import evaluate
from gffmerge.repair import repair

SYSTEMS = ("rmd17/ethanol", "rmd17/malonaldehyde")
ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "rmd17"


def _epochs_to_reach(history: list[dict], target: float) -> int | None:
    """The first epoch (1-based) whose validation loss is ≤ ``target``."""
    for i, row in enumerate(history):
        if row["val_loss"] <= target:
            return i + 1
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["gns", "painn"])
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/repair_start_rmd17.md"))
    args = p.parse_args()
    commit, load = git_commit(), os.getloadavg()
    data = load_dataset(list(SYSTEMS))
    test, train, val = data.split("test"), data.split("train"), data.split("val")
    rows = []
    for name in args.models:
        sources = [load_checkpoint(CKPT / f"{name}_{s.split('/')[1]}.pt")[0] for s in SYSTEMS]
        joint, joint_meta = load_checkpoint(CKPT / f"{name}_joint.pt")
        loaders = [train.for_system(s).batches_for(m, 8) for s, m in zip(SYSTEMS, sources)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            avg = gffmerge.merge(sources, method="average", progress=False).model
            avg_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            default = gffmerge.merge(sources, loaders, progress=False,
                                     val_data=[val.for_system(s) for s in SYSTEMS]).model
            default_s = time.perf_counter() - t0
        joint_f = evaluate(joint, test, progress=False)["all"]["force_mae_mev_per_a"]
        runs = {}
        for label, model, merge_s in (("average", avg, avg_s), ("default", default, default_s)):
            before = evaluate(model, test, progress=False)["all"]["force_mae_mev_per_a"]
            res = repair(model, data, frames=args.frames, epochs=args.epochs, scope="all")
            after = evaluate(res.model, test, progress=False)["all"]["force_mae_mev_per_a"]
            runs[label] = (before, after, merge_s, res)
            print(f"{name} {label}: {before:.1f} -> {after:.1f} meV/Å "
                  f"({merge_s:.1f} s merge + {res.seconds:.1f} s repair)", flush=True)
        target = runs["average"][3].best_val_loss
        reach = _epochs_to_reach(runs["default"][3].train.history, target)
        rows.append((name, joint_f, float(joint_meta["wall_seconds"]), runs, target, reach))
    lines = ["# Repair from the default merge against repair from the average (rMD17)", "",
             f"Command: `python benchmarks/bench_repair_start.py --models "
             f"{' '.join(args.models)} --frames {args.frames} --epochs {args.epochs}`; "
             f"commit {commit}; machine: {cpu_name()}, {torch.get_num_threads()} torch "
             f"threads, torch {torch.__version__}; load average {load[0]:.1f} at start "
             f"(shared 2-core machine: wall times are upper bounds).", "",
             "Combined test force MAE (meV/Å) of the ethanol + malonaldehyde test split. "
             f"Repair: ≤ {args.frames} training frames, {args.epochs} epochs, scope all, "
             "best validation kept. 'Epochs to reach' = the first epoch at which the "
             "default's repair reaches the best validation loss of the average's repair.", "",
             "| model | joint | average → + repair | default → + repair | + repair vs joint "
             "| epochs to reach (of the average's) | merge + repair s (default) | joint "
             "training s (metadata) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, joint_f, joint_s, runs, _target, reach in rows:
        a, d = runs["average"], runs["default"]
        best_epoch = a[3].train.metrics.get("best_epoch", args.epochs - 1) + 1
        lines.append(
            f"| {name} | {joint_f:.1f} | {a[0]:.1f} → {a[1]:.1f} | {d[0]:.1f} → {d[1]:.1f} | "
            f"{d[1] / joint_f:.2f}× | {reach if reach is not None else 'not within budget'} "
            f"(of {best_epoch}) | {d[2] + d[3].seconds:.0f} | {joint_s:.0f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
