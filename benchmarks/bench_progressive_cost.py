"""What a progressive merge costs on periodic cells: the shipped LiPS20 beta/gamma fine-tunes.

Times, for GNS and PaiNN on a few training frames per source, the one-shot measure (the
paper recipe's statistics, structured providers) against the progressive merge with a
fixed ridge (tangent rows for the conservative PaiNN), and reports stages, the size of the
cached source targets and the wall/CPU time per frame. ``--sums`` times the progressive
stage sums structured (edge layers from node-level sums, the default) and/or dense (the
reference: every layer's input rows materialised). Writes
``benchmarks/results/progressive_cost_lips20.md`` (``--append``: adds a section to it).

    python benchmarks/bench_progressive_cost.py [--frames 16] [--sums structured dense]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import time
import warnings
from pathlib import Path

import torch
from benchenv import cpu_name

import gffmerge
import gffmerge.methods.progressive as progressive_method
from gffmerge.checkpoint import load_checkpoint
from gffmerge.collect.progressive import stage_sums
from gffmerge.data import load_dataset
from gffmerge.methods.progressive import ProgressiveOptions, progressive_merge

SYSTEMS = ("lips20/beta-Li3PS4", "lips20/gamma-Li3PS4")
ROOT = Path(__file__).resolve().parents[1]




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=16, help="training frames per source")
    p.add_argument("--models", nargs="+", default=["gns", "painn"])
    p.add_argument("--sums", nargs="+", choices=["structured", "dense"],
                   default=["structured"], help="progressive stage sums to time")
    p.add_argument("--append", action="store_true", help="add a section to --out")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/progressive_cost_lips20.md"))
    args = p.parse_args()
    data = load_dataset(list(SYSTEMS)).split("train")
    load0 = os.getloadavg()[0]
    title = ("## Structured against dense stage sums" if args.append else
             "# Cost of the progressive merge on periodic cells (LiPS20 beta/gamma-Li3PS4)")
    lines = [title, "",
             f"Command: `python benchmarks/bench_progressive_cost.py --frames {args.frames} "
             f"--models {' '.join(args.models)} --sums {' '.join(args.sums)}"
             f"{' --append' if args.append else ''}`; machine: {cpu_name()}, "
             f"{os.cpu_count()} cores "
             f"shared with other jobs, {torch.get_num_threads()} torch threads, torch "
             f"{torch.__version__}; load average {load0:.1f} at start.", "",
             f"{args.frames} training frames per source. Progressive rows: fixed ridge 1e-2 "
             "(no search); PaiNN with tangent rows (β 1, dense). Sums: structured = layers "
             "with parts (GNS edge layers, node-MLP concat layers) from node-level sums and "
             "scatter sums; dense = every layer's input rows materialised.", "",
             "| model | sums | atoms/frame | edges/frame | one-shot measure s (CPU s) | "
             "progressive s (CPU s) | stages | ratio (CPU) | per frame per stage, CPU ms | targets "
             "cached | peak RSS GiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        ck = ROOT / "checkpoints" / "lips20"
        sources = [load_checkpoint(ck / f"{name}_{s.split('/')[1]}.pt")[0] for s in SYSTEMS]
        subsets = [data.for_system(s).subset(args.frames, seed=0) for s in SYSTEMS]
        batches = [list(sub.batches_for(m, 4)) for sub, m in zip(subsets, sources)]
        atoms = sum(b.num_atoms for bs in batches for b in bs) / (2 * args.frames)
        edges = sum(b.num_edges for bs in batches for b in bs) / (2 * args.frames)
        t0, c0 = time.perf_counter(), time.process_time()
        gffmerge.Stats.concat(gffmerge.measure(m, b, progress=False)
                              for m, b in zip(sources, batches))
        m_s, m_c = time.perf_counter() - t0, time.process_time() - c0
        opts = ProgressiveOptions(ridge=1e-2, beta=1.0, tangents="auto", frames=args.frames)
        for sums in args.sums:
            progressive_method.stage_sums = functools.partial(
                stage_sums, structured=sums == "structured")
            t0, c0 = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = progressive_merge(sources, batches, opts, progress=False)
            p_s, p_c = time.perf_counter() - t0, time.process_time() - c0
            progressive_method.stage_sums = stage_sums
            stages = len(res.report.options["stages"])
            cached = res.report.options.get("targets_cached")
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            per = 1e3 * p_c / (2 * args.frames * (stages + 1))
            lines.append(f"| {name} | {sums} | {atoms:.0f} | {edges:.0f} | {m_s:.1f} ({m_c:.1f}) "
                         f"| {p_s:.1f} ({p_c:.1f}) | {stages} | {p_c / m_c:.1f}× | {per:.0f} | "
                         f"{cached} | {rss:.1f} |")
            print(lines[-1], flush=True)
    lines.append("")
    text = "\n".join(lines) + "\n"
    if args.append:
        text = Path(args.out).read_text().rstrip("\n") + "\n\n" + text
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
