"""Passes of a progressive merge against the bound (S + 1)·K forwards (issue 15).

For the shipped GNS rMD17 ethanol/malonaldehyde fine-tunes (K = 2 sources) and PaiNN's
(conservative: tangent rows, one dual pass per stage and source), a progressive merge
with a fixed ridge (no search) on ``--frames`` training frames per source, counted with a
global forward pre-hook on every ``nn.Linear``:

* ``passes``: forwards started (model calls), split into the sources' target passes, the
  layer-order probe, the stage passes of the merged model and the energy refit;
* ``forward-equivalents``: linear-layer calls made, over those of one full forward of all
  K sources on their data (a stage pass stops once its layers have been seen, so it
  counts as the fraction of the forward it ran);
* CPU time of the merge over the CPU time of one forward of each source on its data
  (``default_forward`` under ``no_grad``, best of 3): the bound is S + 1 (S stages).

    python benchmarks/bench_progressive_passes.py [--frames 32] [--models gns painn]

Writes ``benchmarks/results/progressive_passes_rmd17.md``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from benchenv import cpu_name, git_commit
from torch import nn

import gffmerge.methods.progressive as pm
from gffmerge.checkpoint import load_checkpoint
from gffmerge.collect import default_forward
from gffmerge.data import load_dataset
from gffmerge.methods.progressive import ProgressiveOptions, progressive_merge

SYSTEMS = ("rmd17/ethanol", "rmd17/malonaldehyde")
ROOT = Path(__file__).resolve().parents[1]


def forward_cpu(models, batches, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        with torch.no_grad():
            for m, bs in zip(models, batches):
                for b in bs:
                    default_forward(m, b)
        best = min(best, time.process_time() - c0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=32, help="training frames per source")
    p.add_argument("--batch", type=int, default=16, help="frames per batch")
    p.add_argument("--models", nargs="+", default=["gns", "painn"])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/progressive_passes_rmd17.md"))
    args = p.parse_args()
    data = load_dataset(list(SYSTEMS)).split("train")
    load0 = os.getloadavg()[0]
    lines = ["# Passes of the progressive merge against (S + 1)·K forwards (rMD17 pair)", "",
             f"Command: `python benchmarks/bench_progressive_passes.py --frames {args.frames} "
             f"--batch {args.batch} --models {' '.join(args.models)}`; commit {git_commit()}; "
             f"machine: {cpu_name()}, {os.cpu_count()} cores shared with other jobs, "
             f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}; load "
             f"average {load0:.1f} at start.", "",
             f"K = 2 sources ({', '.join(SYSTEMS)}), {args.frames} training frames each in "
             f"batches of {args.batch}; fixed ridge 1e-2 (no search); β 1 with tangent rows "
             "for the conservative PaiNN, none for the direct GNS. `fwd-eq` = linear-layer "
             "calls over those of one forward of each source on its data; `passes` = model "
             "calls (targets / order probe / stage passes / energy refit); `CPU ratio` = the "
             "merge's CPU time over one forward of each source on its data (best of 3); "
             "`of bound` = CPU ratio / (S + 1); the rest of the merge time is the layer "
             "solves (`solve_stage`) and bookkeeping.", "",
             "| model | stages S | bound (S+1) | passes | fwd-eq | fwd-eq in stage passes | "
             "forward CPU s | merge CPU s | CPU ratio | of bound | CPU s targets / order / "
             "stage sums / refit | targets + stage sums over forward |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        ck = ROOT / "checkpoints" / "rmd17"
        models = [load_checkpoint(ck / f"{name}_{s.split('/')[1]}.pt")[0].eval()
                  for s in SYSTEMS]
        batches = [list(data.for_system(s).subset(args.frames, seed=0)
                        .batches_for(m, args.batch)) for s, m in zip(SYSTEMS, models)]
        tops = tuple({type(m) for m in models})
        calls: Counter = Counter()
        phase = ["forward"]

        def pre(module, args_, calls=calls, tops=tops, phase=phase):
            if isinstance(module, nn.Linear):
                calls[phase[0], "linear"] += 1
            elif isinstance(module, tops):
                calls[phase[0], "model"] += 1

        cpu: Counter = Counter()

        def tagged(fn, tag, phase=phase, cpu=cpu):
            def run(*a, **kw):
                phase[0] = tag
                c0 = time.process_time()
                try:
                    return fn(*a, **kw)
                finally:
                    phase[0] = "other"
                    cpu[tag] += time.process_time() - c0
            return run

        names = {"prepare_sources": "targets", "layer_order": "order",
                 "stage_sums": "stages", "refit_reference_energies": "refit"}
        saved = {f: getattr(pm, f) for f in names}
        handle = nn.modules.module.register_module_forward_pre_hook(pre)
        try:
            forward_cpu(models, batches, repeats=1)
            per_forward = calls["forward", "linear"]  # one forward of each source
            f_cpu = forward_cpu(models, batches)
            calls.clear()
            for f, tag in names.items():
                setattr(pm, f, tagged(saved[f], tag))
            opts = ProgressiveOptions(ridge=1e-2, beta=1.0, tangents="auto",
                                      frames=args.frames, energy_refit=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = progressive_merge(models, batches, opts, progress=False)
        finally:
            handle.remove()
            for f, fn in saved.items():
                setattr(pm, f, fn)
        t = res.report.times
        stages = len(res.report.options["stages"])
        tags = ("targets", "order", "stages", "refit")
        passes = " / ".join(str(calls[g, "model"]) for g in tags)
        eq = sum(v for (g, k), v in calls.items() if k == "linear") / per_forward
        stage_eq = calls["stages", "linear"] / per_forward
        ratio = t["total_cpu"] / f_cpu
        passes_cpu = (cpu["targets"] + cpu["stages"]) / f_cpu
        lines.append(f"| {name} | {stages} | {stages + 1} | {passes} | {eq:.1f} | "
                     f"{stage_eq:.1f} | {f_cpu:.2f} | {t['total_cpu']:.2f} | {ratio:.1f}× | "
                     f"{ratio / (stages + 1):.2f} | {cpu['targets']:.2f} / {cpu['order']:.2f}"
                     f" / {cpu['stages']:.2f} / {cpu['refit']:.2f} | {passes_cpu:.1f}× |")
        print(lines[-1], flush=True)
    lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
