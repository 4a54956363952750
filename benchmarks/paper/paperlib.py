"""What the paper-experiment scripts share: pairs, budgets, the experiment runs, result files.

Every script in this folder is one command (``python benchmarks/paper/<script>.py``) that
writes ``benchmarks/results/paper/<name>.md`` (+ ``.csv``, ``.png``) with the command, the
commit, the machine, the torch threads and the load average beside the numbers.

The models come from :mod:`gffmerge.experiment`: one fine-tune per system and the joint
model, all from the shipped foundation of the architecture, with the budget's frames and
epochs. Fine-tunes are kept in a cache (``$GFFMERGE_PAPER_WORK``, default
``benchmarks/results/paper/.work``, not committed) and shared by every experiment with the
same architecture, budget and seed: the experiment reuses a saved training only when its
recipe (foundation bytes, data, frames, epochs, seed) is the same, so the cache never
serves a model of other settings.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gffmerge import methods
from gffmerge.experiment import ExperimentConfig, _Experiment, run
from gffmerge.provenance import cpu_name, git_commit, load_average

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "paper"

# The pairs of the main table: the paper's two and one or two more of each dataset.
PAIRS: dict[str, tuple[str, ...]] = {
    "lips20-beta-gamma": ("lips20/beta-Li3PS4", "lips20/gamma-Li3PS4"),  # the paper's
    "lips20-Li3P-P2S5": ("lips20/Li3P", "lips20/P2S5"),
    "lips20-Li4P2S6-P4S3": ("lips20/Li4P2S6", "lips20/P4S3"),
    "rmd17-ethanol-malonaldehyde": ("rmd17/ethanol", "rmd17/malonaldehyde"),  # the paper's
    "rmd17-paracetamol-salicylic": ("rmd17/paracetamol", "rmd17/salicylic_acid"),
}
# K = 3, 4, 5 LiPS20 systems for the composition experiment: the first K of these.
COMPOSITION = ("lips20/beta-Li3PS4", "lips20/gamma-Li3PS4", "lips20/Li3P", "lips20/P2S5",
               "lips20/Li4P2S6")


@dataclass(frozen=True)
class Budget:
    """Frames and epochs of one run (the fields of :class:`ExperimentConfig`)."""

    name: str
    train_frames: int  # per system, fine-tunes and joint alike
    epochs: int
    merge_frames: int  # statistics / progressive frames per source
    grid_val_frames: int  # validation frames per system scoring a grid point
    val_frames: int  # validation frames per system during training
    max_frames: int  # frames sampled per system before the 80/10/10 split
    repair_frames: int
    repair_epochs: int
    batch_size: int = 8


BUDGETS = {
    # the experiment's defaults (gffmerge experiment, about 15-30 min per LiPS20 pair)
    "full": Budget("full", 400, 10, 200, 64, 100, 1250, 250, 5),
    # minutes per pair on 2 shared cores: 40 test frames per system
    "quick": Budget("quick", 100, 5, 64, 24, 24, 400, 100, 3),
    # seconds: the tests' budget (with a tiny foundation)
    "tiny": Budget("tiny", 4, 1, 6, 3, 3, 30, 4, 1, batch_size=3),
}


def work_dir() -> Path:
    return Path(os.environ.get("GFFMERGE_PAPER_WORK", RESULTS / ".work"))


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every script has: budget, seeds, architectures, foundation, output."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="the quick budget (minutes; 100 frames x 5 epochs per model)")
    p.add_argument("--budget", choices=sorted(BUDGETS),
                   help="budget by name (default: full, or quick with --quick)")
    p.add_argument("--models", nargs="+", default=["gns", "painn"],
                   help="architectures (shipped foundations: gns, painn)")
    p.add_argument("--seeds", nargs="+", type=int, default=[42],
                   help="sampling, split and training seeds (mean ± std over them)")
    p.add_argument("--foundation", help="use this foundation instead of the shipped one "
                                        "(one architecture only; tests)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    p.add_argument("--name", help="file name of the results, without suffix (default: the "
                                  "script's name)")
    p.add_argument("--progress", action="store_true", help="progress bars")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None):
    """``p.parse_args(argv)``, with the command line kept (``args.argv``) for the record."""
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def budget_of(args) -> Budget:
    return BUDGETS[args.budget or ("quick" if args.quick else "full")]


def config(args, model: str, systems, seed: int, out: Path, *, methods_: list[str],
           repair: bool = False, switch: bool = False) -> ExperimentConfig:
    b = budget_of(args)
    return ExperimentConfig(
        args.foundation, list(systems), str(out), model_kind=None if args.foundation else model,
        methods=methods_, train_frames=b.train_frames, epochs=b.epochs, seed=seed,
        repair=repair, switch=switch, repair_frames=b.repair_frames,
        repair_epochs=b.repair_epochs, merge_frames=b.merge_frames,
        grid_val_frames=b.grid_val_frames, val_frames=b.val_frames, batch_size=b.batch_size,
        max_frames=b.max_frames)


def run_dir(args, model: str, tag: str, seed: int) -> Path:
    return work_dir() / f"{model}_{budget_of(args).name}_s{seed}" / tag


def _cache(args, model: str, seed: int) -> Path:
    return work_dir() / f"{model}_{budget_of(args).name}_s{seed}" / "finetunes"


def _share_finetunes(cfg: ExperimentConfig, cache: Path, *, back: bool) -> None:
    """Copy saved fine-tunes from the cache into the run's checkpoints (or back)."""
    ck = Path(cfg.out) / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    src, dst = (ck, cache) if back else (cache, ck)
    for path in src.glob("finetune_*.pt"):
        target = dst / path.name
        if not target.exists() or target.stat().st_mtime < path.stat().st_mtime:
            shutil.copy2(path, target)


