"""Ablations of the closed-form merge: data, weighting, ridge, intercept, samples, stages,
force-aware rows and the embedding switch.

On one pair (default: rMD17 ethanol / malonaldehyde) the sources are the main table's
fine-tunes (shared cache; trained now if missing). Each row changes one setting of the
paper recipe (``gffmerge``: one-shot statistics, pooled Grams, absolute ridge 1e-6,
intercept on bias layers) or of the package default (``progressive``: stage-by-stage
inputs of the partly merged model, tangent rows and ridge chosen on validation frames):

* own vs shared data: each source measured on its own system's frames, or both on the union;
* pooled vs per-model weighting of the Gram sums;
* ridge (paper recipe: absolute λ; default: relative λ fixed instead of chosen);
* intercept (auto / never / always);
* samples per source;
* progressive on/off (``mode="one-shot"``); force-aware on/off (``tangents``);
* embedding switch on/off.

Writes ``benchmarks/results/paper/ablations.md`` (+ ``.csv``, ``.png``).

    python benchmarks/paper/ablations.py --quick --models gns
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paperlib as pl  # noqa: E402

import gffmerge  # noqa: E402
from gffmerge.models.embedding_switch import EmbeddingSwitch  # noqa: E402


def variants(samples: list[int], frames: int):
    """(group, label, method, options, data) of every row; data: own or shared."""
    out = [("reference", "paper recipe", "gffmerge", {}, "own"),
           ("reference", "default (progressive, auto)", "progressive", {}, "own"),
           ("data", "paper recipe, shared data", "gffmerge", {}, "shared"),
           ("data", "default, shared data", "progressive", {}, "shared"),
           ("weighting", "paper recipe, per-model", "gffmerge", {"weighting": "per_model"},
            "own"),
           ("weighting", "default, per-model", "progressive", {"weighting": "per_model"},
            "own")]
    for ridge in (1e-4, 1e-2, 1.0):
        out.append(("ridge", f"paper recipe, ridge {ridge:g}", "gffmerge", {"ridge": ridge},
                    "own"))
    for ridge in (1e-4, 1e-2):
        out.append(("ridge", f"default, relative ridge {ridge:g} (fixed)", "progressive",
                    {"ridge": ridge}, "own"))
    for icpt in ("never", "always"):
        out.append(("intercept", f"paper recipe, intercept {icpt}", "gffmerge",
                    {"intercept": icpt}, "own"))
    for n in samples:
        if n != frames:
            out.append(("samples", f"paper recipe, {n} frames/source", "gffmerge",
                        {"_frames": n}, "own"))
            out.append(("samples", f"default, {n} frames/source", "progressive",
                        {"_frames": n}, "own"))
    out += [("progressive", "default, one-shot (progressive off)", "progressive",
             {"mode": "one-shot"}, "own"),
            ("force-aware", "default, tangent rows off", "progressive", {"tangents": "off"},
             "own"),
            ("force-aware", "default, tangent rows on", "progressive", {"tangents": "on"},
             "own")]
    return out


def main(argv: list[str] | None = None) -> int:
    p = pl.parser(__doc__.splitlines()[0])
    p.add_argument("--pair", choices=sorted(pl.PAIRS), default="rmd17-ethanol-malonaldehyde")
    p.add_argument("--samples", nargs="+", type=int, default=[16, 64, 200],
                   help="frames per source for the samples ablation")
    args = pl.parse(p, argv)
    rec = pl.Recorder(args, "ablations", f"Ablations on {args.pair}")
    failures = []
    for model in args.models:
        for seed in args.seeds:
            try:
                run_one(args, rec, model, seed)
            except Exception as exc:  # noqa: BLE001  (recorded, the others still run)
                traceback.print_exc()
                failures.append(f"{model} seed {seed}: {type(exc).__name__}: {exc}")
            write(rec, failures)
    write(rec, failures)
    return 1 if failures and not rec.rows else 0


def run_one(args, rec, model: str, seed: int) -> None:
    exp, sources = pl.prepared(args, model, args.pair, pl.PAIRS[args.pair], seed)
    cfg = exp.cfg
    train, val = exp.data.split("train"), exp.data.split("val")
    vals = [val.for_system(s) for s in exp.names]
    merged_of = {}
    for group, label, method, options, data in variants(args.samples, cfg.merge_frames):
        options = dict(options)
        frames = options.pop("_frames", cfg.merge_frames)
        sets = [train.for_system(s) if data == "own" else train for s in exp.names]
        if data == "shared":  # the union, as many frames as one source gets with own data
            sets = [s.subset(frames, seed=seed) for s in sets]
        loaders = [s.batches_for(m, cfg.batch_size) for s, m in zip(sets, sources)]
        kw = ({"frames": frames, "val_frames": cfg.grid_val_frames, "val_data": vals}
              if method == "progressive" else {"limit": frames})
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = gffmerge.merge(sources, loaders, method=method, labels=exp.names,
                                    progress=args.progress, **kw, **options)
        seconds = time.perf_counter() - t0
        err = pl.errors(exp, result.model)
        rec.add(model=model, seed=seed, group=group, row=label, F=err["F"], E=err["E"],
                seconds=seconds, **{k: v for k, v in err.items() if k not in ("E", "F")})
        if group == "reference":
            merged_of[method] = result.model
    for method, merged in merged_of.items():
        switched = EmbeddingSwitch.from_sources(merged, sources, exp.names)
        err = pl.errors(exp, switched)
        label = "paper recipe" if method == "gffmerge" else "default (progressive, auto)"
        rec.add(model=model, seed=seed, group="switch", row=f"{label} + switch", F=err["F"],
                E=err["E"], seconds=None,
                **{k: v for k, v in err.items() if k not in ("E", "F")})


def write(rec: pl.Recorder, failures: list[str]) -> None:
    keys = list(dict.fromkeys((r["model"], r["group"], r["row"]) for r in rec.rows))
    lines = []
    for model, group, name in keys:
        got = [r for r in rec.rows if (r["model"], r["group"], r["row"]) == (model, group,
                                                                             name)]
        secs = [r["seconds"] for r in got if r["seconds"] is not None]
        lines.append([model, group, name, pl.fmt([r["F"] for r in got]),
                      pl.fmt([r["E"] for r in got], 2), pl.fmt(secs) if secs else ""])
    body = [*pl.table(["model", "ablation", "row", "combined F (meV/Å)",
                       "combined E (meV/atom)", "merge s"], lines), "",
            "Each row changes one setting against the two reference rows (the paper recipe "
            "and the default). Shared data: both sources measured on frames of the union "
            "(as many as one source gets with its own data). Per-model: each source's Gram "
            "sums averaged per frame before summing, instead of pooled by row counts. The "
            "switch rows evaluate the reference merges with each system's own "
            "atom-embedding table.", ""]
    body += pl.failure_lines(failures)
    md = rec.write(body)
    plt = pl.pyplot()
    if plt is None or not rec.rows:
        return
    models = list(dict.fromkeys(k[0] for k in keys))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 0.3 * len(keys) + 2),
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [k for k in keys if k[0] == model]
        vals = [pl.mean_std([r["F"] for r in rec.rows
                             if (r["model"], r["group"], r["row"]) == k])[0] for k in mine]
        ax.barh(range(len(mine)), vals, color=["#dd8452" if k[1] == "reference" else "#4c72b0"
                                               for k in mine])
        ax.set_yticks(range(len(mine)), [k[2] for k in mine], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("combined test force MAE (meV/Å)")
        ax.set_title(model)
    pl.save_figure(plt, fig, md.with_suffix(".png"))


if __name__ == "__main__":
    raise SystemExit(main())
