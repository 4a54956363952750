"""``gffmerge demo``: merge shipped fine-tunes of systems that differ and compare methods.

The main job, for each demo pair (rMD17 ethanol / malonaldehyde and LiPS20 Li3P / P2S5, GNS):
load the foundation, the two fine-tunes and the joint model; merge the fine-tunes by simple
averaging, by the paper's GFFMerge recipe, by the package default (the progressive,
force-aware closed form with its ridge picked on validation frames, given the foundation as a
start) and by the default followed by a short repair fine-tune; evaluate everything on the
pair's combined test split; write one table per pair (``report.md``) and a bar chart
(``methods.png``). ``--synthetic`` runs a tiny self-contained MLP version instead (no data or
checkpoints needed).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import merge, methods
from .collect import measure
from .recipes import checkpoints_dir
from .stats import Stats

# The shipped LiPS20 pair of one composition (beta/gamma-Li3PS4): the CLI tests' layout.
DEMO_SYSTEMS = ("lips20/beta-Li3PS4", "lips20/gamma-Li3PS4")
DEMO_MODEL = "gns"


@dataclass(frozen=True)
class DemoPair:
    """Two systems, their checkpoints ``<dataset>/<model>_<role>.pt`` and the budgets."""

    name: str
    dataset: str
    systems: tuple[str, str]
    joint: str = "joint"  # role of the joint checkpoint
    model: str = DEMO_MODEL
    frames: int = 200  # statistics frames per source (default merge and paper recipe)
    search_frames: int = 64
    val_frames: int = 64
    repair_frames: int = 250
    repair_epochs: int = 10

    @property
    def title(self) -> str:
        return f"{self.dataset} {' / '.join(s.split('/')[1] for s in self.systems)}"


PAIRS = (
    DemoPair("rmd17", "rmd17", ("rmd17/ethanol", "rmd17/malonaldehyde")),
    DemoPair("lips20", "lips20", ("lips20/Li3P", "lips20/P2S5"), joint="joint-Li3P-P2S5",
             frames=64, search_frames=32, val_frames=32, repair_frames=100, repair_epochs=4),
)


def demo_checkpoints(root: Path, model: str = DEMO_MODEL, dataset: str = "lips20",
                     systems: tuple[str, ...] = DEMO_SYSTEMS, joint: str = "joint") -> dict:
    """Paths of the foundation, the per-system fine-tunes and the joint model."""
    base = root / dataset
    paths = {"foundation": base / f"{model}_foundation.pt",
             "joint": base / f"{model}_{joint}.pt"}
    for system in systems:
        paths[system] = base / f"{model}_{system.split('/')[1]}.pt"
    return paths


def pair_checkpoints(root: Path, pair: DemoPair) -> dict:
    return demo_checkpoints(root, pair.model, pair.dataset, pair.systems, pair.joint)


def _chart(sections: list[tuple[DemoPair, list[dict]]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(sections), figsize=(6.5 * len(sections), 4.4),
                             squeeze=False)
    for ax, (pair, rows) in zip(axes[0], sections):
        vals = [r["metrics"]["all"]["force_mae_mev_per_a"] for r in rows]
        colors = ["#999" if r["kind"] == "reference" else "#4c72b0" if r["kind"] == "baseline"
                  else "#dd8452" for r in rows]
        ax.bar(range(len(rows)), vals, color=colors)
        ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=30, ha="right",
                      fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("combined test force MAE (meV/Å)")
        ax.set_title(f"{pair.model.upper()}, {pair.title}")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _table(rows: list[dict]) -> str:
    systems = [k for k in rows[0]["metrics"] if k != "all"]
    head = ["model / method"]
    for s in systems:
        short = s.split("/")[-1]
        head += [f"{short} E MAE (meV/atom)", f"{short} F MAE (meV/Å)"]
    head += ["all F MAE (meV/Å)", "vs average", "merge time (s)"]
    avg = next((r for r in rows if r["label"] == "average"), None)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"]]
        for s in systems:
            m = r["metrics"][s]
            cells += [f"{m['energy_mae_mev_per_atom']:.1f}", f"{m['force_mae_mev_per_a']:.1f}"]
        f_all = r["metrics"]["all"]["force_mae_mev_per_a"]
        cells.append(f"{f_all:.1f}")
        cells.append(f"{f_all / avg['metrics']['all']['force_mae_mev_per_a']:.2f}×"
                     if avg and r["kind"] != "reference" else "")
        cells.append("" if r.get("seconds") is None else f"{r['seconds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _retrain(root: Path, progress: bool, pairs: list[str] | None = None) -> None:
    """Redo the checkpoints the chosen demo pairs use (foundation, fine-tunes, joint model,
    each with its recipe's later phases) under ``root`` with the shipped recipes."""
    from .recipes import LIPS20, LIPS20_PAIR, RMD17, build

    chosen = set(pairs or [p.name for p in PAIRS])
    if "lips20" in chosen:
        build(LIPS20, DEMO_MODEL, root, roles=["foundation"], progress=progress)
        build(LIPS20_PAIR, DEMO_MODEL, root, progress=progress)
    if "rmd17" in chosen:
        build(RMD17, DEMO_MODEL, root, progress=progress)


def _run_pair(pair: DemoPair, root: Path, args, say) -> tuple[list[dict], dict]:
    from .checkpoint import load_checkpoint
    from .data import load_dataset
    from .evaluate import evaluate
    from .repair import repair

    progress = not args.quiet
    paths = pair_checkpoints(root, pair)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"demo checkpoints missing: {', '.join(missing)}; see checkpoints/README.md for "
            "the commands that make them, or set GFFMERGE_CHECKPOINTS")
    sources = [load_checkpoint(paths[s])[0] for s in pair.systems]
    data = load_dataset(list(pair.systems))
    test = data.split("test")
    if args.frames:
        test = test.take([p for s in pair.systems for p in _positions(test, s)[:args.frames]])
    frames = min(pair.frames, args.limit) if args.limit else pair.frames
    train = data.split("train")
    own = [train.for_system(s) for s in pair.systems]
    val = [data.split("val").for_system(s) for s in pair.systems]
    loaders = [d.batches_for(m, 8) for d, m in zip(own, sources)]

    def row(label, model, kind, seconds=None):
        say(f"[{pair.name}] evaluating {label} ...")
        return {"label": label, "kind": kind, "seconds": seconds,
                "metrics": evaluate(model, test, progress=progress)}

    foundation = load_checkpoint(paths["foundation"])[0]
    rows = [row("foundation", foundation, "reference")]
    rows += [row(f"fine-tune {s.split('/')[1]}", m, "reference")
             for s, m in zip(pair.systems, sources)]
    rows.append(row("joint (gold standard)", load_checkpoint(paths["joint"])[0], "reference"))
    reports = {}
    with warnings.catch_warnings():  # they are listed in the per-layer reports
        warnings.simplefilter("ignore")
        say(f"[{pair.name}] merging: average, paper recipe ...")
        avg = methods.get("average")(sources)
        rows.append(row("average", avg.model, "baseline", avg.report.times.get("solve", 0.0)))
        t0 = time.perf_counter()
        stats = Stats.concat(measure(m, d, limit=frames, progress=progress,
                                     label=s.split("/")[1])
                             for m, d, s in zip(sources, loaders, pair.systems))
        paper = methods.get("gffmerge")(sources, stats)
        reports["gffmerge (paper recipe)"] = paper.report
        rows.append(row("gffmerge (paper recipe)", paper.model, "baseline",
                        time.perf_counter() - t0))
        say(f"[{pair.name}] merging: the default ({methods.DEFAULT_METHOD}) ...")
        t0 = time.perf_counter()
        default = merge(sources, loaders, val_data=val, progress=progress, frames=frames,
                        search_frames=min(pair.search_frames, frames),
                        val_frames=pair.val_frames, base=foundation, alternatives=True,
                        labels=[s.split("/")[1] for s in pair.systems])
        merge_s = time.perf_counter() - t0
        reports[f"default ({methods.DEFAULT_METHOD})"] = default.report
        what = default.report.pick([s.split("/")[1] for s in pair.systems])
        rows.append(row(f"default ({methods.DEFAULT_METHOD}): {what}", default.model, "ours",
                        merge_s))
    say(f"[{pair.name}] repairing the default merge ...")
    fixed = repair(default.model, data, frames=min(pair.repair_frames, len(train)),
                   epochs=pair.repair_epochs, starts=default.alternatives or None,
                   lr="auto", progress=progress)
    rows.append(row("default + repair", fixed.model, "ours", merge_s + fixed.seconds))
    return rows, reports


