"""Repair fine-tune of the rMD17 GNS average merge (ethanol + malonaldehyde).

Averages the shipped fine-tunes ``checkpoints/rmd17/gns_ethanol.pt`` and
``gns_malonaldehyde.pt``, repairs the average with :func:`gffmerge.repair.repair` on at most
``--frames`` training frames (evenly spread over the two systems) for ``--epochs`` epochs, for
each ``--scopes`` and ``--lrs`` entry, and compares the combined test force MAE before and
after. Wall time: merge + repair against the joint model's training time, as recorded in
``gns_joint.pt``'s metadata (under another machine load) and as one joint epoch (the same
recipe, from ``gns_foundation.pt``) timed in this run times the joint's epochs, so that the
ratio is measured under one load. Writes ``benchmarks/results/repair_rmd17.md``.

    python benchmarks/bench_repair.py [--frames 250] [--epochs 10] [--scopes heads all]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from benchenv import cpu_name, git_commit

import gffmerge
from gffmerge.checkpoint import load_checkpoint
from gffmerge.data import load_dataset
from gffmerge.evaluate import evaluate
from gffmerge.repair import repair
from gffmerge.train import TrainConfig, train

SYSTEMS = ("rmd17/ethanol", "rmd17/malonaldehyde")
ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "rmd17"






def _cells(ev: dict) -> list[str]:
    return [f"{ev[k]['force_mae_mev_per_a']:.1f}" for k in ("all", *SYSTEMS)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--scopes", nargs="+", default=["heads", "last:10", "all"])
    p.add_argument("--lrs", nargs="+", type=float, default=[5e-4])
    p.add_argument("--no-joint-epoch", action="store_true",
                   help="skip timing one epoch of joint training in this run")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/repair_rmd17.md"))
    args = p.parse_args()
    load_before = os.getloadavg()
    data = load_dataset(list(SYSTEMS))
    test = data.split("test")
    sources = [load_checkpoint(CKPT / f"gns_{s.split('/')[1]}.pt")[0] for s in SYSTEMS]
    joint, joint_meta = load_checkpoint(CKPT / "gns_joint.pt")
    t0 = time.perf_counter()
    average = gffmerge.merge(sources, method="average", progress=False).model
    merge_s = time.perf_counter() - t0
    # Neighbour lists of every frame first, so that no timed run pays for building them.
    for position in range(len(data)):
        data.neighbors(position, average.cutoff)
    rows = [("joint (shipped)", evaluate(joint, test, progress=False), None, None),
            ("average", evaluate(average, test, progress=False), merge_s, None)]
    for lr in args.lrs:
        for scope in args.scopes:
            result = repair(average, data, frames=args.frames, epochs=args.epochs,
                            scope=scope, lr=lr)
            ev = evaluate(result.model, test, progress=False)
            rows.append((f"average + repair ({scope}, lr {lr:g})", ev,
                         merge_s + result.seconds, result))
            print(f"{scope} lr {lr:g}: test F MAE {ev['all']['force_mae_mev_per_a']:.1f} "
                  f"meV/Å, {result.seconds:.1f} s (training loop {result.train.seconds:.1f} s)",
                  flush=True)
    joint_s = float(joint_meta["wall_seconds"])
    joint_epochs = int(joint_meta["metrics"]["epochs_run"])
    epoch_s = same_load_s = None
    if not args.no_joint_epoch:
        jc = joint_meta["config"]
        cfg = TrainConfig(systems=list(SYSTEMS), role="joint",
                          init=str(CKPT / "gns_foundation.pt"), epochs=1, lr=jc["lr"],
                          batch_size=jc["batch_size"], train_frames=jc["train_frames"],
                          seed=jc["seed"])
        epoch_s = train(cfg, dataset=data, progress=False).seconds
        same_load_s = epoch_s * joint_epochs
        print(f"one joint epoch: {epoch_s:.1f} s", flush=True)
    lrs = " ".join(f"{x:g}" for x in args.lrs)
    lines = [
        "# Repair fine-tune of the rMD17 GNS average merge", "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python "
        f"benchmarks/bench_repair.py --frames {args.frames} --epochs {args.epochs} --scopes "
        f"{' '.join(args.scopes)} --lrs {lrs}`; commit {git_commit()}; machine: {cpu_name()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; load average "
        f"(1/5/15 min) {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (a shared 2-core machine: wall times are upper "
        "bounds).", "",
        f"Sources: the shipped `gns_ethanol.pt` and `gns_malonaldehyde.pt`, merged by "
        f"`method=\"average\"`. Repair: at most {args.frames} training frames evenly spread "
        f"over the two systems (seed 42), {args.epochs} epochs, batch 8, warm-up + cosine "
        "schedule, the starting model validated first and the best-validation model kept (all "
        f"{len(data.split('val'))} validation frames). Test: all {len(test)} frames of the "
        "combined test split (hash split 80/10/10, seed 42). Force MAE over components, "
        "meV/Å. Wall time of a repair: all of `repair()` (data, scope, validation of the "
        "start and after every epoch, the final validation and test evaluation in `train`); "
        "neighbour lists of all frames are built before any timing.",
        "",
        f"Joint training time: {joint_s:.0f} s for {joint_epochs} epochs in the shipped "
        "checkpoint's metadata (recorded under another load); "
        + ("not re-timed here." if epoch_s is None else
           f"one joint epoch of the same recipe timed in this run: {epoch_s:.1f} s, so "
           f"{same_load_s:.0f} s for {joint_epochs} epochs under this run's load. The last "
           "column divides that by merge + repair."), "",
        "| model | test F MAE all | ethanol | malonaldehyde | trained tensors | best epoch "
        "| val loss start → best | wall time (s) | joint time (this load) / this |",
        "|---|---|---|---|---|---|---|---|---|"]
    for label, ev, seconds, result in rows:
        ratio = "" if seconds is None or same_load_s is None else f"{same_load_s / seconds:.1f}×"
        if result is None:
            extra = ["", "", ""]
            wall = (f"{joint_s:.0f} (training, metadata)" if seconds is None
                    else f"{seconds:.2f} (merge)")
        else:
            extra = [str(len(result.trainable)), str(result.metrics["best_epoch"]),
                     f"{result.start_val_loss:.4f} → {result.best_val_loss:.4f}"]
            wall = f"{seconds:.1f} (merge + repair)"
        lines.append("| " + " | ".join([label, *_cells(ev), *extra, wall, ratio]) + " |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
