"""One-shot sums with derived against measured targets' sums (issue 15, round 7).

For the shipped LiPS20 Li3P / P2S5 fine-tunes (GNS and PaiNN), in one process and
interleaved round by round (best of ``--repeats``, CPU time of this process, one torch
thread by default):

* ``sums``: the progressive default's one-shot anchor sums of both sources (every reached
  layer, value and tangent rows along one random direction per frame,
  ``stage_sums(None, ...)``) with ``cross="auto"`` (targets' sums of affine layers from
  their Grams and weights) and ``cross="measured"`` (from the recorded outputs: the route
  before round 7), with the largest relative difference of their cross sums;
* ``merge`` (``--merge``): the default ``progressive_merge`` (anchors, then the staged
  grid search) on a small budget, its one-shot sums on either route (both anchor call
  sites patched), and whether both pick the same point.

Writes ``benchmarks/results/one_shot_routes.md``.

    OMP_NUM_THREADS=1 python benchmarks/bench_one_shot_routes.py [--merge] [--frames 16]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from benchenv import cpu_name, git_commit

import gffmerge.methods._progressive_anchors as anchors
import gffmerge.methods.progressive as prog
from gffmerge.checkpoint import load_checkpoint
from gffmerge.collect import progressive as cp
from gffmerge.collect.order import layer_order, mergeable_layers
from gffmerge.data import load_dataset
from gffmerge.solver import build_model, mean_state_dict

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("lips20/Li3P", "lips20/P2S5")
ROUTES = ("auto", "measured")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def load(model_name: str, frames: int, batch: int):
    models = [load_checkpoint(ROOT / "checkpoints" / "lips20" /
                              f"{model_name}_{s.split('/')[1]}.pt")[0].eval()
              for s in SYSTEMS]
    data = load_dataset(list(SYSTEMS))
    train, val = data.split("train"), data.split("val")
    batches = [list(train.for_system(s).subset(frames, seed=0).batches_for(models[0], batch))
               for s in SYSTEMS]
    vals = [val.for_system(s).subset(frames, seed=0) for s in SYSTEMS]
    return models, batches, vals


def time_sums(model_name: str, frames: int, batch: int, repeats: int) -> dict:
    models, batches, _ = load(model_name, frames, batch)
    infos = mergeable_layers(models[0])
    names = list(infos)
    order = layer_order(build_model(models[0], mean_state_dict(models)), batches[0][0])
    srcs = cp.prepare_sources(models, batches, frames=None, names=names, tangents=True,
                              seed=0, outputs=False)

    def run(route):
        return cp.stage_sums(None, srcs, list(order.order), infos, calls=order.calls,
                             tangents=True, cross=route)

    out = {r: run(r) for r in ROUTES}  # warm-up, and the sums compared
    worst = max(_rel(getattr(a[n], f), getattr(b[n], f))
                for a, b in zip(out["auto"], out["measured"], strict=True)
                for n in a for f in ("cross", "tcross") if getattr(b[n], f).abs().max() > 0)
    derived = sum(s.route == "derived" for s in out["auto"][0].values())
    cpu = {r: float("inf") for r in ROUTES}
    ratios = []
    for k in range(repeats):
        this = {}
        for r in (ROUTES if k % 2 == 0 else ROUTES[::-1]):
            c0 = time.process_time()
            run(r)
            this[r] = time.process_time() - c0
            cpu[r] = min(cpu[r], this[r])
        ratios.append(this["auto"] / this["measured"])
    ratios.sort()
    b0 = batches[0][0]
    return dict(model=model_name, frames=frames, batch=batch, atoms=b0.num_atoms,
                edges=b0.num_edges, layers=len(order.order), derived=derived,
                measured_s=cpu["measured"], auto_s=cpu["auto"],
                median_ratio=ratios[len(ratios) // 2], lo=ratios[0], hi=ratios[-1],
                max_rel_cross=worst, load=os.getloadavg()[0])


def time_merge(model_name: str, frames: int, batch: int, repeats: int) -> dict:
    models, batches, vals = load(model_name, frames, batch)
    opts = prog.ProgressiveOptions(frames=frames, search_frames=max(1, frames // 2),
                                   val_frames=frames)
    orig = cp.stage_sums

    def run(route):
        patched = functools.partial(orig, cross=route)
        anchors.stage_sums, prog.stage_sums = patched, patched
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                c0 = time.process_time()
                res = prog.progressive_merge(models, batches, opts, val_data=vals,
                                             progress=False)
                return time.process_time() - c0, res.report.options
        finally:
            anchors.stage_sums, prog.stage_sums = orig, orig

    cpu = {r: float("inf") for r in ROUTES}
    picks = {}
    for k in range(repeats):
        for r in (ROUTES if k % 2 == 0 else ROUTES[::-1]):
            t, o = run(r)
            cpu[r] = min(cpu[r], t)
            picks[r] = (o["chosen"], o.get("chosen_ridge"), o.get("chosen_beta"),
                        o["val_force_mae_mev_per_a"])
    return dict(model=model_name, frames=frames, measured_s=cpu["measured"],
                auto_s=cpu["auto"], picks=picks, load=os.getloadavg()[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["gns", "painn"])
    p.add_argument("--frames", type=int, default=16, help="training frames per source")
    p.add_argument("--batch", type=int, default=8, help="frames per batch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--merge", action="store_true", help="also time progressive_merge")
    p.add_argument("--merge-repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/one_shot_routes.md"))
    args = p.parse_args()
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_one_shot_routes.py " + " ".join(
        sys.argv[1:])
    lines = ["# One-shot sums: derived against measured targets' sums (issue 15, round 7)",
             "", f"Command: `{command.strip()}`; machine: {cpu_name()}, {os.cpu_count()} "
             f"cores shared with other jobs; {torch.get_num_threads()} torch thread(s); "
             f"torch {torch.__version__}; commit {git_commit()}; load average at start "
             f"{os.getloadavg()[0]:.1f}.", "",
             "CPU seconds of this process, best of the rounds, routes interleaved (order "
             "alternating); `auto/measured` = median [range] of the per-round ratios. "
             "Sums: the default merge's one-shot anchor sums of both sources (tangent rows "
             "on); `max rel. cross` = largest |auto - measured| / max |measured| over the "
             "cross sums of every layer (float32 models: the rounding of the measured "
             "outputs).", "",
             "| model | frames/source | atoms / edges per batch | layers derived | measured s "
             "| auto s | auto/measured | max rel. cross | load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in args.models:
        r = time_sums(m, args.frames, args.batch, args.repeats)
        print(r, flush=True)
        lines.append(f"| {m} | {r['frames']} | {r['atoms']} / {r['edges']} | {r['derived']}"
                     f" / {r['layers']} | {r['measured_s']:.2f} | {r['auto_s']:.2f} | "
                     f"{r['median_ratio']:.3f} [{r['lo']:.3f}-{r['hi']:.3f}] | "
                     f"{r['max_rel_cross']:.1e} | {r['load']:.1f} |")
    if args.merge:
        lines += ["", "Default `progressive_merge` (anchors and staged search), "
                  f"{args.frames} training / {args.frames} validation / "
                  f"{max(1, args.frames // 2)} search frames per source, best of "
                  f"{args.merge_repeats} per route:", "",
                  "| model | measured s | auto s | auto/measured | pick (measured) | "
                  "pick (auto) | load |", "|---|---|---|---|---|---|---|"]
        for m in args.models:
            r = time_merge(m, args.frames, args.batch, args.merge_repeats)
            print(r, flush=True)
            fmt = lambda p: f"{p[0]}, ridge {p[1]}, β {p[2]}, val F {p[3]:.2f} meV/Å"  # noqa: E731
            lines.append(f"| {m} | {r['measured_s']:.1f} | {r['auto_s']:.1f} | "
                         f"{r['auto_s'] / r['measured_s']:.3f} | {fmt(r['picks']['measured'])}"
                         f" | {fmt(r['picks']['auto'])} | {r['load']:.1f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
