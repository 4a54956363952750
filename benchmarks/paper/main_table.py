"""Main table: foundation, fine-tunes, joint model and every merge method on pairs of systems.

For each architecture, pair and seed, one :mod:`gffmerge.experiment` run: the fine-tunes
and the joint model from the shipped foundation, every registered merge method (grids of
TIES, task arithmetic and Fisher chosen on validation frames), the paper recipe
(``gffmerge``), the package default (``progressive``), both with the embedding switch, and
the default repaired. Energy and force MAE per system and combined, mean ± std over seeds.
Writes ``benchmarks/results/paper/main_table.md`` (+ ``.csv``, ``.png``) and each run's
``results.json`` under ``runs/``.

    python benchmarks/paper/main_table.py --quick --models gns --pairs lips20-beta-gamma
    python benchmarks/paper/main_table.py --seeds 42 43 44          # the full table
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paperlib as pl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = pl.parser(__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", choices=sorted(pl.PAIRS),
                   default=list(pl.PAIRS), help="pairs of systems (default: all)")
    p.add_argument("--methods", help="comma-separated merge methods (default: every one)")
    args = pl.parse(p, argv)
    chosen = args.methods.split(",") if args.methods else pl.every_method()
    rec = pl.Recorder(args, "main_table", "Main table: every merge method against joint "
                                          "training")
    budget = pl.budget_of(args).name
    runs: dict[tuple[str, str], list[dict]] = {}
    failures: list[str] = []
    for model in args.models:
        for pair in args.pairs:
            for seed in args.seeds:
                try:
                    payload = pl.experiment(args, model, pair, pl.PAIRS[pair], seed,
                                            methods_=chosen, repair=True, switch=True)
                except Exception as exc:  # noqa: BLE001  (recorded, the others still run)
                    traceback.print_exc()
                    failures.append(f"{model} {pair} seed {seed}: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}")
                    continue
                pl.save_json(Path(args.out) / "runs" / f"{model}_{pair}_{budget}_s{seed}.json",
                             payload)
                runs.setdefault((model, pair), []).append(payload)
                write(rec, runs, failures)  # a partial table lands after every run
    write(rec, runs, failures)
    return 1 if failures and not runs else 0


def write(rec: pl.Recorder, runs: dict, failures: list[str]) -> None:
    rec.rows = []
    body: list[str] = []
    summary: dict[str, dict[str, str]] = {}
    columns = []
    for (model, pair), payloads in runs.items():
        systems = pl.PAIRS[pair]
        names = list(payloads[0]["methods"])
        seeds = len(payloads)
        head = ["row"]
        for s in systems:
            head += [f"{pl.short(s)} E", f"{pl.short(s)} F"]
        head += ["combined E", "combined F", "seconds"]
        lines = []
        col = f"{model} {pair}"
        columns.append(col)
        for name in names:
            got = [r["methods"][name] for r in payloads if name in r["methods"]]
            cells = [name]
            row = {"model": model, "pair": pair, "row": name, "seeds": len(got)}
            for s in systems:
                for key, label in (("energy_mae_mev_per_atom", "E"),
                                   ("force_mae_mev_per_a", "F")):
                    vals = [g["systems"][s][key] for g in got]
                    cells.append(pl.fmt(vals, 2 if label == "E" else 1))
                    row[f"{pl.short(s)}_{label}_mean"], row[f"{pl.short(s)}_{label}_std"] = \
                        pl.mean_std(vals)
            for key, label in (("energy_mae_mev_per_atom", "E"), ("force_mae_mev_per_a", "F")):
                vals = [g["combined"][key] for g in got]
                cells.append(pl.fmt(vals, 2 if label == "E" else 1))
                row[f"combined_{label}_mean"], row[f"combined_{label}_std"] = pl.mean_std(vals)
            secs = [g["seconds"] for g in got if g["seconds"] is not None]
            cells.append(pl.fmt(secs, 1) if secs and name != "foundation" else "")
            row["seconds_mean"] = pl.mean_std(secs)[0] if secs else None
            lines.append(cells)
            rec.rows.append(row)
            summary.setdefault(name, {})[col] = cells[-2]
        body += [f"## {model}, {pair} ({seeds} seed{'s' if seeds > 1 else ''})", "",
                 *pl.table(head, lines), ""]
        failed = {f"`{m}` ({why})" for r in payloads for m, why in
                  (r.get("failures") or {}).items()}
        if failed:
            body += ["Methods that failed here (no row): " + "; ".join(sorted(failed)), ""]
    if summary:
        body = ["## Combined test force MAE (meV/Å), every run", "",
                *pl.table(["row", *columns], [[n, *(summary[n].get(c, "") for c in columns)]
                                              for n in summary]), "",
                "Rows: `foundation` (no fine-tuning), `finetune:<system>` (one source), "
                "`joint` (trained on the union, the gold standard), one row per merge "
                "method, `<method>+switch` (each test frame embedded with its own system's "
                "atom-embedding table), `progressive+repair` (the default merge, then a "
                "short fine-tune on the union: its seconds include the merge).", "", *body]
    body += pl.failure_lines(failures)
    md = rec.write(body)
    _plot(runs, md.with_suffix(".png"))


def _plot(runs: dict, path: Path) -> None:
    plt = pl.pyplot()
    if plt is None or not runs:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 5.5), squeeze=False)
    for ax, ((model, pair), payloads) in zip(axes[0], runs.items()):
        names = list(payloads[0]["methods"])
        means, stds = [], []
        for n in names:
            m, s = pl.mean_std([r["methods"][n]["combined"]["force_mae_mev_per_a"]
                                for r in payloads if n in r["methods"]])
            means.append(m)
            stds.append(s)
        colors = ["#999999" if n in ("foundation", "joint") or n.startswith("finetune:")
                  else "#dd8452" if n.startswith(("progressive", "gffmerge")) else "#4c72b0"
                  for n in names]
        ax.barh(range(len(names)), means, xerr=stds, color=colors)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("combined test force MAE (meV/Å)")
        ax.set_title(f"{model}: {pair}", fontsize=9)
    pl.save_figure(plt, fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
