"""Data efficiency: a short fine-tune on the union ("repair") from different starting points.

On one pair (default: rMD17 ethanol / malonaldehyde) with the main table's fine-tunes
(shared cache), each start — the default merge, the paper recipe, average, TIES (grid on
validation) and the foundation itself — is fine-tuned on 125, 250, 500 and 750 frames of
the combined training split for a number of epochs (:func:`gffmerge.repair.repair`, all
parameters, the recipe's learning rate), keeping the best validation epoch. The test force
MAE of each result is plotted against the frames, and the validation force MAE of every
epoch against the epochs. The joint model (trained on the budget's frames) is the line to
reach. Writes ``benchmarks/results/paper/data_efficiency.md`` (+ ``.csv``, ``.png``).

    python benchmarks/paper/data_efficiency.py --quick --models gns
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paperlib as pl  # noqa: E402

from gffmerge import methods  # noqa: E402
from gffmerge.checkpoint import load_checkpoint  # noqa: E402
from gffmerge.repair import repair  # noqa: E402

STARTS = (methods.DEFAULT_METHOD, "gffmerge", "average", "ties", "foundation")


def main(argv: list[str] | None = None) -> int:
    p = pl.parser(__doc__.splitlines()[0])
    p.add_argument("--pair", choices=sorted(pl.PAIRS), default="rmd17-ethanol-malonaldehyde")
    p.add_argument("--frames", nargs="+", type=int,
                   help="repair frames (default 125 250 500 750; quick: 125 250)")
    p.add_argument("--epochs", type=int, help="repair epochs (default 10; quick: 4)")
    p.add_argument("--starts", nargs="+", default=list(STARTS), choices=list(STARTS))
    args = pl.parse(p, argv)
    small = pl.budget_of(args).name != "full"
    args.frames = args.frames or ([125, 250] if small else [125, 250, 500, 750])
    args.epochs = args.epochs or (4 if small else 10)
    if pl.budget_of(args).name == "tiny":
        args.frames, args.epochs = [4, 8], 2
    rec = pl.Recorder(args, "data_efficiency", f"Data efficiency of a short fine-tune "
                                               f"from each start on {args.pair}")
    curves: dict = {}
    failures = []
    joint_f: dict = {}
    for model in args.models:
        for seed in args.seeds:
            try:
                run_one(args, rec, curves, joint_f, model, seed)
            except Exception as exc:  # noqa: BLE001  (recorded, the others still run)
                traceback.print_exc()
                failures.append(f"{model} seed {seed}: {type(exc).__name__}: {exc}")
            write(rec, args, curves, joint_f, failures)
    write(rec, args, curves, joint_f, failures)
    return 1 if failures and not rec.rows else 0


def run_one(args, rec, curves, joint_f, model: str, seed: int) -> None:
    systems = pl.PAIRS[args.pair]
    payload = pl.experiment(args, model, args.pair, systems, seed, methods_=[])  # the joint
    joint_f.setdefault(model, []).append(payload["methods"]["joint"]["combined"]
                                         ["force_mae_mev_per_a"])
    exp, sources = pl.prepared(args, model, args.pair, systems, seed)
    cfg = exp.cfg
    val = exp.data.split("val")
    for start in args.starts:
        if start == "foundation":
            start_model, merge_s = load_checkpoint(cfg.foundation)[0], 0.0
        else:
            start_model, merge_s, _ = exp.merge(start, sources, cfg.foundation)
        before = pl.errors(exp, start_model)
        before_val = pl.errors(exp, start_model, val)
        rec.add(model=model, seed=seed, start=start, frames=0, epochs=0, F=before["F"],
                E=before["E"], seconds=merge_s, best_epoch=0)
        for n in args.frames:
            fixed = repair(start_model, exp.data, frames=n, epochs=args.epochs, seed=seed,
                           batch_size=cfg.batch_size,
                           val_frames=cfg.val_frames * len(exp.names), progress=args.progress)
            err = pl.errors(exp, fixed.model)
            best = min(range(len(fixed.history)),
                       key=lambda i: fixed.history[i]["val_loss"]) + 1
            rec.add(model=model, seed=seed, start=start, frames=n, epochs=args.epochs,
                    F=err["F"], E=err["E"], seconds=merge_s + fixed.seconds, best_epoch=best)
            curves[(model, seed, start, n)] = [before_val["F"]] + [
                h["val_force_mae_mev_per_a"] for h in fixed.history]


def write(rec: pl.Recorder, args, curves, joint_f, failures: list[str]) -> None:
    keys = list(dict.fromkeys((r["model"], r["start"]) for r in rec.rows))
    frames = [0, *args.frames]
    lines = []
    for model, start in keys:
        cells = [model, start]
        for n in frames:
            vals = [r["F"] for r in rec.rows if (r["model"], r["start"], r["frames"]) ==
                    (model, start, n)]
            cells.append(pl.fmt(vals) if vals else "")
        lines.append(cells)
    for model, vals in joint_f.items():
        lines.append([model, "joint (reference)", pl.fmt(vals), *([""] * len(args.frames))])
    body = ["Combined test force MAE (meV/Å) after the fine-tune, by repair frames "
            f"(0: the start itself); {args.epochs} epochs each, best validation epoch kept:",
            "", *pl.table(["model", "start", *(f"{n} frames" for n in frames)], lines), "",
            "The right panel of the chart is the validation force MAE at every epoch of the "
            f"{max(args.frames)}-frame runs (epoch 0: the start). The learning rate follows "
            "the repair's schedule over its epochs, so an epoch of a longer run is not a "
            "shorter run's end.", ""]
    body += pl.failure_lines(failures)
    md = rec.write(body)
    plt = pl.pyplot()
    if plt is None or not rec.rows:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    for model, start in keys:
        pts = [(n, pl.mean_std([r["F"] for r in rec.rows if (r["model"], r["start"],
                                                           r["frames"]) == (model, start, n)])[0])
               for n in args.frames]
        a.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{model} {start}")
        runs = [c for k, c in curves.items() if k[0] == model and k[2] == start
                and k[3] == max(args.frames)]
        if runs:
            mean = [pl.mean_std([c[i] for c in runs if i < len(c)])[0]
                    for i in range(max(map(len, runs)))]
            b.plot(range(len(mean)), mean, "o-", label=f"{model} {start}")
    for model, vals in joint_f.items():
        a.axhline(pl.mean_std(vals)[0], ls="--", color="k", lw=1, label=f"{model} joint")
    a.set_xlabel("repair frames")
    a.set_ylabel("combined test force MAE (meV/Å)")
    b.set_xlabel("epoch")
    b.set_ylabel("validation force MAE (meV/Å)")
    for ax in (a, b):
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    pl.save_figure(plt, fig, md.with_suffix(".png"))


if __name__ == "__main__":
    raise SystemExit(main())
