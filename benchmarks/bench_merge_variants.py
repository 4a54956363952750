"""Accuracy of merge variants on the shipped LiPS20 fine-tunes (GNS and PaiNN).

Measures each fine-tune once on its own training frames, then solves every variant from
the same statistics and evaluates on the combined test split. Writes
``benchmarks/results/merge_variants_lips20.md``.

    python benchmarks/bench_merge_variants.py [--models gns painn] [--every 1]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
from benchenv import cpu_name

import gffmerge
from gffmerge.checkpoint import load_checkpoint
from gffmerge.data import load_dataset
from gffmerge.evaluate import evaluate

SYSTEMS = ("lips20/beta-Li3PS4", "lips20/gamma-Li3PS4")
ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (
    ("average", "average", {}),
    ("gffmerge (paper: pooled, ridge 1e-6 absolute)", "gffmerge", {}),
    ("gffmerge per_model", "gffmerge", {"weighting": "per_model"}),
    ("gffmerge prior=mean, relative ridge 1e-3", "gffmerge",
     {"prior": "mean", "ridge_mode": "relative", "ridge": 1e-3}),
    ("gffmerge prior=mean, relative ridge 1e-2", "gffmerge",
     {"prior": "mean", "ridge_mode": "relative", "ridge": 1e-2}),
    ("gffmerge prior=mean, relative ridge 1e-1", "gffmerge",
     {"prior": "mean", "ridge_mode": "relative", "ridge": 1e-1}),
    ("regmean alpha=0.9 (relative ridge 1e-6)", "regmean",
     {"ridge": 1e-6, "ridge_mode": "relative"}),
    ("regmean alpha=0.5 (relative ridge 1e-6)", "regmean",
     {"alpha": 0.5, "ridge": 1e-6, "ridge_mode": "relative"}),
)




def _row(label: str, ev: dict) -> str:
    cells = [label]
    for key in ("all", *SYSTEMS):
        m = ev[key]
        cells += [f"{m['energy_mae_mev_per_atom']:.1f}", f"{m['force_mae_mev_per_a']:.1f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["gns", "painn"])
    p.add_argument("--every", type=int, default=1, help="evaluate every n-th test frame")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/merge_variants_lips20.md"))
    args = p.parse_args()
    t_start = time.perf_counter()
    data = load_dataset(list(SYSTEMS))
    test = data.split("test")
    test = test.take(list(range(0, len(test), args.every)))
    train = data.split("train")
    head = ("| model / method | all E | all F | beta E | beta F | gamma E | gamma F |\n"
            "|---|---|---|---|---|---|---|")
    lines = ["# Merge variants on the shipped LiPS20 fine-tunes", "",
             f"Command: `python benchmarks/bench_merge_variants.py "
             f"--models {' '.join(args.models)} --every {args.every}`; machine: "
             f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             "shared 2-core machine.",
             f"Test frames: {len(test)} of the combined test split. E: energy MAE (meV/atom), "
             "F: force MAE over components (meV/Å). Every variant is solved from the same "
             "statistics (each fine-tune measured once on its own training frames).", ""]
    for name in args.models:
        ck = ROOT / "checkpoints" / "lips20"
        sources = [load_checkpoint(ck / f"{name}_{s.split('/')[1]}.pt")[0] for s in SYSTEMS]
        refs = {"foundation": load_checkpoint(ck / f"{name}_foundation.pt")[0],
                **{f"fine-tune {s.split('/')[1]}": m for s, m in zip(SYSTEMS, sources)},
                "joint": load_checkpoint(ck / f"{name}_joint.pt")[0]}
        t0 = time.perf_counter()
        stats = gffmerge.Stats.concat(
            gffmerge.measure(m, train.for_system(s).batches_for(m, 8), progress=False)
            for m, s in zip(sources, SYSTEMS))
        measure_s = time.perf_counter() - t0
        lines += [f"## {name} (measuring both sources: {measure_s:.1f} s)", "", head]
        for label, model in refs.items():
            lines.append(_row(label, evaluate(model, test, progress=False)))
        for label, method, options in VARIANTS:
            spec = gffmerge.methods.get(method)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = spec(sources, stats if spec.needs_stats else None, **options)
            jittered = sum(1 for lr in result.report.layers if lr.jitter or lr.fallback)
            note = f" ({jittered} layers needed jitter)" if jittered else ""
            lines.append(_row(label + note, evaluate(result.model, test, progress=False)))
            print(lines[-1], flush=True)
        lines.append("")
    lines.append(f"Total time {time.perf_counter() - t_start:.0f} s.")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
