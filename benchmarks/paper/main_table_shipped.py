"""Main table on the shipped fine-tunes: every merge method on sources trained (near) a plateau.

The other main tables fine-tune their sources inside the experiment with a fixed budget
(10 epochs), which leaves some systems far from converged (LiPS20 P2S5: 281 meV/Å after 10
epochs, 83 at the plateau). Here each pair's shipped fine-tunes and joint model
(``checkpoints/<dataset>/<model>_<system>.pt``, made by ``python -m gffmerge.recipes``) are
given to ``gffmerge experiment --sources ... --joint ...``: every registered method, the
paper recipe and the default with the embedding switch, the default repaired. One run per
pair and architecture (the checkpoints are one seed); its ``results.json`` and report go to
``RESULTS/paper/shipped/<pair>_<model>/`` and are reused with ``--existing``. The table says
for each source whether it meets the plateau criterion (:func:`gffmerge.recipes.plateau_state`).

    python benchmarks/paper/main_table_shipped.py [--existing] [--rerun progressive]

``--rerun M1,M2`` reruns only those methods (with their ``+switch`` / ``+repair`` rows)
on every pair and overlays their rows on the pair's existing ``results.json`` (the other
rows stay as they were; the rerun's own results stay in ``rerun/`` beside it).

Writes ``benchmarks/results/paper/main_table_shipped.md`` (+ ``.csv``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paperlib as pl  # noqa: E402

from gffmerge import methods  # noqa: E402
from gffmerge.checkpoint import load_checkpoint  # noqa: E402
from gffmerge.experiment import ExperimentConfig, run, write_results  # noqa: E402
from gffmerge.recipes import checkpoints_dir, plateau_state  # noqa: E402

# (dataset, systems, joint role, architectures)
PAIRS = [("lips20", ("Li3P", "P2S5"), "joint-Li3P-P2S5", ("gns", "painn")),
         ("rmd17", ("ethanol", "malonaldehyde"), "joint", ("gns", "painn")),
         # the paper's pair
         ("lips20", ("beta-Li3PS4", "gamma-Li3PS4"), "joint", ("gns", "painn"))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--existing", action="store_true",
                   help="reuse a pair's results.json when it is there")
    p.add_argument("--out", type=Path, default=pl.RESULTS, help="folder for the results")
    p.add_argument("--name", help="file name of the results, without suffix")
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--rerun", help="comma-separated methods to rerun on every pair and "
                                   "overlay on its existing results.json")
    args = pl.parse(p, argv)
    rec = pl.Recorder(args, "main_table_shipped", "Main table on the shipped fine-tunes "
                                                  "(trained toward a plateau)", budget=False)
    root = checkpoints_dir()
    columns: list[tuple[str, dict, list[str], dict[str, str]]] = []
    for dataset, short, joint_role, models in PAIRS:
        systems = [f"{dataset}/{s}" for s in short]
        for model in models:
            paths = [root / dataset / f"{model}_{s}.pt" for s in (*short, joint_role)]
            out = Path(args.out) / "shipped" / f"{dataset}_{'_'.join(short)}_{model}"
            done = out / "results.json"
            if args.rerun and done.is_file():
                _rerun(args.rerun.split(","), systems, out, model, paths, args.progress)
            elif not (args.existing and done.is_file()):
                run(ExperimentConfig(None, systems, str(out), model_kind=model,
                                     sources=[str(x) for x in paths[:2]],
                                     joint=str(paths[2]), repair=True, switch=True),
                    progress=args.progress)
            res = json.loads(done.read_text())
            state = {}
            for role, path in zip((*short, "joint"), paths):
                state[role] = _state(load_checkpoint(path)[1])
            columns.append((f"{model} {dataset} {' / '.join(short)}", res, systems, state))
            for name, row in res["methods"].items():
                rec.add(pair=f"{dataset}-{'-'.join(short)}", model=model, row=name,
                        force=row["combined"]["force_mae_mev_per_a"],
                        energy=row["combined"]["energy_mae_mev_per_atom"],
                        **{f"force_{s.split('/')[1]}": row["systems"][s]["force_mae_mev_per_a"]
                           for s in systems}, seconds=row["seconds"])
    body = _body(columns)
    rec.write(body)
    return 0


def _rerun(names: list[str], systems: list[str], out: Path, model: str, paths,
           progress: bool) -> None:
    """Rerun ``names`` on one pair into ``out/rerun`` and overlay their rows (and their
    ``+switch`` / ``+repair`` rows) on ``out/results.json``."""
    import subprocess

    again = out / "rerun"
    default = methods.DEFAULT_METHOD in names
    run(ExperimentConfig(None, systems, str(again), model_kind=model, methods=names,
                         sources=[str(x) for x in paths[:2]], joint=str(paths[2]),
                         repair=default, switch=default), progress=progress)
    new = json.loads((again / "results.json").read_text())
    res = json.loads((out / "results.json").read_text())
    rows = [k for k in new["methods"] if k.split("+")[0] in names]
    for k in rows:
        res["methods"][k] = new["methods"][k]
    for k in names:
        (res.get("failures") or {}).pop(k, None)
    res.setdefault("failures", {}).update({k: v for k, v in (new.get("failures") or {}).items()
                                           if k in names})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    res.setdefault("reruns", []).append({"rows": rows, "git_commit": commit,
                                         "command": new.get("command")})
    write_results(out / "results.json", res)


def _state(meta: dict) -> str:
    """How far a checkpoint was trained: epochs, best epoch, the plateau criterion (for one
    whose last phase is an anneal, on the epochs before it, where the criterion means
    something; an anneal ends at its best epoch almost by construction)."""
    h, best = meta.get("history") or [], meta["metrics"]["best_epoch"]
    n, before, reached = plateau_state(meta)
    verdict = "plateau" if reached else "**not** plateau"
    if n < len(h):
        gain = 1 - h[best]["val_force_mae_mev_per_a"] / h[before]["val_force_mae_mev_per_a"]
        return (f"{n} epochs + {len(h) - n} annealed, best {best}; before the anneal best "
                f"{before}, {verdict}; the anneal changed its validation force MAE by "
                f"{-100 * gain:+.1f} %")
    phases = [str(p.get("epochs_run")) + (" annealed" if (p.get("config") or {}).get(
        "schedule") == "cosine" else " plateau check" if p.get("plateau_check") else "")
        for p in meta.get("phases") or ()]
    return (f"{len(h)} epochs" + (f" ({' + '.join(phases)})" if any(" " in p for p in phases)
                                  else "") + f", best {best}, {verdict}")


def _role(name: str, systems: list[str]) -> str:
    """A row's name with the fine-tunes named by position (columns have other systems)."""
    if name.startswith("finetune:") and name[9:] in systems:
        return f"fine-tune of system {systems.index(name[9:]) + 1}"
    return name


