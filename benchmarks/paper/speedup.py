"""Speed-up: joint training's wall time over the merge's (and the merge plus repair's).

For each architecture, pair and seed, one :mod:`gffmerge.experiment` run with the paper
recipe (``gffmerge``) and the package default (``progressive``), the default repaired. The
fine-tunes and the joint model are shared with the main table (same budget and seed: the
saved trainings are reused, with the wall time they were trained in); the merges and the
repair are timed now. Writes ``benchmarks/results/paper/speedup.md`` (+ ``.csv``, ``.png``).

    python benchmarks/paper/speedup.py --quick --models gns --pairs rmd17-ethanol-malonaldehyde
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paperlib as pl  # noqa: E402

from gffmerge import methods  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = pl.parser(__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", choices=sorted(pl.PAIRS),
                   default=["lips20-beta-gamma", "rmd17-ethanol-malonaldehyde"])
    p.add_argument("--shipped", action="store_true",
                   help="time merges of the shipped fine-tunes against the shipped joint "
                        "model's recorded training time (checkpoints/README.md recipes)")
    args = pl.parse(p, argv)
    if not args.name and args.shipped:
        args.name = "speedup_shipped"
    rec = pl.Recorder(args, "speedup",
                      "Speed-up of merging over joint training"
                      + (" (shipped checkpoints)" if args.shipped else ""))
    default = methods.DEFAULT_METHOD
    failures = []
    for model in args.models:
        for pair in args.pairs:
            for seed in args.seeds:
                try:
                    res = (shipped(args, model, pair, seed) if args.shipped else
                           pl.experiment(args, model, pair, pl.PAIRS[pair], seed,
                                         methods_=["gffmerge", default], repair=True))
                except Exception as exc:  # noqa: BLE001  (recorded, the others still run)
                    traceback.print_exc()
                    failures.append(f"{model} {pair} seed {seed}: {type(exc).__name__}: {exc}")
                    continue
                rows = res["methods"]
                joint = rows["joint"]["seconds"]
                merge = rows[default]["seconds"]
                repaired = rows[f"{default}+repair"]["seconds"]  # merge + repair
                paper = rows["gffmerge"]["seconds"]
                tunes = sum(r["seconds"] for n, r in rows.items() if n.startswith("finetune:"))
                rec.add(model=model, pair=pair, seed=seed, joint_s=joint, finetunes_s=tunes,
                        default_merge_s=merge, repair_s=repaired - merge,
                        paper_merge_s=paper,
                        joint_over_merge_repair=joint / repaired,
                        joint_over_merge=joint / merge, joint_over_paper_merge=joint / paper,
                        joint_F=rows["joint"]["combined"]["force_mae_mev_per_a"],
                        default_F=rows[default]["combined"]["force_mae_mev_per_a"],
                        repaired_F=rows[f"{default}+repair"]["combined"]
                        ["force_mae_mev_per_a"],
                        paper_F=rows["gffmerge"]["combined"]["force_mae_mev_per_a"])
                write(rec, failures)
    write(rec, failures)
    return 1 if failures and not rec.rows else 0


SHIPPED_JOINT = {"lips20-beta-gamma": "joint", "lips20-Li3P-P2S5": "joint-Li3P-P2S5",
                 "rmd17-ethanol-malonaldehyde": "joint"}


def shipped(args, model: str, pair: str, seed: int) -> dict:
    """A results payload (rows joint, gffmerge, default, default+repair) from the shipped
    fine-tunes; the joint row's seconds are its recorded training time."""
    import time

    from gffmerge.checkpoint import load_checkpoint
    from gffmerge.experiment import _Experiment
    from gffmerge.recipes import checkpoint_path, checkpoints_dir
    from gffmerge.repair import repair

    if pair not in SHIPPED_JOINT:
        raise ValueError(f"no shipped joint model for {pair}; choose from "
                         f"{', '.join(SHIPPED_JOINT)}")
    systems = pl.PAIRS[pair]
    dataset = systems[0].split("/")[0]
    path = lambda role: checkpoint_path(checkpoints_dir(), dataset, model, role)  # noqa: E731
    cfg = pl.config(args, model, systems, seed, pl.run_dir(args, model, f"shipped-{pair}",
                                                            seed), methods_=[], repair=True)
    cfg.foundation = str(path("foundation"))
    exp = _Experiment(cfg, args.progress)
    sources = [load_checkpoint(path(s))[0] for s in systems]
    joint, meta = load_checkpoint(path(SHIPPED_JOINT[pair]))
    rows = {"joint": {"seconds": float(meta["wall_seconds"]),
                      "combined": {"force_mae_mev_per_a": pl.errors(exp, joint)["F"]}}}
    for s in systems:
        rows[f"finetune:{s}"] = {"seconds": float(load_checkpoint(path(s))[1]
                                                  ["wall_seconds"])}
    merged = None
    for method in ("gffmerge", methods.DEFAULT_METHOD):
        model_, seconds, _ = exp.merge(method, sources, cfg.foundation)
        rows[method] = {"seconds": seconds,
                        "combined": {"force_mae_mev_per_a": pl.errors(exp, model_)["F"]}}
        merged = model_
    # as the experiment runner repairs: from the best of the default's candidates (its
    # alternatives, their time counted as the repair's) at a rate chosen on validation
    others, alt_s = exp.repair_starts
    t0 = time.perf_counter()
    fixed = repair(merged, exp.data, frames=cfg.repair_frames, epochs=cfg.repair_epochs,
                   seed=seed, batch_size=cfg.batch_size,
                   val_frames=cfg.val_frames * len(systems), starts=others or None,
                   probe_epochs=max(1, cfg.repair_probe_epochs), lr=cfg.repair_lr,
                   progress=args.progress)
    rows[f"{methods.DEFAULT_METHOD}+repair"] = {
        "seconds": rows[methods.DEFAULT_METHOD]["seconds"] + alt_s + time.perf_counter() - t0,
        "combined": {"force_mae_mev_per_a": pl.errors(exp, fixed.model)["F"]}}
    return {"methods": rows}


