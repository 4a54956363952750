"""``gffmerge demo``: merge the shipped LiPS20 GNS fine-tunes and compare methods.

The main job: load the GNS foundation's two fine-tunes (beta- and gamma-Li3PS4) and
their data, merge them with simple averaging, the paper's GFFMerge recipe and GFFMerge
with a mean prior and relative ridge, evaluate every model on the combined test split,
and write a table (``report.md``) and a bar chart. ``--synthetic`` runs a tiny
self-contained MLP version instead (no data or checkpoints needed).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import torch

from . import merge, methods
from .collect import measure
from .stats import Stats

DEMO_SYSTEMS = ("lips20/beta-Li3PS4", "lips20/gamma-Li3PS4")
DEMO_MODEL = "gns"
# (label, method, options): the paper's recipe, and our recommended robust variant.
DEMO_METHODS = (
    ("average", "average", {}),
    ("gffmerge (paper recipe)", "gffmerge", {}),
    ("gffmerge prior=mean, relative ridge", "gffmerge",
     {"prior": "mean", "ridge_mode": "relative", "ridge": 1e-2}),
)


def checkpoints_dir() -> Path:
    """``$GFFMERGE_CHECKPOINTS``, else the repository's ``checkpoints/``, else ``./``."""
    env = os.environ.get("GFFMERGE_CHECKPOINTS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "checkpoints"
    return repo if repo.is_dir() else Path("checkpoints")


def demo_checkpoints(root: Path, model: str = DEMO_MODEL, dataset: str = "lips20") -> dict:
    """Paths of the foundation, the per-system fine-tunes and the joint model."""
    base = root / dataset
    paths = {"foundation": base / f"{model}_foundation.pt",
             "joint": base / f"{model}_joint.pt"}
    for system in DEMO_SYSTEMS:
        paths[system] = base / f"{model}_{system.split('/')[1]}.pt"
    return paths


def _chart(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    systems = [k for k in rows[0]["metrics"] if k != "all"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(systems))
    for ax, key, title in ((axes[0], "force_mae_mev_per_a", "force MAE (meV/Å)"),
                           (axes[1], "energy_mae_mev_per_atom", "energy MAE (meV/atom)")):
        for j, system in enumerate(systems):
            vals = [r["metrics"][system][key] for r in rows]
            xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(rows))]
            ax.bar(xs, vals, width, label=system.split("/")[-1])
        ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=25, ha="right",
                      fontsize=8)
        ax.set_title(title)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Merging two GNS fine-tunes (LiPS20), combined test split")
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
    head += ["all F MAE (meV/Å)", "merge time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"]]
        for s in systems:
            m = r["metrics"][s]
            cells += [f"{m['energy_mae_mev_per_atom']:.1f}", f"{m['force_mae_mev_per_a']:.1f}"]
        cells.append(f"{r['metrics']['all']['force_mae_mev_per_a']:.1f}")
        cells.append("" if r.get("seconds") is None else f"{r['seconds']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _retrain(root: Path, progress: bool) -> None:
    """Redo foundation, fine-tunes and joint model with the shipped recipes."""
    from .recipes import LIPS20, checkpoint_path, configs
    from .train import train

    for role, cfg in configs(LIPS20, DEMO_MODEL, root):
        train(cfg, output=checkpoint_path(root, LIPS20.name, DEMO_MODEL, role),
              progress=progress)


def run_demo(args) -> int:
    """Entry point of ``gffmerge demo`` (see the module docstring)."""
    if args.synthetic:
        return run_synthetic(args)
    from .checkpoint import load_checkpoint
    from .data import load_dataset
    from .evaluate import evaluate

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    root = out / "checkpoints" if args.retrain else checkpoints_dir()
    if args.retrain:
        _retrain(root, progress)
    paths = demo_checkpoints(root)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"demo checkpoints missing: {', '.join(missing)}; run `make checkpoints`, "
            "`gffmerge demo --retrain`, or set GFFMERGE_CHECKPOINTS")
    sources = [load_checkpoint(paths[s])[0] for s in DEMO_SYSTEMS]
    joint = load_checkpoint(paths["joint"])[0]
    data = load_dataset(list(DEMO_SYSTEMS))
    test = data.split("test")
    if args.frames:
        test = test.take([p for s in DEMO_SYSTEMS
                          for p in _positions(test, s)[:args.frames]])
    own = [data.split("train").for_system(s) for s in DEMO_SYSTEMS]

    def say(msg):
        if progress:
            print(msg, flush=True)

    rows = []
    say("evaluating the foundation ...")
    rows.append({"label": "foundation (before fine-tuning)",
                 "metrics": evaluate(load_checkpoint(paths["foundation"])[0], test,
                                     progress=progress), "seconds": None})
    for system, model in zip(DEMO_SYSTEMS, sources):
        say(f"evaluating fine-tune {system} ...")
        rows.append({"label": f"fine-tune {system.split('/')[1]}",
                     "metrics": evaluate(model, test, progress=progress), "seconds": None})
    say("evaluating joint model ...")
    rows.append({"label": "joint (gold standard)",
                 "metrics": evaluate(joint, test, progress=progress), "seconds": None})
    reports = {}
    say("measuring each fine-tune on its own training frames ...")
    t0 = time.perf_counter()
    stats = Stats.concat(
        measure(m, d.batches_for(m, 8), limit=args.limit, progress=progress,
                label=s.split("/")[1], description=d.describe())
        for m, d, s in zip(sources, own, DEMO_SYSTEMS))
    measure_s = time.perf_counter() - t0
    for label, method, options in DEMO_METHODS:
        say(f"merging: {label} ...")
        spec = methods.get(method)
        with warnings.catch_warnings():  # they are listed in the report's per-layer section
            warnings.simplefilter("ignore")
            result = spec(sources, stats if spec.needs_stats else None, **options)
        seconds = result.report.times.get("solve", 0.0) + (measure_s if spec.needs_stats
                                                            else 0.0)
        reports[label] = result.report
        rows.append({"label": label, "metrics": evaluate(result.model, test, progress=progress),
                     "seconds": seconds})
    table = _table(rows)
    chart = _chart(rows, out / "methods.png")
    text = [
        "# gffmerge demo: merging two GNS fine-tunes on LiPS20", "",
        f"Sources: {', '.join(_shown(paths[s]) for s in DEMO_SYSTEMS)} (fine-tuned from "
        f"{_shown(paths['foundation'])}); joint model: {_shown(paths['joint'])}.",
        f"Merge time = measuring both sources ({measure_s:.1f} s, shared by the two "
        "gffmerge rows) + solving.",
        f"Evaluation: combined test split ({len(test)} frames, hash split seed 42). "
        "Energy errors per atom, force errors over all components.", "", table, "",
        f"Torch {torch.__version__}, {torch.get_num_threads()} threads; total demo time "
        f"{time.perf_counter() - t_start:.0f} s.", ""]
    for label, rep in reports.items():
        if rep.layers:
            text += [f"## Per-layer report: {label}", "", rep.to_markdown(), ""]
    (out / "report.md").write_text("\n".join(text))
    if not args.quiet:
        print(table)
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