def _system_mean(m: dict, row: str, systems: list[str]) -> float | None:
    """Mean over ``systems`` of row ``row``'s test force MAE (None if a system is missing)."""
    r = m.get(row)
    if not r or not all(s in r.get("systems", {}) for s in systems):
        return None
    return sum(r["systems"][s]["force_mae_mev_per_a"] for s in systems) / len(systems)


def _short(commit: str | None) -> str:
    """``ca66e52d…+dirty`` -> ``ca66e52+dirty``."""
    head, _, dirty = str(commit).partition("+")
    return head[:7] + (f"+{dirty}" if dirty else "")


def _body(columns) -> list[str]:
    names = list(dict.fromkeys(_role(n, systems) for _, res, systems, _ in columns
                               for n in (*res["methods"], *(res.get("failures") or {}))))
    head = ["row", *(c[0] for c in columns)]
    rows = []
    for n in names:
        cells = [f"**{n}**" if n == methods.DEFAULT_METHOD else n]
        for _, res, systems, _ in columns:
            r = {_role(k, systems): v for k, v in res["methods"].items()}.get(n)
            failed = (res.get("failures") or {}).get(n)
            cells.append(f"failed: {failed.split(':')[0]}" if failed else "" if r is None else (
                f"{r['combined']['force_mae_mev_per_a']:.1f} ("
                + " / ".join(f"{r['systems'][s]['force_mae_mev_per_a']:.1f}" for s in systems)
                + ")"))
        rows.append(cells)
    lines = ["Combined test force MAE (meV/Å; each system's in brackets, in the column's "
             "order). Hyperparameters are chosen on validation frames, never on test. "
             "Sources and joint model as shipped:", ""]
    for title, _, _, state in columns:
        lines.append(f"- {title}: " + "; ".join(f"{k} {v}" for k, v in state.items()))
    lines += ["", "Runs behind each column (`--existing` reuses a pair's `results.json`; "
              "`--rerun` overlays rows):", ""]
    for title, res, _, _ in columns:
        by_rows: dict[str, list[str]] = {}
        for r in res.get("reruns") or []:
            by_rows.setdefault(", ".join(r["rows"]), []).append(_short(r["git_commit"]))
        again = "".join(f"; {rows} rerun at {', '.join(c)} (the last one counts)"
                        for rows, c in by_rows.items())
        lines.append(f"- {title}: commit {_short(res.get('git_commit'))}{again}")
    lines += ["", *pl.table(head, rows), ""]
    for title, res, _, _ in columns:
        for method, why in (res.get("failures") or {}).items():
            lines.append(f"- {title}, `{method}` failed: {why}")
    lines.append("")
    joint = [(c[0], c[1]["methods"]) for c in columns]
    lines += ["Default against the average and the joint model (combined force MAE):", ""]
    for title, m in joint:
        d = m.get(methods.DEFAULT_METHOD, {}).get("combined", {}).get("force_mae_mev_per_a")
        a = m.get("average", {}).get("combined", {}).get("force_mae_mev_per_a")
        j = m.get("joint", {}).get("combined", {}).get("force_mae_mev_per_a")
        rep = m.get(f"{methods.DEFAULT_METHOD}+repair", {}).get("combined", {}).get(
            "force_mae_mev_per_a")
        if d and a and j:
            lines.append(f"- {title}: default {d / a:.2f}× the average, {d / j:.2f}× joint"
                         + (f"; repaired {rep / j:.2f}× joint" if rep else ""))
    lines += ["", "The same by the mean over the two systems of each one's test force MAE (each "
              "system counts once, whatever its cell size: what the default's validation "
              "score ranks candidates by), with the foundation's for reference:", ""]
    for (title, m), (_, _, systems, _) in zip(joint, columns):
        d, a, j, f = (_system_mean(m, r, systems) for r in (methods.DEFAULT_METHOD, "average",
                                                            "joint", "foundation"))
        rep = _system_mean(m, f"{methods.DEFAULT_METHOD}+repair", systems)
        if d and a and j:
            lines.append(f"- {title}: default {d:.1f} ({d / a:.2f}× the average's {a:.1f}, "
                         f"{d / j:.2f}× joint's {j:.1f})"
                         + (f"; foundation {f:.1f}" if f else "")
                         + (f"; repaired {rep:.1f} ({rep / j:.2f}× joint)" if rep else ""))
    return lines + [""]


if __name__ == "__main__":
    raise SystemExit(main())
