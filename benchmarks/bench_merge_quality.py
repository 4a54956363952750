"""Merge quality of fine-tuned force fields (GNS and PaiNN) on a pair of systems.

Pairs: ``rmd17`` (the shipped ethanol / malonaldehyde fine-tunes) and ``lips20`` (Li3P /
P2S5, two systems of different composition; fine-tunes and joint model made from the shipped
LiPS20 foundations, see ``checkpoints/README.md``).

Rows: foundation, fine-tunes, joint model, average, the paper recipe (``method="gffmerge"``
defaults, measured on the same training frames as the progressive merges and on all
training frames), progressive merges (fixed ridge, tangent rows, one-shot with tangent
rows) and the automatic configuration (ridge, β and tangents picked on validation frames).
Test frames are used for the table only. Writes ``benchmarks/results/merge_quality.md``
(``merge_quality_lips20.md`` for the LiPS20 pair; + ``.csv``, ``.png``).

    python benchmarks/bench_merge_quality.py [--pair rmd17|lips20] [--models gns painn]
"""

from __future__ import annotations

import argparse
import csv
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
from gffmerge.methods.progressive import ProgressiveOptions, progressive_merge
from gffmerge.solver import build_model, mean_state_dict

PAIRS = {  # systems, checkpoint folder, joint checkpoint role, title
    "rmd17": (("rmd17/ethanol", "rmd17/malonaldehyde"), "rmd17", "joint",
              "rMD17 ethanol / malonaldehyde"),
    "lips20": (("lips20/Li3P", "lips20/P2S5"), "lips20", "joint-Li3P-P2S5",
               "LiPS20 Li3P / P2S5"),
}
ROOT = Path(__file__).resolve().parents[1]






