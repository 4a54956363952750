"""The repair's learning rate: full repairs of the default's start at several rates.

The repair (``gffmerge.repair.repair``) trains at the sources' fine-tuning rate, 5e-4, and
every repair so far ended at its best epoch on its last (``repair_rmd17.md``: 2e-3 was better
than 5e-4 for the average's repair on rMD17). On the shipped pairs this script merges with
the experiment runner's settings (the default, ``alternatives=True``), takes the start the
repair's probes choose (as ``gffmerge experiment --repair`` does), and repairs it with the
experiment's budget at each ``--lrs`` rate. For each rate it also runs the probe schedule
(``--probe-epochs``, then twice that), to see whether a probe could choose the rate on
validation. Test errors are reported, never used to choose. Writes
``benchmarks/results/repair_lr.md`` (+ ``.csv``).

    python benchmarks/bench_repair_lr.py [--pairs rmd17:gns rmd17:painn lips20:gns
        lips20:painn] [--lrs 0.0005 0.001 0.002 0.004]
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch
from bench_repair_starts import _force, shipped_default
from benchenv import ROOT, cpu_name, git_commit

from gffmerge.checkpoint import load_checkpoint
from gffmerge.repair import repair


def run_pair(dataset: str, model_kind: str, lrs: list[float], probe_epochs: int) -> dict:
    m = shipped_default(dataset, model_kind, probe_epochs)
    cfg, exp, paths, pick, alternatives = m.cfg, m.exp, m.paths, m.pick, m.alternatives
    kw = dict(frames=cfg.repair_frames, seed=cfg.seed, batch_size=cfg.batch_size,
              val_frames=cfg.val_frames * len(exp.names))
    # the start the experiment's repair would take (its probes at the default rate)
    chosen = repair(pick, exp.data, epochs=probe_epochs, starts=alternatives or None,
                    probe_epochs=probe_epochs, **kw)
    start_label = "pick" if chosen.start in (None, "given") else chosen.start
    start = pick if start_label == "pick" else alternatives[start_label]
    rows = {}
    for lr in lrs:
        t0 = time.perf_counter()
        probe = repair(start, exp.data, epochs=probe_epochs, lr=lr, **kw)
        probe2 = repair(start, exp.data, epochs=2 * probe_epochs, lr=lr, **kw)
        probe_s = time.perf_counter() - t0
        full = repair(start, exp.data, epochs=cfg.repair_epochs, lr=lr, **kw)
        rows[lr] = dict(probe_val=probe.best_val_loss, probe2_val=probe2.best_val_loss,
                        probe_s=probe_s, full_val=full.best_val_loss,
                        best_epoch=full.train.metrics.get("best_epoch"),
                        after=_force(full.model, exp.test), full_s=full.seconds)
        print(f"{dataset} {model_kind} lr {lr}: {rows[lr]}", flush=True)
    joint = load_checkpoint(paths[2])[0]
    return dict(dataset=dataset, model=model_kind, rows=rows, start=start_label,
                before=_force(start, exp.test), joint=_force(joint, exp.test),
                epochs=cfg.repair_epochs, frames=cfg.repair_frames)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+",
                   default=["rmd17:gns", "rmd17:painn", "lips20:gns", "lips20:painn"])
    p.add_argument("--lrs", nargs="+", type=float, default=[5e-4, 1e-3, 2e-3, 4e-3])
    p.add_argument("--probe-epochs", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/repair_lr"))
    args = p.parse_args()
    t0, load0 = time.time(), os.getloadavg()[0]
    results = [run_pair(*pair.split(":"), args.lrs, args.probe_epochs)
               for pair in args.pairs]
    command = "python benchmarks/bench_repair_lr.py --pairs " + " ".join(args.pairs) + \
        " --lrs " + " ".join(str(x) for x in args.lrs) + f" --probe-epochs {args.probe_epochs}"
    lines = ["# The repair's learning rate", "",
             f"Command: `{command}`; commit {git_commit()}; machine: {cpu_name()}, "
             f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; load average "
             f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at the end; total "
             f"{(time.time() - t0) / 60:.1f} min.", "",
             "Each pair: the default merge with the experiment runner's settings, the start "
             "its repair probes choose (at the default rate 5e-4), then that start repaired at "
             "each rate with the experiment's budget (frames and epochs below, scope all, "
             "warm-up + cosine schedule, best validation epoch kept), and probed at each rate "
             f"for {args.probe_epochs} and {2 * args.probe_epochs} epoch(s) on the same "
             "frames. Validation losses choose; test force MAE (meV/Å) is only reported.", ""]
    flat = []
    for r in results:
        lines += [f"## {r['model']} {r['dataset']} (start: {r['start']}, test {r['before']:.1f} "
                  f"before repair; joint {r['joint']:.1f}; {r['frames']} frames, "
                  f"{r['epochs']} epochs)", "",
                  "| lr | probe val loss | second probe | full repair val loss | best epoch | "
                  "test after repair | probes s | repair s |", "|---|---|---|---|---|---|---|---|"]
        for lr, x in r["rows"].items():
            lines.append(f"| {lr:g} | {x['probe_val']:.5f} | {x['probe2_val']:.5f} | "
                         f"{x['full_val']:.5f} | {x['best_epoch']} | {x['after']:.1f} | "
                         f"{x['probe_s']:.0f} | {x['full_s']:.0f} |")
            flat.append(dict(dataset=r["dataset"], model=r["model"], start=r["start"], lr=lr,
                             joint=r["joint"], before=r["before"], **x))
        by = {k: min(r["rows"], key=lambda lr, k=k: r["rows"][lr][k])
              for k in ("probe2_val", "full_val")}
        default = r["rows"].get(5e-4, {}).get("after", float("nan"))
        lines += ["", f"Rate by the second probe: {by['probe2_val']:g} (test "
                  f"{r['rows'][by['probe2_val']]['after']:.1f}); by the full repairs' "
                  f"validation: {by['full_val']:g} (test "
                  f"{r['rows'][by['full_val']]['after']:.1f}); the default 0.0005: "
                  f"{default:.1f}.", ""]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    with open(f"{args.out}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
    print(f"wrote {args.out}.md / .csv")


if __name__ == "__main__":
    main()
