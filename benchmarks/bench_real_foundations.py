"""Merging fine-tunes of real foundation potentials (CHGNet, SevenNet-0) on LiPS20.

    python benchmarks/bench_real_foundations.py --foundation chgnet
    python benchmarks/bench_real_foundations.py --foundation sevenn-0 --epochs 4 --train-frames 16

For one foundation (a :mod:`gffmerge.adapters` name) and a pair of LiPS20 systems of
different composition:

1. the foundation with per-element reference energies fitted to the pair
   (:func:`gffmerge.adapters.foundation_checkpoint`);
2. one force + energy fine-tune per system (``--train-frames`` frames, ``--epochs`` epochs,
   batch ``--batch-size``: the step count is printed), and a joint fine-tune on both with
   the same frames per system and epochs (so the joint run takes as many steps as both
   fine-tunes together);
3. merges of the two fine-tunes: ``average``, ``ties`` (base: the foundation, the
   package's default options), ``gffmerge`` with the robust settings (mean prior,
   relative ridge 1e-3) and with the paper's (zero prior, absolute ridge 1e-6), and the
   package default (``progressive`` with its options as they are: ridge, β and tangents
   chosen on ``--val-frames`` validation frames per system among the average, one-shot
   closed forms and one staged merge; :mod:`gffmerge.methods._progressive_anchors`), each
   on ``--stats-frames`` training frames per system (``--fixed-progressive`` adds the
   staged merge at the old fixed point, ridge 1e-3 and β 1);
4. force MAE (meV/Å) of every model on ``--test-frames`` test frames per system; the
   validation score of every candidate the default tried is written too (the test frames
   choose nothing).

Fine-tunes and the joint model are kept in ``--out`` and reused by a rerun with the same
settings. Writes ``benchmarks/results/real_foundations_<foundation>.json`` and appends the
table to ``benchmarks/results/real_foundations.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchenv import cpu_name, git_commit  # noqa: E402

import gffmerge  # noqa: E402
from gffmerge import adapters  # noqa: E402
from gffmerge.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from gffmerge.data import load_dataset  # noqa: E402
from gffmerge.evaluate import evaluate  # noqa: E402
from gffmerge.train import TrainConfig, balanced_subset, train  # noqa: E402

MERGES = [
    ("average", {}),
    ("ties", {}),
    ("gffmerge (paper: zero prior, ridge 1e-6)", {"method": "gffmerge"}),
    ("gffmerge (mean prior, relative ridge 1e-3)",
     {"method": "gffmerge", "prior": "mean", "ridge": 1e-3, "ridge_mode": "relative"}),
    ("default (progressive, validated)", {"method": "progressive"}),
]
FIXED = ("progressive (fixed: ridge 1e-3, beta 1)",
         {"method": "progressive", "ridge": 1e-3, "beta": 1.0})
POOLED = ("default, pooled score (val_score=pooled)",
          {"method": "progressive", "val_score": "pooled"})


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--foundation", default="chgnet", choices=adapters.names())
    p.add_argument("--systems", nargs=2, default=["lips20/P2S5", "lips20/P4S3"])
    p.add_argument("--train-frames", type=int, default=40)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--stats-frames", type=int, default=32)
    p.add_argument("--test-frames", type=int, default=30)
    p.add_argument("--val-frames", type=int, default=16,
                   help="validation frames per system that choose the default's settings")
    p.add_argument("--val-score", default="per_system", choices=["per_system", "pooled"],
                   help="how the default's search combines the systems' validation errors")
    p.add_argument("--pooled-too", action="store_true",
                   help="also run the default's search with the pooled validation score")
    p.add_argument("--fixed-progressive", action="store_true",
                   help="also merge progressively at the old fixed point (ridge 1e-3, β 1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None, help="folder for checkpoints (default: "
                   "<tmp>/gffmerge_real_foundations_<foundation>)")
    p.add_argument("--no-joint", action="store_true", help="skip the joint fine-tune")
    p.add_argument("--no-starts", action="store_true",
                   help="do not give the default the foundation (its search then starts from "
                        "the sources' mean only, as before stop 24)")
    p.add_argument("--finetune-only", action="store_true",
                   help="stop after the fine-tunes (kept in --out for a later run)")
    p.add_argument("--tables-from", metavar="JSON", type=Path,
                   help="print the markdown tables of a finished run's JSON and exit")
    return p.parse_args()


def finetune(args, base, data, systems, path: Path, label: str):
    recipe = {"systems": systems, "train_frames": args.train_frames, "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    if path.is_file():
        model, meta = load_checkpoint(path)
        if meta.get("bench_recipe") == recipe:
            return model, float(meta["wall_seconds"])
    k = len(systems)
    cfg = TrainConfig(systems=systems, role="finetune" if k == 1 else "joint",
                      init=args.foundation, epochs=args.epochs, lr=args.lr,
                      batch_size=args.batch_size, train_frames=args.train_frames * k,
                      val_frames=8 * k, test_frames=8 * k, seed=args.seed, balanced=True,
                      patience=args.epochs)
    subset = data if k > 1 else data.for_system(systems[0])
    t0 = time.perf_counter()
    result = train(cfg, model=copy.deepcopy(base), dataset=subset, progress=False)
    seconds = time.perf_counter() - t0
    steps = args.epochs * -(-args.train_frames * k // args.batch_size)
    print(f"{label}: {steps} steps in {seconds:.0f} s", flush=True)
    save_checkpoint(path, result.model, {"bench_recipe": recipe, "wall_seconds": seconds})
    return result.model, seconds


def _chosen(o: dict) -> str:
    if o.get("chosen_ridge") is None:  # the average or a start as it is (base, ties, ...)
        return o["chosen"]
    start = o.get("chosen_start")
    return (f"{o['chosen']}, ridge {o['chosen_ridge']:g}, β {o['chosen_beta']:g}"
            + (f", from {start}" if start and start != "mean" else ""))


def main() -> None:
    args = parse()
    if args.tables_from is not None:
        try:
            payload = json.loads(args.tables_from.read_text())
        except (OSError, ValueError) as exc:
            print(f"--tables-from {args.tables_from}: cannot read a run's JSON ({exc})",
                  file=sys.stderr)
            sys.exit(2)
        print("\n".join(table_lines(payload)))
        return
    load0 = os.getloadavg()[0]
    torch.manual_seed(args.seed)
    out = Path(args.out or Path(tempfile.gettempdir()) /
               f"gffmerge_real_foundations_{args.foundation}")
    out.mkdir(parents=True, exist_ok=True)
    systems = list(args.systems)
    adapter = adapters.enable(args.foundation)
    t0 = time.perf_counter()
    fpath = adapters.foundation_checkpoint(args.foundation, systems, out, seed=args.seed,
                                           max_frames=1000, frames=32)
    base = load_checkpoint(fpath)[0]
    print(f"foundation ready in {time.perf_counter() - t0:.0f} s", flush=True)
    data = load_dataset(systems, max_frames=1000, seed=args.seed)
    test = balanced_subset(data.split("test"), args.test_frames * len(systems), args.seed)
    train_split = data.split("train")

    def score(model) -> dict[str, float]:
        r = evaluate(model, test, batch_size=args.batch_size, progress=False)
        return {s: r[s]["force_mae_mev_per_a"] for s in systems}

    rows: dict[str, dict] = {}

    def row(name: str, model, seconds: float) -> None:
        rows[name] = {"force_mae_mev_per_a": score(model), "seconds": seconds}
        print(f"{name:48s} {rows[name]}", flush=True)

    row("foundation (references fitted)", base, 0.0)
    sources = []
    for s in systems:
        m, sec = finetune(args, base, data, [s], out / f"finetune_{s.replace('/', '_')}.pt",
                          f"fine-tune {s}")
        sources.append(m)
        row(f"fine-tune {s}", m, sec)
    if not args.no_joint:
        joint, sec = finetune(args, base, data, systems, out / "joint.pt", "joint")
        row("joint fine-tune (same frames and epochs)", joint, sec)
    if args.finetune_only:
        return
    loaders = [train_split.for_system(s).subset(args.stats_frames, seed=1)
               for s in systems]
    val = data.split("val")
    val_sets = [val.for_system(s).subset(args.val_frames, seed=2) for s in systems]
    searches: dict[str, dict] = {}
    for name, opts in (MERGES + ([POOLED] if args.pooled_too else [])
                       + ([FIXED] if args.fixed_progressive else [])):
        opts = dict(opts)
        method = opts.pop("method", name)
        extra: dict = {}
        if method == "ties" or (method == "progressive" and not args.no_starts):
            extra["base"] = base
        if method == "progressive" and "ridge" in opts:  # a fixed point: nothing to choose
            opts.update(frames=args.stats_frames, val_frames=None)
        elif method == "progressive":
            opts.update(frames=args.stats_frames, search_frames=args.stats_frames,
                        val_frames=args.val_frames)
            opts.setdefault("val_score", args.val_score)
            extra["val_data"] = val_sets
        t1 = time.perf_counter()
        c1 = time.process_time()
        result = gffmerge.merge(sources, [d.batches_for(base, args.batch_size) for d in loaders],
                                method=method, progress=False, **extra, **opts)
        row(name, result.model, time.perf_counter() - t1)
        rows[name]["cpu_seconds"] = time.process_time() - c1
        # the validation frames the default chooses on, per system (diagnostic only)
        rows[name]["val_force_mae_mev_per_a"] = {
            s: evaluate(result.model, v, batch_size=args.batch_size,
                        progress=False)["all"]["force_mae_mev_per_a"]
            for s, v in zip(systems, val_sets)}
        if "val_data" in extra:
            o = result.report.options
            searches[name] = {k: o.get(k) for k in ("chosen", "chosen_ridge", "chosen_beta",
                                                     "chosen_start", "starts_tried",
                                                     "staged_search", "anchors_tried", "grid",
                                                     "fallback", "val_score",
                                                     "val_force_mae_mev_per_a",
                                                     "val_force_mae_per_system")}
            searches[name]["times"] = dict(result.report.times)
            rows[name]["chosen"] = _chosen(o)

    payload = {"foundation": args.foundation, "systems": systems, "args": vars(args),
               "rows": rows, "searches": searches,
               "machine": f"{cpu_name()}, {torch.get_num_threads()} threads, "
               f"torch {torch.__version__}, {platform.system()}, load average "
               f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end", "commit": git_commit(),
               "command": " ".join(["python", *sys.argv])}
    res = HERE / "results"
    tag = "" if systems == ["lips20/P2S5", "lips20/P4S3"] else "_" + "_".join(
        s.rsplit("/", 1)[-1] for s in systems)
    (res / f"real_foundations_{args.foundation}{tag}.json").write_text(
        json.dumps(payload, indent=2))
    lines = table_lines(payload)
    with open(res / "real_foundations.md", "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    del adapter


def table_lines(payload: dict) -> list[str]:
    """The markdown tables of one run (its payload, as written to the JSON)."""
    run = argparse.Namespace(**payload["args"])
    systems, rows, searches = payload["systems"], payload["rows"], payload["searches"]
    lines = [f"\n## {run.foundation}: {' + '.join(systems)}\n",
             f"`{payload['command']}` — {payload['machine']}, commit {payload['commit']}. "
             f"Fine-tunes: {run.train_frames} frames, {run.epochs} epochs, batch "
             f"{run.batch_size}, lr {run.lr}; statistics on {run.stats_frames} training "
             f"frames per system; force MAE on {run.test_frames} test frames per system.\n",
             f"| model | {' | '.join(s + ' (meV/Å)' for s in systems)} | seconds |",
             "|---|" + "---:|" * (len(systems) + 1)]
    for name, r in rows.items():
        maes = " | ".join(f"{r['force_mae_mev_per_a'][s]:.1f}" for s in systems)
        label = f"{name}: {r['chosen']}" if "chosen" in r else name
        lines.append(f"| {label} | {maes} | {r['seconds']:.0f} |")
    lines += [f"\nMerges on the {run.val_frames} validation frames per system the default "
              "chooses on (force MAE, meV/Å; diagnostic, no choice is made here):\n",
              f"| merge | {' | '.join(s + ' val' for s in systems)} |",
              "|---|" + "---:|" * len(systems)]
    for name, r in rows.items():
        if "val_force_mae_mev_per_a" in r:
            lines.append(f"| {name} | " + " | ".join(
                f"{r['val_force_mae_mev_per_a'][s]:.1f}" for s in systems) + " |")
    for name, srch in searches.items():
        how = srch.get("val_score") or "pooled"
        what = ("mean over systems of each system's force MAE" if how == "per_system"
                else "force MAE pooled over all force components")
        lines += [f"\nCandidates of *{name}*, scored on {run.val_frames} validation frames "
                  f"per system (score: {how}, the {what}, meV/Å; the lowest is chosen):\n",
                  f"| candidate | ridge | β | {' | '.join(s + ' val' for s in systems)} "
                  "| score | seconds |",
                  "|---|---:|---:|" + "---:|" * (len(systems) + 2)]
        tried = [(a["kind"] + (f" from {a['start']}" if a.get("start", "mean") != "mean"
                               else "") + (" " + ", ".join(f"{k} {_param(v)}" for k, v in
                                                           a["params"].items())
                                           if a.get("params") else ""),
                  "∞" if a["ridge"] is None else f"{a['ridge']:g}", a)
                 for a in srch["anchors_tried"]]
        tried += [("staged (progressive)", f"{p['ridge']:g}", p) for p in srch["grid"]]
        for kind, ridge, a in tried:
            per = a.get("val_force_mae_per_system") or [float("nan")] * len(systems)
            lines.append(f"| {kind} | {ridge} | {a['beta']:g} | "
                         + " | ".join(f"{v:.1f}" for v in per)
                         + f" | {a['val_force_mae_mev_per_a']:.1f} | {a['seconds']:.0f} |")
        if srch["fallback"]:
            lines.append(f"\nFallback: {srch['fallback']}")
    return lines


def _param(v) -> str:
    """A candidate's option for the table: a number, or a list of them (one λ per source)."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_param(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


if __name__ == "__main__":
    main()
