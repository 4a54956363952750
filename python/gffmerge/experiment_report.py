"""``report.md`` and the chart of :mod:`gffmerge.experiment`, and how its budget was chosen."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import methods
from .atomic import write_atomically

BUDGET_NOTE = (
    "Default budget: 400 training frames per system and 10 epochs for every fine-tune and "
    "the joint model, i.e. 4 x 400 x 10 = 16,000 training frame-epochs for two systems. "
    "The shipped LiPS20 GNS checkpoints (checkpoints/README.md) trained at 15-38 ms per "
    "training frame and epoch on 2 shared cores, validation included (beta-Li3PS4 "
    "fine-tune 817 frames x 30 epochs in 6.2 min, gamma-Li3PS4 793 x 30 in 14.9 min, joint "
    "1610 x 30 in 19.4 min): 4-10 min of training. A short LiPS20 Li3P/P2S5 run of this "
    "runner on a machine loaded 4-5 deep on its 2 cores measured 61 ms per training frame, "
    "24 ms per validation frame (67 ms per training frame-epoch with validation: 18 min "
    "of training at that load), the progressive merge at 258 s, TIES's 25-point grid at "
    "43 s and one evaluation on the combined test split at about 14 s. Merging with every "
    "method and evaluating about a dozen models add 5-10 min, the optional repair (250 "
    "frames, 5 epochs) 1-3 min: about 15 min on 2 idle cores, under 30 even at that load.")


def _kind(name: str) -> str:
    if name in ("foundation", "joint") or name.startswith("finetune:"):
        return "reference"
    return "ours" if name.startswith(methods.DEFAULT_METHOD) else "baseline"


def report_markdown(payload: dict[str, Any], notes: dict[str, str] | None = None,
                    chart: Path | None = None) -> str:
    """``report.md``: one table of every row, speed-ups against joint training."""
    notes = notes or {}
    rows = payload["methods"]
    systems = list(next(iter(rows.values()))["systems"]) if rows else []
    joint_s = (rows.get("joint") or {}).get("seconds")
    head = ["model / method"]
    for s in systems:
        head += [f"{s} E MAE (meV/atom)", f"{s} F MAE (meV/Å)"]
    head += ["combined E MAE", "combined F MAE", "combined F RMSE", "seconds",
             "speed-up vs joint", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name]
        for s in systems:
            m = r["systems"][s]
            cells += [f"{m['energy_mae_mev_per_atom']:.2f}", f"{m['force_mae_mev_per_a']:.1f}"]
        c = r["combined"]
        cells += [f"{c['energy_mae_mev_per_atom']:.2f}", f"{c['force_mae_mev_per_a']:.1f}",
                  f"{c['force_rmse_mev_per_a']:.1f}"]
        sec = r["seconds"]
        cells.append("" if sec is None or name == "foundation" else f"{sec:.3g}")
        cells.append(f"{joint_s / sec:.3g}×" if _kind(name) != "reference" and sec
                     and joint_s else "")
        cells.append(notes.get(name, ""))
        lines.append("| " + " | ".join(cells) + " |")
    text = ["# gffmerge experiment", "",
            f"Command: `{payload['command']}`", "",
            f"Commit {payload['git_commit']}; machine: {payload['machine']}.", "",
            "Every model is evaluated on the combined test split of the systems (hash split "
            "80/10/10): energy MAE per atom, force MAE and RMSE over all components. "
            "Seconds: training wall time for the fine-tunes and the joint model; for a "
            "merge, measuring, grid search and solving (on the repair row plus the repair's "
            "wall time: the other starts' merges, their probes and the repair). "
            "Speed-up: joint training's wall time over the row's. The package "
            f"default merge is `{payload['default_method']}`.", "",
            "\n".join(lines), ""]
    failures = payload.get("failures") or {}
    if failures:
        text += ["Methods that failed (no row): "
                 + "; ".join(f"`{m}`: {why}" for m, why in failures.items()), ""]
    if chart is not None:
        text += [f"![combined test force MAE]({chart.name})", ""]
    text += [BUDGET_NOTE, ""]
    return "\n".join(text)


def write_chart(payload: dict[str, Any], path: Path) -> Path | None:
    """Bar chart of the combined test force MAE of every row; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = payload["methods"]
    names = list(rows)
    vals = [rows[n]["combined"]["force_mae_mev_per_a"] for n in names]
    colors = {"reference": "#999999", "baseline": "#4c72b0", "ours": "#dd8452"}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(names) + 2), 4.4))
    ax.bar(range(len(names)), vals, color=[colors[_kind(n)] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    if vals and min(vals) > 0 and all(math.isfinite(v) for v in vals):
        ax.set_yscale("log")
    ax.set_ylabel("combined test force MAE (meV/Å)")
    ax.set_title("gffmerge experiment")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path
