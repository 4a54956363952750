"""What retraining the shipped checkpoints to a plateau costs, read from their own history.

Every shipped checkpoint records, per epoch, the wall time, the learning rate and the
validation errors (``metadata["history"]``). This script lists, per checkpoint, the
seconds per epoch (median over its epochs, on the shared machine it was trained on), the
epochs run and the best one, whether it stopped at the end of its learning-rate schedule or
was cut by a wall-clock budget (learning rate still above a tenth of its peak), how much
the validation force MAE still fell over the second half, and the hours a plateau check
would take: one run with 3x the recipe's epochs (patience stops it earlier if it
plateaus). No training is run. Writes ``benchmarks/results/paper/plateau_budget.md``
(+ ``.csv``).

    python benchmarks/paper/plateau_budget.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paperlib as pl  # noqa: E402

from gffmerge.checkpoint import load_checkpoint  # noqa: E402
from gffmerge.recipes import checkpoints_dir  # noqa: E402

FACTOR = 3  # a plateau check: FACTOR x the recipe's epochs, with early stopping


def main(argv: list[str] | None = None) -> int:
    p = pl.parser(__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=None, help="checkpoints folder")
    args = pl.parse(p, argv)
    root = args.root or checkpoints_dir()
    rec = pl.Recorder(args, "plateau_budget", "Budget to retrain the shipped checkpoints "
                                              "to a plateau", budget=False)
    for path in sorted(root.glob("*/*.pt")):
        _, meta = load_checkpoint(path)
        h = meta.get("history") or []
        if len(h) < 2:
            continue
        times = [b["seconds"] - a["seconds"] for a, b in zip(h, h[1:])]
        per_epoch = statistics.median([h[0]["seconds"], *times])
        peak = max(r["lr"] for r in h)
        cut = h[-1]["lr"] > 0.1 * peak
        mid, end = h[len(h) // 2]["val_force_mae_mev_per_a"], h[-1]["val_force_mae_mev_per_a"]
        rec.add(checkpoint=str(path.relative_to(root)), role=meta.get("role"),
                train_frames=meta.get("train_frames"), epochs=len(h),
                best_epoch=meta.get("metrics", {}).get("best_epoch"),
                s_per_epoch=per_epoch, stopped_by="wall budget" if cut else "schedule end",
                val_F_mid=mid, val_F_end=end, second_half_drop_pct=100 * (mid - end) / mid,
                plateau_check_h=FACTOR * len(h) * per_epoch / 3600)
    total = sum(r["plateau_check_h"] for r in rec.rows)
    lines = [[r["checkpoint"], str(r["train_frames"]), f"{r['epochs']} ({r['best_epoch']})",
              f"{r['s_per_epoch']:.1f}", r["stopped_by"],
              f"{r['val_F_mid']:.1f} → {r['val_F_end']:.1f} "
              f"(−{r['second_half_drop_pct']:.0f} %)", f"{r['plateau_check_h']:.2f}"]
             for r in rec.rows]
    body = [*pl.table(["checkpoint", "train frames", "epochs (best, 0-based)", "s / epoch",
                       "stopped by", "val F MAE mid → end", f"{FACTOR}× epochs (h)"],
                      lines), "",
            f"Total for one {FACTOR}× run of every checkpoint, one after another on this "
            f"machine: **{total:.1f} h** (foundations first: the fine-tunes and joint models "
            "start from them, so a retrained foundation means retraining everything after "
            "it). Seconds per epoch include the validation pass and were measured while "
            "the machine was shared, so they are upper bounds for an idle one.", "",
            "Every recipe warms the learning rate up and then decays it to 1 % of its peak "
            "by the last epoch (`gffmerge.train`), so the validation loss keeps creeping "
            "down until the schedule ends: best epoch = last epoch is what such a schedule "
            "gives, and on its own does not show under-training. What does is the drop "
            f"over the second half (every row still falls, by "
            f"{min(r['second_half_drop_pct'] for r in rec.rows):.0f}-"
            f"{max(r['second_half_drop_pct'] for r in rec.rows):.0f} %) "
            "and, for the wall-budget rows, a learning rate that never decayed. Hence the "
            "check above: rerun with more epochs and keep the run whose best epoch comes "
            "well before the end (patience), then compare its test error to the old one.",
            ""]
    rec.write(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
