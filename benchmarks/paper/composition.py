"""Composition: K = 3, 4, 5 LiPS20 systems merged at once, and merged one pair at a time.

For each K, one :mod:`gffmerge.experiment` run on the first K systems of
:data:`paperlib.COMPOSITION` (fine-tunes, the joint model on all K, average, the paper recipe
and the default merge of all K sources at once), then the sequential route: the default
merge of sources 1 and 2, that merge with source 3 (measured on the union of systems 1-2's
frames), and so on. Everything on the combined test split of the K systems. Writes
``benchmarks/results/paper/composition.md`` (+ ``.csv``, ``.png``).

    python benchmarks/paper/composition.py --quick --models gns --ks 3
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paperlib as pl  # noqa: E402

import gffmerge  # noqa: E402
from gffmerge import methods  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = pl.parser(__doc__.splitlines()[0])
    p.add_argument("--ks", nargs="+", type=int, default=[3, 4, 5],
                   help="numbers of systems merged (at most 5)")
    p.add_argument("--systems", nargs="+", default=list(pl.COMPOSITION),
                   help="the systems, in the order they are added")
    args = pl.parse(p, argv)
    rec = pl.Recorder(args, "composition", "Composition: merging K systems at once and "
                                           "one at a time")
    default = methods.DEFAULT_METHOD
    failures = []
    for model in args.models:
        for k in args.ks:
            systems = args.systems[:k]
            if len(systems) < k:
                raise SystemExit(f"--ks {k} needs {k} --systems, got {len(systems)}")
            for seed in args.seeds:
                tag = f"composition-K{k}"
                try:
                    res = pl.experiment(args, model, tag, systems, seed,
                                        methods_=["average", "gffmerge", default])
                    for name, row in res["methods"].items():
                        if name.startswith("finetune:"):
                            continue
                        add(rec, model, k, seed, name, row["combined"]["force_mae_mev_per_a"],
                            row["combined"]["energy_mae_mev_per_atom"], row["seconds"])
                    tunes = [r["combined"]["force_mae_mev_per_a"]
                             for n, r in res["methods"].items() if n.startswith("finetune:")]
                    add(rec, model, k, seed, "best single fine-tune", min(tunes), None, None)
                    f, e, seconds = sequential(args, model, tag, systems, seed)
                    add(rec, model, k, seed, f"{default}, sequential pairwise", f, e, seconds)
                except Exception as exc:  # noqa: BLE001  (recorded, the others still run)
                    traceback.print_exc()
                    failures.append(f"{model} K={k} seed {seed}: {type(exc).__name__}: {exc}")
                write(rec, args, failures)
    write(rec, args, failures)
    return 1 if failures and not rec.rows else 0


def add(rec, model, k, seed, name, f, e, seconds):
    rec.add(model=model, K=k, seed=seed, row=name, F=f, E=e, seconds=seconds)


def sequential(args, model: str, tag: str, systems, seed: int):
    """(combined test F, E, wall seconds) of merging the sources one at a time."""
    exp, sources = pl.prepared(args, model, tag, systems, seed)
    cfg = exp.cfg
    train, val = exp.data.split("train"), exp.data.split("val")

    def part(ds, names):
        ids = [exp.names.index(n) for n in names]
        return ds.take(np.flatnonzero(np.isin(ds.system_ids, ids)))

    merged = sources[0]
    t0 = time.perf_counter()
    for k in range(1, len(sources)):
        done = exp.names[:k]
        pair = [merged, sources[k]]
        data = [part(train, done).subset(cfg.merge_frames * k, seed=seed)
                .batches_for(merged, cfg.batch_size),
                train.for_system(exp.names[k]).batches_for(sources[k], cfg.batch_size)]
        vals = [part(val, done), val.for_system(exp.names[k])]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = gffmerge.merge(pair, data, progress=args.progress, val_data=vals,
                                    labels=["+".join(map(pl.short, done)),
                                            pl.short(exp.names[k])],
                                    frames=cfg.merge_frames,
                                    val_frames=cfg.grid_val_frames).model
    seconds = time.perf_counter() - t0
    err = pl.errors(exp, merged)
    return err["F"], err["E"], seconds


def write(rec: pl.Recorder, args, failures: list[str]) -> None:
    keys = list(dict.fromkeys((r["model"], r["row"]) for r in rec.rows))
    ks = sorted({r["K"] for r in rec.rows})
    lines = []
    for model, name in keys:
        cells = [model, name]
        for k in ks:
            vals = [r["F"] for r in rec.rows if (r["model"], r["row"], r["K"]) == (model,
                                                                                 name, k)]
            cells.append(pl.fmt(vals) if vals else "")
        lines.append(cells)
    body = ["Combined test force MAE (meV/Å) over the K systems:", "",
            *pl.table(["model", "row", *(f"K = {k}" for k in ks)], lines), "",
            f"Systems, in the order they are added: {', '.join(args.systems)}. "
            "`joint`: trained on all K systems; `best single fine-tune`: the lowest "
            "combined error of one source alone; the sequential route merges the running "
            "merge (measured on the union of the systems merged so far) with the next "
            "source, each step with the default method's validation search; with pooled "
            "weighting every step gives the running merge and the new source equal frames, "
            "so the earlier systems' weight halves at each step.", ""]
    body += pl.failure_lines(failures)
    md = rec.write(body)
    plt = pl.pyplot()
    if plt is None or not rec.rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, name in keys:
        pts = [(k, pl.mean_std([r["F"] for r in rec.rows
                                if (r["model"], r["row"], r["K"]) == (model, name, k)])[0])
               for k in ks]
        pts = [(k, v) for k, v in pts if v == v]
        if pts:
            ax.plot([k for k, _ in pts], [v for _, v in pts], "o-", label=f"{model} {name}")
    ax.set_xlabel("systems merged (K)")
    ax.set_xticks(ks)
    ax.set_ylabel("combined test force MAE (meV/Å)")
    ax.set_yscale("log")
    ax.legend(fontsize=6)
    pl.save_figure(plt, fig, md.with_suffix(".png"))


if __name__ == "__main__":
    raise SystemExit(main())