def variants(conservative: bool, frames: int, search_frames: int, val_frames: int):
    """(label, options) of the progressive variants for one architecture."""
    common = dict(frames=frames, search_frames=search_frames, val_frames=val_frames)
    out = [("progressive, ridge 1e-2", ProgressiveOptions(ridge=1e-2, tangents="off",
                                                           **common)),
           ("progressive, ridge 1e-4", ProgressiveOptions(ridge=1e-4, tangents="off",
                                                           **common))]
    if conservative:
        out += [("one-shot + tangent rows (β 1, ridge 1e-2)",
                 ProgressiveOptions(mode="one-shot", ridge=1e-2, tangents="on", beta=1.0,
                                    **common)),
                ("progressive + tangent rows (β 1, ridge 1e-2)",
                 ProgressiveOptions(ridge=1e-2, tangents="on", beta=1.0, **common)),
                ("progressive + tangent rows, 3 directions per frame (β 4, ridge 1e-4)",
                 ProgressiveOptions(ridge=1e-4, tangents="on", beta=4.0, draws=3, **common)),
                ("progressive + tangent rows along forces (β 1, ridge 1e-2)",
                 ProgressiveOptions(ridge=1e-2, tangents="on", beta=1.0, directions="force",
                                    **common))]
    out.append(("**auto** (ridge, β, tangents on validation frames)",
                ProgressiveOptions(**common)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", choices=sorted(PAIRS), default="rmd17")
    p.add_argument("--models", nargs="+", default=["gns", "painn"])
    p.add_argument("--frames", type=int, default=200, help="training frames per source")
    p.add_argument("--search-frames", type=int, default=64,
                   help="frames per source for each grid point of the automatic search")
    p.add_argument("--val-frames", type=int, default=100, help="validation frames per source")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    systems, folder, joint_role, title = PAIRS[args.pair]
    short = [s.split("/")[1] for s in systems]
    if args.out is None:
        suffix = "" if args.pair == "rmd17" else f"_{args.pair}"
        args.out = str(ROOT / f"benchmarks/results/merge_quality{suffix}.md")
    t_start = time.perf_counter()
    data = load_dataset(list(systems))
    train, val, test = data.split("train"), data.split("val"), data.split("test")
    cmd = (f"python benchmarks/bench_merge_quality.py --pair {args.pair} --models "
           + " ".join(args.models)
           + f" --frames {args.frames} --search-frames {args.search_frames} "
           f"--val-frames {args.val_frames}")
    commit = git_commit()  # before any result file is rewritten
    rows: list[dict] = []
    sections: list[str] = []
    load_before = os.getloadavg()

    def record(model_name, label, model, seconds=None, note="", cpu=None):
        ev = evaluate(model, test, progress=False)
        row = {"model": model_name, "method": label, "seconds": seconds, "cpu_seconds": cpu,
               "note": note}
        for key in ("all", *systems):
            tag = key.split("/")[-1]
            row[f"{tag}_energy_mae_mev_per_atom"] = ev[key]["energy_mae_mev_per_atom"]
            row[f"{tag}_force_mae_mev_per_a"] = ev[key]["force_mae_mev_per_a"]
        rows.append(row)
        print(f"{model_name:6s} {label:60s} F {row['all_force_mae_mev_per_a']:7.1f} "
              f"({row[f'{short[0]}_force_mae_mev_per_a']:.1f} / "
              f"{row[f'{short[1]}_force_mae_mev_per_a']:.1f})"
              + (f"  {seconds:.1f} s" if seconds is not None else "") + f"  {note}",
              flush=True)
        return row

    for name in args.models:
        ck = ROOT / "checkpoints" / folder
        sources = [load_checkpoint(ck / f"{name}_{s.split('/')[1]}.pt")[0] for s in systems]
        conservative = bool(sources[0].conservative)
        subsets = [train.for_system(s).subset(args.frames, seed=0) for s in systems]
        batches = [sub.batches_for(m, 8) for sub, m in zip(subsets, sources)]
        vals = [val.for_system(s) for s in systems]
        record(name, "foundation", load_checkpoint(ck / f"{name}_foundation.pt")[0])
        for s, m in zip(systems, sources):
            record(name, f"fine-tune {s.split('/')[1]}", m)
        joint_path = ck / f"{name}_{joint_role}.pt"
        if joint_path.is_file():
            record(name, "joint", load_checkpoint(joint_path)[0])
        else:
            print(f"{joint_path} is missing: no joint row", flush=True)
        t0 = time.perf_counter()
        avg = build_model(sources[0], mean_state_dict(sources))
        avg_row = record(name, "average", avg, time.perf_counter() - t0)

        t0, c0 = time.perf_counter(), time.process_time()
        stats = gffmerge.Stats.concat(gffmerge.measure(m, b, progress=False)
                                      for m, b in zip(sources, batches))
        measure_s, measure_cpu = time.perf_counter() - t0, time.process_time() - c0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paper = gffmerge.methods.get("gffmerge")(sources, stats)
        record(name, f"paper recipe (`gffmerge` defaults), {args.frames} frames/source",
               paper.model, measure_s + paper.report.times["solve"],
               f"measure {measure_s:.1f} s", cpu=measure_cpu)
        t0 = time.perf_counter()
        full = gffmerge.Stats.concat(
            gffmerge.measure(m, train.for_system(s).batches_for(m, 8), progress=False)
            for m, s in zip(sources, systems))
        full_measure_s = time.perf_counter() - t0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paper_all = gffmerge.methods.get("gffmerge")(sources, full)
        record(name, "paper recipe, all training frames", paper_all.model,
               full_measure_s + paper_all.report.times["solve"],
               f"measure {full_measure_s:.1f} s")

        details = [f"### {name}: one-shot measure of both sources on {args.frames} frames "
                   f"each: {measure_s:.1f} s", ""]
        for label, opts in variants(conservative, args.frames, args.search_frames,
                                    args.val_frames):
            t0, c0 = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = progressive_merge(sources, batches, opts, val_data=vals, progress=False)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            o = res.report.options
            n_stages = len(o["stages"])
            t = res.report.times
            note = (f"{n_stages} stages; merge {t['merge_cpu']:.1f} CPU s = "
                    f"{t['merge_cpu'] / measure_cpu:.1f}× measure (targets "
                    f"{t['targets_cpu']:.1f} CPU s)")
            if len(o["grid"]) > 1:
                pick = ("the average" if o["chosen_ridge"] is None else
                        f"{o['chosen']} ridge {o['chosen_ridge']:g}, β {o['chosen_beta']:g}")
                note += f"; picked {pick}; search {t['search_cpu']:.1f} CPU s"
            row = record(name, label, res.model, seconds, note, cpu=cpu)
            row.update(stages=n_stages, merge_s=t["merge"], search_s=t["search"],
                       merge_cpu_s=t["merge_cpu"], targets_cpu_s=t["targets_cpu"],
                       search_cpu_s=t["search_cpu"],
                       chosen_ridge=o["chosen_ridge"], chosen_beta=o["chosen_beta"],
                       val_force=o["val_force_mae_mev_per_a"])
            if len(o["grid"]) > 1:
                details += [f"Automatic choice for {name} (validation force MAE, meV/Å, "
                            f"{args.val_frames} val frames/source; each point merged on "
                            f"{args.search_frames} frames/source):", "",
                            "| ridge | β | val force MAE | val energy MAE | seconds |",
                            "|---|---|---|---|---|"]
                for g in o["grid"]:
                    mark = "**" if (g["ridge"], g["beta"]) == (o["chosen_ridge"],
                                                              o["chosen_beta"]) else ""
                    details.append(f"| {mark}{g['ridge']:g}{mark} | {mark}{g['beta']:g}{mark} "
                                   f"| {g['val_force_mae_mev_per_a']:.1f} | "
                                   f"{g['val_energy_mae_mev_per_atom']:.2f} | "
                                   f"{g['seconds']:.1f} |")
                details.append("")
                details.append(f"Stages ({n_stages}): " + "; ".join(
                    "{" + ", ".join(s) + "}" for s in o["stages"]))
                details.append("")
                auto_row = row
        joint = next((r for r in rows if r["model"] == name and r["method"] == "joint"), None)
        f_auto, f_avg = auto_row["all_force_mae_mev_per_a"], avg_row["all_force_mae_mev_per_a"]
        f_joint = joint["all_force_mae_mev_per_a"] if joint else float("nan")
        details += [f"Targets for {name} (auto): {f_auto / f_avg:.2f}× average (target ≤ 0.6), "
                    f"{f_auto / f_joint:.2f}× joint (target ≤ 2); merge time "
                    f"{auto_row['merge_cpu_s'] + auto_row['targets_cpu_s']:.1f} CPU s (final "
                    f"merge and the sources' target pass, without the search) against "
                    f"({auto_row['stages']} + 1) × {measure_cpu:.1f} CPU s = "
                    f"{(auto_row['stages'] + 1) * measure_cpu:.1f} CPU s for the one-shot "
                    "measure (target: not more); "
                    f"whole automatic merge {auto_row['cpu_seconds']:.0f} CPU s against a "
                    f"one-shot measure of {measure_cpu:.1f} CPU s.", ""]
        sections += details

    total = time.perf_counter() - t_start
    load_after = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = (f"| model | method | all E | all F | {short[0]} E | {short[0]} F | {short[1]} E | "
            f"{short[1]} F | wall s | CPU s | notes |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [f"# Merge quality on {title}", "",
             f"Command: `{cmd}`; commit {commit}; machine: {cpu_name()}, "
             f"{os.cpu_count()} cores shared with other jobs, {torch.get_num_threads()} "
             f"torch threads, torch {torch.__version__}; load average "
             f"{load_before[0]:.1f} at start, {load_after[0]:.1f} at end; total "
             f"{total / 60:.1f} min.", "",
             f"Test split: {len(test)} frames (both systems). E: energy MAE (meV/atom), F: "
             "force MAE over components (meV/Å). Closed-form merges use "
             f"{args.frames} random training frames per source unless noted; hyperparameters "
             "of the automatic rows are picked on validation frames, never on test frames. "
             "Wall and CPU (process) seconds include everything the row needs (for "
             "progressive rows: target pass, stage probe, search, merge); the machine is "
             "shared, so compare CPU seconds. Notes give the final merge's CPU time (stage "
             "passes and solves) against the one-shot measure on the same frames.", "",
             head]
    for r in rows:
        cells = [r["model"], r["method"]]
        for key in ("all", *short):
            cells += [f"{r[f'{key}_energy_mae_mev_per_atom']:.1f}",
                      f"{r[f'{key}_force_mae_mev_per_a']:.1f}"]
        cells += [f"{r['seconds']:.1f}" if r["seconds"] is not None else "",
                  f"{r['cpu_seconds']:.1f}" if r["cpu_seconds"] is not None else "", r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *sections]
    out.write_text("\n".join(lines) + "\n")
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("model", "method"), k))
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    _plot(rows, out.with_suffix(".png"), title)
    print(f"wrote {out}")


def _plot(rows: list[dict], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 6), squeeze=False)
    for ax, name in zip(axes[0], models):
        rs = [r for r in rows if r["model"] == name]
        labels = [r["method"].replace("**", "") for r in rs]
        vals = [r["all_force_mae_mev_per_a"] for r in rs]
        colors = ["#888" if r["method"] in ("foundation", "joint") or
                  r["method"].startswith("fine-tune") else
                  ("#d62728" if "auto" in r["method"] else "#1f77b4") for r in rs]
        ax.barh(range(len(rs)), vals, color=colors)
        ax.set_yticks(range(len(rs)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("combined test force MAE (meV/Å)")
        ax.set_title(f"{name}: {title}")
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.0f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