def experiment(args, model: str, tag: str, systems, seed: int, *, methods_: list[str],
               repair: bool = False, switch: bool = False) -> dict[str, Any]:
    """Run (or finish) one experiment; its ``results.json`` payload. The fine-tunes are
    shared with every other experiment of the same architecture, budget and seed."""
    cfg = config(args, model, systems, seed, run_dir(args, model, tag, seed),
                 methods_=methods_, repair=repair, switch=switch)
    cache = _cache(args, model, seed)
    _share_finetunes(cfg, cache, back=False)
    try:
        return run(cfg, progress=args.progress)
    finally:
        _share_finetunes(cfg, cache, back=True)


def prepared(args, model: str, tag: str, systems, seed: int) -> tuple[_Experiment, list]:
    """The experiment object and its trained fine-tunes (trained now if not cached), for
    the scripts that merge and repair the sources themselves."""
    cfg = config(args, model, systems, seed, run_dir(args, model, tag, seed), methods_=[])
    cache = _cache(args, model, seed)
    _share_finetunes(cfg, cache, back=False)
    exp = _Experiment(cfg, args.progress)
    try:
        sources = [exp.trained("finetune", [exp._given(s)], Path(cfg.out) / "checkpoints"
                               / f"finetune_{_file_name(s)}.pt")[0] for s in exp.names]
    finally:
        _share_finetunes(cfg, cache, back=True)
    return exp, sources


def _file_name(system: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in system)


def errors(exp: _Experiment, model, dataset=None) -> dict[str, float]:
    """Combined and per-system energy and force MAE of ``model`` on the test split."""
    from gffmerge.evaluate import evaluate

    ev = evaluate(model, dataset if dataset is not None else exp.test,
                  batch_size=exp.cfg.batch_size, progress=False)
    out = {"E": ev["all"]["energy_mae_mev_per_atom"], "F": ev["all"]["force_mae_mev_per_a"]}
    for s in exp.names:
        if s in ev:
            out[f"{short(s)} E"] = ev[s]["energy_mae_mev_per_atom"]
            out[f"{short(s)} F"] = ev[s]["force_mae_mev_per_a"]
    return out


