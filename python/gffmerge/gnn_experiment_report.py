"""``report.md`` and the chart of :mod:`gffmerge.gnn_experiment`, with its targets checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .atomic import write_atomically, write_text_atomically

MARGIN_OVER_AVERAGE = 0.05  # target: default ≥ average + 0.05 normalised accuracy
OF_SOURCES = 0.9  # target: default ≥ 0.9 of the sources
SPEEDUP = 100.0  # target: merge ≥ 100× faster than training on all tasks


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """``(target, measured, met)`` rows for the default method."""
    m = results["methods"]
    name = results["default_method"]
    rows = []
    if name in m:
        na = m[name]["normalized_accuracy"]
        rows.append((f"{name} ≥ 0.9 of the sources (normalised accuracy)", f"{na:.3f}",
                     na >= OF_SOURCES))
        if "average" in m:
            avg = m["average"]["normalized_accuracy"]
            rows.append((f"{name} ≥ average + {MARGIN_OVER_AVERAGE}",
                         f"{na:.3f} vs {avg:.3f} (+{na - avg:.3f})",
                         na >= avg + MARGIN_OVER_AVERAGE))
        speed = results["all_tasks_training_seconds"] / max(m[name]["seconds"], 1e-12)
        rows.append((f"{name} ≥ {SPEEDUP:.0f}× faster than training on all tasks",
                     f"{speed:.1f}× ({m[name]['seconds']:.2f} s vs "
                     f"{results['all_tasks_training_seconds']:.1f} s)", speed >= SPEEDUP))
    return rows


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    n = len(results["seeds"])
    lines = [f"# GNN merge: {cfg['dataset']}, {cfg['setting']}, {cfg['backbone']}", "",
             f"{n} seed(s); sources trained {cfg['epochs']} epochs (Adam lr {cfg['lr']}, "
             f"weight decay {cfg['weight_decay']}, hidden {cfg['hidden']}) from different "
             "random initialisations; merged backbone + each source's own head. Normalised "
             "accuracy = mean over tasks of merged / source score (AUC for link "
             "prediction); mean ± std over seeds.", "", "## Sources", "",
             "| task | metric | source score | training s |", "|---|---|---|---|"]
    for task, v in results["sources"].items():
        metric = "auc" if "auc" in v else "accuracy"
        lines.append(f"| {task} | {metric} | {v[metric]:.4f} | {v['seconds']:.2f} |")
    lines += ["", f"Training all sources: {results['sources_training_seconds']:.2f} s; one model "
              f"on all tasks from scratch: {results['all_tasks_training_seconds']:.2f} s.", "",
              "## Merges", ""]
    tasks = list(results["sources"])
    lines.append("| method | normalised accuracy | " + " | ".join(tasks)
                 + " | merge s | speed-up vs all-task training |")
    lines.append("|---" * (len(tasks) + 4) + "|")
    for name, v in sorted(results["methods"].items(),
                          key=lambda kv: -kv[1]["normalized_accuracy"]):
        cells = []
        for task in tasks:
            cells.append(" ".join(f"{x:.4f}" for x in v["tasks"][task].values()))
        mark = " (default)" if name == results["default_method"] else ""
        speed = results["all_tasks_training_seconds"] / max(v["seconds"], 1e-12)
        lines.append(f"| {name}{mark} | {v['normalized_accuracy']:.4f} ± "
                     f"{v['normalized_accuracy_std']:.4f} | " + " | ".join(cells)
                     + f" | {v['seconds']:.3f} | {speed:.0f}× |")
    for name, v in results["methods"].items():
        if "chosen" in v:
            picks = ", ".join(f"{c['rows']} / ridge {c['ridge']:g} (val {c['score']:.3f})"
                              for c in v["chosen"])
            parts = v.get("choice_seconds")
            how = ("every candidate measured, solved and scored" if parts is None else
                   f"one pass: statistics of every row option {parts['measure']:.2f} s, "
                   f"every candidate's solve {parts['solve']:.2f} s, scoring on the "
                   f"validation nodes {parts['score']:.2f} s")
            lines += ["", f"{name}: rows and ridge chosen on the validation nodes, per seed: "
                          f"{picks}; its seconds are everything the merge does ({how})."]
    lines += ["", "Times are CPU seconds (one thread)."]
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target, measured, met in targets(results):
        lines.append(f"| {target} | {measured} | {'yes' if met else '**no**'} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Bar chart of the normalised accuracy per method (± std over seeds); None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    items = sorted(results["methods"].items(), key=lambda kv: -kv[1]["normalized_accuracy"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    colors = ["tab:green" if n == results["default_method"] else "tab:gray" for n, _ in items]
    ax.bar([n for n, _ in items], [v["normalized_accuracy"] for _, v in items],
           yerr=[v["normalized_accuracy_std"] for _, v in items], color=colors, capsize=3)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    cfg = results["config"]
    ax.set_ylabel("normalised accuracy")
    ax.set_title(f"{cfg['dataset']} {cfg['setting']} {cfg['backbone']}")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out: Path) -> None:
    plot(results, out / "normalized_accuracy.png")
    write_text_atomically(out / "report.md", render(results))