def run_demo(args) -> int:
    """Entry point of ``gffmerge demo`` (see the module docstring)."""
    if args.synthetic:
        return run_synthetic(args)
    t_start = time.perf_counter()
    names = [p.name for p in PAIRS]
    unknown = sorted(set(args.pair or ()) - set(names))
    if unknown:
        raise ValueError(f"unknown demo pair(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(names)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    root = out / "checkpoints" if args.retrain else checkpoints_dir()
    if args.retrain:
        _retrain(root, progress, args.pair)

    def say(msg):
        if progress:
            print(msg, flush=True)

    chosen = [p for p in PAIRS if not args.pair or p.name in args.pair]
    sections, all_reports = [], {}
    for pair in chosen:
        rows, reports = _run_pair(pair, root, args, say)
        sections.append((pair, rows))
        all_reports.update({f"{pair.title}: {k}": v for k, v in reports.items()})
    chart = _chart(sections, out / "methods.png")
    text = ["# gffmerge demo: merging fine-tunes of systems that differ", "",
            "Each pair: two fine-tunes of one foundation, merged by averaging, the paper's "
            "GFFMerge recipe, the package default "
            f"(`{methods.DEFAULT_METHOD}`: layers solved stage by stage on inputs of the "
            "partly merged model, ridge picked on the sources' validation frames; given the "
            "foundation, it also scores the foundation, each fine-tune and task-vector merges, "
            "and returns whichever does best on validation: the row says what it returned) "
            "and the default followed by a short repair fine-tune (from the best of the "
            "default's candidates by short probes, learning rate chosen on validation). "
            "Errors on the pair's combined test split (hash split seed 42): energy per atom, "
            "force over all components. Merge time includes measuring; the repair row adds "
            "the repair's wall time.", ""]
    for pair, rows in sections:
        paths = pair_checkpoints(root, pair)
        text += [f"## {pair.model.upper()}, {pair.title}", "",
                 f"Sources: {', '.join(_shown(paths[s]) for s in pair.systems)}; joint: "
                 f"{_shown(paths['joint'])}. Statistics: {pair.frames} training frames per "
                 f"source; repair: ≤ {pair.repair_frames} frames, {pair.repair_epochs} "
                 "epochs.", "", _table(rows), ""]
    text += [f"Torch {torch.__version__}, {torch.get_num_threads()} threads; total demo time "
             f"{time.perf_counter() - t_start:.0f} s.", ""]
    for label, rep in all_reports.items():
        if rep.layers:
            text += [f"## Per-layer report: {label}", "", rep.to_markdown(), ""]
    (out / "report.md").write_text("\n".join(text))
    if not args.quiet:
        for pair, rows in sections:
            print(f"\n{pair.model.upper()}, {pair.title}\n{_table(rows)}")
        print(f"\nwrote {out / 'report.md'}" + (f" and {chart}" if chart else ""))
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _positions(ds, system: str) -> list[int]:
    names = ds.system_names
    sid = names.index(system)
    return [i for i, s in enumerate(ds.system_ids) if s == sid]


# ---------------------------------------------------------------- synthetic demo
def run_synthetic(args) -> int:
    """Two MLPs fine-tuned on two regression tasks, merged by each method (< 1 minute)."""
    from .testing import TinyMLP

    torch.manual_seed(0)
    d_in = 6

    def task(k: int, n: int, gen: torch.Generator):
        x = torch.randn(n, d_in, generator=gen) + (2.0 if k else -2.0)
        w = torch.linspace(-1, 1, d_in * 3, dtype=torch.float32).reshape(3, d_in)
        y = torch.tanh(x @ w.T) + (0.5 * torch.sin(x[:, :3]) if k else 0.5 * x[:, :3] ** 2 / 4)
        return x, y

    gen = torch.Generator().manual_seed(1)
    tasks = [task(k, 2048, gen) for k in range(2)]
    tests = [task(k, 512, gen) for k in range(2)]

    def fit(model, data, steps, lr):
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(steps):
            for x, y in data:
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
        return model

    base = fit(TinyMLP(d_in, 32, 3), tasks, 60, 3e-3)
    import copy

    sources = [fit(copy.deepcopy(base), [t], 150, 2e-3) for t in tasks]

    def mse(model):
        with torch.no_grad():
            return [torch.nn.functional.mse_loss(model(x), y).item() for x, y in tests]

    rows = [("foundation", mse(base), None)]
    rows += [(f"fine-tune task {k}", mse(m), None) for k, m in enumerate(sources)]
    joint = fit(copy.deepcopy(base), tasks, 150, 2e-3)
    rows.append(("joint (both tasks)", mse(joint), None))
    data = [[t[0][i:i + 256] for i in range(0, 2048, 256)] for t in tasks]
    for label, method, options in (("average", "average", {}), ("gffmerge", "gffmerge", {}),
                                   ("gffmerge prior=mean", "gffmerge",
                                    {"prior": "mean", "ridge_mode": "relative",
                                     "ridge": 1e-2}),
                                   ("regmean", "regmean", {})):
        res = merge(sources, data, method=method, progress=False, **options)
        rows.append((label, mse(res.model), res.report.times.get("total", 0.0)))
    lines = ["| model / method | task 0 MSE | task 1 MSE | merge time (s) |", "|---|---|---|---|"]
    lines += [f"| {label} | {a:.4f} | {b:.4f} | {'' if t is None else f'{t:.3f}'} |"
              for label, (a, b), t in rows]
    table = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "synthetic.md").write_text("# gffmerge synthetic demo\n\n" + table + "\n")
    if not args.quiet:
        print(table)
        print(f"\nwrote {out / 'synthetic.md'}")
    return 0