def short(system: str) -> str:
    return system.split("/")[-1]


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def fmt(values: list[float], digits: int = 1) -> str:
    """``mean ± std`` over seeds (just the value for one seed)."""
    m, s = mean_std(values)
    if len(values) > 1:
        return f"{m:.{digits}f} ± {s:.{digits}f}"
    return f"{m:.{digits}f}"


class Recorder:
    """Collects rows, times the script, writes ``name.md``, ``name.csv`` and provenance."""

    def __init__(self, args, name: str, title: str, *, budget: bool = True):
        self.args, self.script, self.title, self.budget = args, name, title, budget
        self.name = getattr(args, "name", None) or name
        self.out = Path(args.out)
        self.t0 = time.perf_counter()
        self.load_start = load_average()
        self.commit = git_commit(short=True)  # before any result file is rewritten
        self.rows: list[dict[str, Any]] = []

    def add(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        print(" ".join(f"{k}={_cell(v)}" for k, v in row.items()), flush=True)
        return row

    def header(self) -> list[str]:
        b = budget_of(self.args) if self.budget else None
        argv = " ".join(shlex.quote(a) for a in self.args.argv)
        return [f"# {self.title}", "",
                f"Command: `{f'python benchmarks/paper/{self.script}.py {argv}'.strip()}`",
                "",
                f"Commit {self.commit}; machine: {cpu_name()}, {os.cpu_count()} cores shared "
                f"with other jobs; torch {torch.__version__}, {torch.get_num_threads()} "
                f"threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); "
                f"load average {self.load_start} at the start, {load_average()} at the end; "
                f"total {(time.perf_counter() - self.t0) / 60:.1f} min.", "",
                *([] if not self.budget else [
                f"Budget `{b.name}`: {b.train_frames} training frames per system and "
                f"{b.epochs} epochs for every fine-tune and the joint model (all from the "
                f"shipped foundation of the architecture), {b.max_frames} frames sampled per "
                f"system before the 80/10/10 split, {b.merge_frames} frames per source for "
                f"the merge statistics, {b.grid_val_frames} validation frames per system "
                f"for every grid choice, repair {b.repair_frames} frames x "
                f"{b.repair_epochs} epochs. Seeds: {', '.join(map(str, self.args.seeds))}. "
                "Energy MAE in meV/atom, force MAE in meV/Å over all components, on the "
                "combined test split; hyperparameters are chosen on validation frames, "
                "never on test.", ""])]

    def write(self, body: list[str], columns: list[str] | None = None) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        md = self.out / f"{self.name}.md"
        md.write_text("\n".join(self.header() + body) + "\n")
        keys = columns or list(dict.fromkeys(k for r in self.rows for k in r))
        with (self.out / f"{self.name}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for r in self.rows:
                w.writerow({k: _csv(r.get(k)) for k in keys})
        print(f"wrote {md}", flush=True)
        return md


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _csv(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def table(head: list[str], rows: list[list[Any]]) -> list[str]:
    """Markdown table lines."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(c) if not isinstance(c, str) else c
                                       for c in r) + " |")
    return lines


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def failure_lines(failures: list[str]) -> list[str]:
    """A "runs that failed" section for a results file (nothing when none failed)."""
    return ["## Runs that failed", "", *(f"- {f}" for f in failures), ""] if failures else []


def save_figure(plt, fig, path: Path) -> None:
    """Lay out, write (100 dpi) and close one figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")


def every_method() -> list[str]:
    """Every registered method, the default one last (it is the one repaired)."""
    names = [m for m in methods.available() if m != methods.DEFAULT_METHOD]
    return [*names, methods.DEFAULT_METHOD]


__all__ = ["BUDGETS", "COMPOSITION", "PAIRS", "Budget", "Recorder", "budget_of", "config",
           "errors", "every_method", "experiment", "failure_lines", "fmt", "mean_std", "parse",
           "parser", "prepared", "pyplot", "save_figure", "save_json", "short", "table",
           "work_dir"]