def write(rec: pl.Recorder, failures: list[str]) -> None:
    head = ["model", "pair", "seed", "joint training s", "fine-tunes s", "default merge s",
            "repair s", "paper-recipe merge s", "joint / (merge + repair)",
            "joint / default merge", "joint / paper merge", "F: joint / default / "
            "+repair / paper"]
    lines = [[r["model"], r["pair"], str(r["seed"]), f"{r['joint_s']:.0f}",
              f"{r['finetunes_s']:.0f}", f"{r['default_merge_s']:.1f}",
              f"{r['repair_s']:.1f}", f"{r['paper_merge_s']:.1f}",
              f"{r['joint_over_merge_repair']:.1f}×", f"{r['joint_over_merge']:.1f}×",
              f"{r['joint_over_paper_merge']:.1f}×",
              f"{r['joint_F']:.0f} / {r['default_F']:.0f} / {r['repaired_F']:.0f} / "
              f"{r['paper_F']:.0f}"] for r in rec.rows]
    body = [*pl.table(head, lines), "",
            "Seconds are wall time on the shared machine: the joint model's is its training "
            "(validation included) as recorded when it was trained; a merge's includes "
            "measuring, its validation search and the solve; the repair is the default "
            "merge's short fine-tune on the union (its frames and epochs are the budget's). "
            "The fine-tunes are needed by both routes (the merge's sources, or not at all "
            "for joint training), so they are listed but not in the ratios, as in the "
            "paper (§7 of the research notes: speed-up = joint training / (merge + "
            "fine-tune)). F: combined test force MAE (meV/Å).", ""]
    if rec.args.shipped:
        body += ["Shipped mode: the sources and the joint model are the shipped checkpoints "
                 "(recipes and wall times in checkpoints/README.md: the plateau recipes train "
                 "the joint models for 170-280 epochs), so the joint time is the one "
                 "recorded when it was trained, on the same shared machine at its load "
                 "then (their CPU time, also in checkpoints/README.md, is about half of "
                 "it; the merges below also ran on shared cores, so the wall-time ratios "
                 "compare like with like only roughly); the merges and the repair (the budget's "
                 "frames and epochs; the repair chooses its start among the default's "
                 "candidates and its rate on validation, as the experiment runner does) "
                 "are timed now, on the budget's merge frames.", ""]
    body += pl.failure_lines(failures)
    md = rec.write(body)
    plt = pl.pyplot()
    if plt is None or not rec.rows:
        return
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rec.rows) + 2))
    labels = [f"{r['model']} {r['pair']} s{r['seed']}" for r in rec.rows]
    y = range(len(rec.rows))
    ax.barh([i - 0.2 for i in y], [r["joint_over_merge"] for r in rec.rows], height=0.4,
            label="joint / default merge")
    ax.barh([i + 0.2 for i in y], [r["joint_over_merge_repair"] for r in rec.rows],
            height=0.4, label="joint / (merge + repair)")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up (×)")
    ax.legend(fontsize=7)
    pl.save_figure(plt, fig, md.with_suffix(".png"))


if __name__ == "__main__":
    raise SystemExit(main())
