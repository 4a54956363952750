"""Is the conflict between two fine-tunes in the first layers? Keep a prefix, solve the rest.

A probe of the LiPS20 Li3P / P2S5 pair (issue 10's open problem: every merge loses one of
the two systems). ``merge_balance_lips20.md`` found the merged model leaving P2S5's function
at the first edge layer, whose input (radial features) does not say which system an edge
belongs to. If that layer were the only conflict, a model that keeps one source's first
stages verbatim and solves only the later stages (progressively, on its own inputs, pooled
over both sources, ridge shrinking toward that source) should keep that source's system and
recover part of the other. This script measures it for every cut (the number of leading
stages of the forward-order stage list kept from the start model) and both starts; cut 0 is
the progressive closed form from that start. The choice a user would make is by the
validation column; test is only reported.

    python benchmarks/bench_merge_prefix.py [--model gns] [--frames 64] [--cuts 0,2,4,7,12]

Writes ``benchmarks/results/merge_prefix_lips20.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from pathlib import Path

import torch
from benchenv import cpu_name, git_commit

from gffmerge.checkpoint import load_checkpoint
from gffmerge.collect.batches import default_forward
from gffmerge.collect.order import layer_order, mergeable_layers
from gffmerge.collect.progressive import prepare_sources, stage_sums
from gffmerge.data import load_dataset
from gffmerge.evaluate import evaluate, system_errors
from gffmerge.solver import build_model, mean_state_dict
from gffmerge.solver.stage import solve_stage

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("lips20/Li3P", "lips20/P2S5")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gns", choices=["gns", "painn"])
    p.add_argument("--frames", type=int, default=64, help="training frames per source")
    p.add_argument("--val-frames", type=int, default=32)
    p.add_argument("--ridge", type=float, default=1e-4)
    p.add_argument("--cuts", default="0,2,4,7,12")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/merge_prefix_lips20.md"))
    args = p.parse_args()
    t_start, load0, commit = time.perf_counter(), os.getloadavg(), git_commit()
    warnings.simplefilter("ignore")
    data = load_dataset(list(SYSTEMS))
    train, val, test = data.split("train"), data.split("val"), data.split("test")
    ck = ROOT / "checkpoints/lips20"
    models = [load_checkpoint(ck / f"{args.model}_{s.split('/')[1]}.pt")[0].eval()
              for s in SYSTEMS]
    short = [s.split("/")[1] for s in SYSTEMS]
    batches = [list(train.for_system(s).subset(args.frames, seed=0).batches_for(m, 8))
               for s, m in zip(SYSTEMS, models)]
    vals = [val.for_system(s).subset(args.val_frames, seed=0) for s in SYSTEMS]
    infos = mergeable_layers(models[0], None)
    sources = prepare_sources(models, batches, frames=None, names=list(infos),
                              tangents=False, direction="random", draws=1, seed=0,
                              labels=None, forward=default_forward,
                              device=torch.device("cpu"), outputs=True)
    order = layer_order(build_model(models[0], mean_state_dict(models)),
                        sources[0].batches[0], forward=default_forward, layers=None, seed=0)
    stages = [list(s) for s in order.stages]

    def solve_from(start: int | None, cut: int, weighting: str) -> torch.nn.Module:
        begin = None if start is None else models[start]
        merged = (build_model(models[0], mean_state_dict(models)) if begin is None
                  else copy.deepcopy(begin)).eval()
        for stage in stages[cut:]:
            sums = stage_sums(merged, sources, stage, infos, calls=order.calls,
                              tangents=False, forward=default_forward, backend="auto",
                              frames=None)
            solve_stage(merged, models, stage, infos, sums, ridge=args.ridge, beta=0.0,
                        weighting=weighting, ridge_mode="relative", prior="mean",
                        start=begin)
        return merged

    rows = []

    def score(label: str, model: torch.nn.Module, seconds: float | None = None) -> None:
        v = [r["force_mae_mev_per_a"] for r in system_errors(model, vals)]
        ev = evaluate(model, test, progress=False)
        t = [ev[s]["force_mae_mev_per_a"] for s in SYSTEMS]
        rows.append((label, sum(v) / 2, *v, sum(t) / 2, *t, ev["all"]["force_mae_mev_per_a"],
                     seconds))
        print(f"{label:55s} val {sum(v) / 2:.1f}  test {sum(t) / 2:.1f} "
              f"({t[0]:.1f} / {t[1]:.1f})", flush=True)

    for s, m in zip(short, models):
        score(f"fine-tune {s}", m)
    for weighting in ("pooled", "per_model"):
        t0 = time.process_time()
        score(f"{weighting}: progressive from the mean (every stage solved)",
              solve_from(None, 0, weighting), time.process_time() - t0)
        for k, s in enumerate(short):
            for cut in (int(c) for c in args.cuts.split(",")):
                kept = f"stages 0-{cut - 1} kept, through {stages[cut - 1][-1]}" if cut else \
                    "every stage solved"
                t0 = time.process_time()
                score(f"{weighting}: from {s}, {kept}", solve_from(k, cut, weighting),
                      time.process_time() - t0)

    load1 = os.getloadavg()
    lines = [f"# Keep a prefix of one source, solve the rest: LiPS20 {short[0]} / {short[1]}, "
             f"{args.model}", "",
             f"Command: `python benchmarks/bench_merge_prefix.py --model {args.model} "
             f"--frames {args.frames} --val-frames {args.val_frames} --ridge {args.ridge:g} "
             f"--cuts {args.cuts}`; commit {commit}; machine: {cpu_name()}, "
             f"{os.cpu_count()} cores shared with other jobs, {torch.get_num_threads()} torch "
             f"thread(s); load average {load0[0]:.1f} at start, {load1[0]:.1f} at end; total "
             f"{(time.perf_counter() - t_start) / 60:.1f} min.", "",
             f"Stages in forward order ({len(stages)}): "
             + "; ".join(f"{i}: {', '.join(st)}" for i, st in enumerate(stages)) + ".", "",
             f"Each merge solves stages `cut…` progressively (inputs from the merged-so-far "
             f"model, targets each source's own layer outputs, {args.frames} training frames "
             f"per source, pooled or each source's sums over its rows (`per_model`), "
             f"relative ridge {args.ridge:g} toward the start, no tangent rows); stages "
             "before the cut keep the start model's weights. Force MAE "
             f"(meV/Å): validation on {args.val_frames} frames per system, test on the whole "
             "test split; `mean` is the mean of the two systems (what the default ranks by), "
             "`all` pools every force component.", "",
             f"| merge | val mean | val {short[0]} | val {short[1]} | test mean | "
             f"test {short[0]} | test {short[1]} | test all | CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, vm, v0, v1, tm, t0_, t1, ta, sec in rows:
        lines.append(f"| {label} | {vm:.1f} | {v0:.1f} | {v1:.1f} | {tm:.1f} | {t0_:.1f} | "
                     f"{t1:.1f} | {ta:.1f} | {'' if sec is None else f'{sec:.1f}'} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
