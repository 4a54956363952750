"""Which shipped checkpoints are trained to a plateau, and what retraining the rest costs.

Every shipped checkpoint records, per epoch, the wall time, the learning rate and the
validation errors (``metadata["history"]``), and (since the plateau rule) why it stopped.
This script lists, per checkpoint, the seconds per epoch (median over its epochs, on the
shared machine it was trained on), the epochs run and the best one, what stopped it (the
plateau rule's ``patience``, the last epoch of its schedule, or a wall-clock budget: read
from the checkpoint, else inferred as a learning rate still above a tenth of its peak),
whether it meets the plateau criterion (no best epoch in the last 20 % of the epochs run,
before a final anneal if it has one: :func:`gffmerge.recipes.plateau_state`), how much the
validation force MAE still fell over the second half, and, for the checkpoints that miss the
criterion, the hours a plateau check would take: one run with 3x the recipe's epochs
(patience stops it earlier if it plateaus). No training is run. Writes
``benchmarks/results/paper/plateau_budget.md`` (+ ``.csv``).
With ``--before REV``, every checkpoint that differs from its version in git revision REV
is also listed against that version (epochs and test errors before and after retraining).

    python benchmarks/paper/plateau_budget.py
    python benchmarks/paper/plateau_budget.py --before f03ca1c
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paperlib as pl  # noqa: E402

from gffmerge.checkpoint import load_checkpoint  # noqa: E402
from gffmerge.recipes import (  # noqa: E402
    checkpoints_dir,
    plateau_check_phase,
    plateau_state,
)

FACTOR = 3  # a plateau check: FACTOR x the recipe's epochs, with early stopping


def main(argv: list[str] | None = None) -> int:
    p = pl.parser(__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=None, help="checkpoints folder")
    p.add_argument("--before", metavar="REV",
                   help="also compare each changed checkpoint with its version in this git "
                        "revision")
    args = pl.parse(p, argv)
    root = args.root or checkpoints_dir()
    rec = pl.Recorder(args, "plateau_budget", "Shipped checkpoints: trained to a plateau, or "
                                              "the budget to get there", budget=False)
    for path in sorted(root.glob("*/*.pt")):
        _, meta = load_checkpoint(path)
        h = meta.get("history") or []
        if len(h) < 2:
            continue
        times = [b["seconds"] - a["seconds"] for a, b in zip(h, h[1:])]
        per_epoch = statistics.median([h[0]["seconds"], *times])
        peak = max(r["lr"] for r in h)
        metrics = meta.get("metrics", {})
        stopped = metrics.get("stopped_by") or ("wall budget" if h[-1]["lr"] > 0.1 * peak
                                                else "schedule end")
        best = metrics.get("best_epoch")
        judged, judged_best, reached = plateau_state(meta)
        mid, end = h[len(h) // 2]["val_force_mae_mev_per_a"], h[-1]["val_force_mae_mev_per_a"]
        rec.add(checkpoint=str(path.relative_to(root)), role=meta.get("role"),
                train_frames=meta.get("train_frames"), epochs=len(h), best_epoch=best,
                judged_epochs=judged, judged_best=judged_best,
                schedule=meta.get("config", {}).get("schedule", "cosine"),
                s_per_epoch=per_epoch, stopped_by=stopped, plateau=reached,
                val_F_mid=mid, val_F_end=end, second_half_drop_pct=100 * (mid - end) / mid,
                cpu_min=meta.get("cpu_seconds", float("nan")) / 60,
                phases=" + ".join(str(ph["epochs_run"]) for ph in meta.get("phases", [])),
                plateau_check_h=0.0 if reached else FACTOR * len(h) * per_epoch / 3600,
                **_check_hours(meta, per_epoch))
    todo = [r for r in rec.rows if not r["plateau"]]
    done = [r for r in rec.rows if r["plateau"]]
    total = sum(r["plateau_check_h"] for r in todo)
    checked = [r for r in todo if r["check_min_h"] == r["check_min_h"]]  # not NaN
    check_lo = sum(r["check_min_h"] for r in checked)
    check_hi = sum(r["check_max_h"] for r in checked)
    lines = [[r["checkpoint"], str(r["train_frames"]), r["schedule"],
              f"{r['epochs']} ({r['best_epoch']})", r["phases"] or "1",
              f"{r['s_per_epoch']:.1f}", r["stopped_by"],
              ("yes" if r["plateau"] else "no")
              + ("" if r["judged_epochs"] == r["epochs"]
                 else f" ({r['judged_epochs']} ({r['judged_best']}) before the anneal)"),
              f"{r['val_F_mid']:.1f} → {r['val_F_end']:.1f} "
              f"({-r['second_half_drop_pct']:+.0f} %)",
              "" if r["cpu_min"] != r["cpu_min"] else f"{r['cpu_min']:.1f}",
              "" if r["plateau"] else f"{r['plateau_check_h']:.2f}",
              "" if r["plateau"] or r["check_min_h"] != r["check_min_h"]
              else f"{r['check_min_h']:.2f}-{r['check_max_h']:.2f}"]
             for r in rec.rows]
    drops = [r["second_half_drop_pct"] for r in todo] or [0.0]
    body = [*pl.table(["checkpoint", "train frames", "schedule", "epochs (best, 0-based)",
                       "phases (epochs)", "s / epoch", "stopped by", "plateau",
                       "val F MAE mid → end", "CPU min", f"{FACTOR}× epochs (h)",
                       "plateau check (h)"], lines), "",
            "Plateau: no best validation epoch in the last 20 % of the epochs run "
            "(`gffmerge.plateau.plateau_reached`), for a checkpoint whose last phase is an "
            "anneal on the epochs before it (`gffmerge.recipes.plateau_state`: a 20-epoch "
            "cosine anneal ends at its best epoch almost by construction, so the criterion "
            "is read on the plateau phases; until stop 33 this table read it on the whole "
            "history and counted every annealed checkpoint as short of it); the plateau rule "
            "(schedule `plateau`: the "
            "learning rate is halved after every third of `patience` epochs without a 0.5 % "
            "gain in validation force MAE, the run stops after `patience` = 20 % of its "
            "epoch ceiling) meets it whenever patience, not the ceiling or the wall budget, "
            f"stops the run. {len(done)} of {len(rec.rows)} checkpoints meet it. A checkpoint "
            "continued from its first run (`gffmerge.continuation`, `python -m "
            "gffmerge.recipes --continue`) lists the epochs of each phase; its epochs, best "
            "epoch, CPU minutes and stop reason (the last phase's) count over all phases, and "
            "its s / epoch is the median over all phases.", "",
            "Plateau check (`python -m gffmerge.recipes ... --plateau-check`, "
            "`gffmerge.recipes.plateau_check_phase`; plateau-rule checkpoints only): one more "
            "plateau phase from the learning rate the last plateau phase ended with, "
            "patience a quarter of the epochs so far; it takes that patience if it never "
            "improves (and then meets the criterion) and at most 3× it (the ceiling), at "
            f"the seconds per epoch above: {check_lo:.1f}-{check_hi:.1f} h for the "
            f"{len(checked)} of them. "
            "A check that improves changes the weights, and every merge of the checkpoint "
            "has to be run again.", "",
            f"Total for one {FACTOR}× run of every checkpoint that does not, one after another "
            f"on this machine: **{total:.1f} h** (foundations first: the fine-tunes and joint "
            "models start from them, so a retrained foundation means retraining everything "
            "after it). Seconds per epoch include the validation pass and were measured while "
            "the machine was shared, so they are upper bounds for an idle one; CPU minutes are "
            "recorded only by checkpoints trained since the plateau rule.", "",
            "A cosine schedule decays the learning rate to 1 % of its peak by the last epoch, "
            "so the validation loss keeps creeping down until the schedule ends: best epoch = "
            "last epoch is what such a schedule gives, and on its own does not show "
            "under-training. What does is the drop over the second half (every cosine row "
            f"still falls, by {min(drops):.0f}-{max(drops):.0f} %) and, for the wall-budget "
            "rows, a learning rate that never decayed.", ""]
    if args.before:
        body += compare(root, args.before)
    rec.write(body)
    return 0


def _check_hours(meta: dict, per_epoch: float) -> dict:
    """Hours of a plateau check: its patience (no gain) and its ceiling (3× the patience);
    NaN for a checkpoint the check does not apply to (cosine schedule) or at its plateau."""
    check = plateau_check_phase(meta)
    if check is None or (meta.get("config") or {}).get("schedule") != "plateau":
        return {"check_min_h": float("nan"), "check_max_h": float("nan")}
    patience = check[1]
    return {"check_min_h": patience * per_epoch / 3600,
            "check_max_h": 3 * patience * per_epoch / 3600}


def _at_revision(path: Path, rev: str, tmp: Path) -> Path | None:
    """``path`` as it was in git revision ``rev`` (a temporary copy), or None if absent or
    identical to the working copy."""
    top = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                              text=True, cwd=path.parent, check=True).stdout.strip())
    rel = path.resolve().relative_to(top.resolve())
    got = subprocess.run(["git", "show", f"{rev}:{rel.as_posix()}"], capture_output=True,
                         cwd=top)
    if got.returncode != 0 or got.stdout == path.read_bytes():
        return None
    out = tmp / path.name
    out.write_bytes(got.stdout)
    return out


def compare(root: Path, rev: str) -> list[str]:
    """Markdown: each checkpoint that changed since ``rev``, before and after."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(root.glob("*/*.pt")):
            old_path = _at_revision(path, rev, Path(tmp))
            if old_path is None:
                continue
            _, old = load_checkpoint(old_path)
            _, new = load_checkpoint(path)
            h, m = new["history"], new["metrics"]
            k = max(1, math.ceil(0.2 * len(h)))
            head = min(r["val_force_mae_mev_per_a"] for r in h[:-k])
            tail = min(r["val_force_mae_mev_per_a"] for r in h[-k:])
            ot, nt = old["metrics"]["test"]["all"], m["test"]["all"]
            rows.append([
                str(path.relative_to(root)),
                f"{old['metrics']['epochs_run']} ({old['metrics']['best_epoch']})",
                f"{ot['energy_mae_mev_per_atom']:.1f} / {ot['force_mae_mev_per_a']:.1f}",
                f"{m['epochs_run']} ({m['best_epoch']}), {m.get('stopped_by', '?')}",
                "yes" if plateau_state(new)[2] else "no",
                f"{tail:.1f} vs {head:.1f} ({100 * (tail - head) / head:+.1f} %)",
                f"{nt['energy_mae_mev_per_atom']:.1f} / {nt['force_mae_mev_per_a']:.1f}"])
    if not rows:
        return [f"No checkpoint differs from its version in `{rev}`.", ""]
    return [f"## Retrained checkpoints against their versions in `{rev}`", "",
            *pl.table(["checkpoint", "before: epochs (best)", "before: test E / F",
                       "after: epochs (best), stopped by", "plateau",
                       "val F MAE: best in the last 20 % vs best before",
                       "after: test E / F"], rows), "",
            "Test E: energy MAE (meV/atom); test F: force MAE (meV/Å); each on the "
            "checkpoint's own systems' test split. A negative change in the val column means "
            "the last 20 % of the epochs still improved the validation force MAE.", ""]


if __name__ == "__main__":
    raise SystemExit(main())
