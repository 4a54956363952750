"""Which start a repair should begin from: probes against full repairs of every candidate.

On the shipped pairs (fine-tunes and joint model of ``checkpoints/``), the package default
merges with the experiment runner's settings and hands back, besides its pick, the best
candidate of every other family its validation search scored (``alternatives=True``: the
foundation, the best task-vector start, the average, the closed form from each start).
For every candidate this script records the validation loss after a ``--probe-epochs``
probe repair and runs the full repair (the experiment's: 250 frames, 5 epochs, scope all)
to see what each start gives on test. Three ways to choose the start are compared:

- **pick**: repair the default's validated pick (what ``gffmerge experiment --repair`` did
  before the probes);
- **probe** (now the default, ``repair(..., starts=alternatives)``): the candidate whose
  probe reached the lowest validation loss;
- **full repair, by validation**: the candidate whose *full* repair reached the lowest
  validation loss (costs a full repair of every candidate; an upper bound for any choice
  made on validation).

Test errors are reported, never used to choose. Writes ``benchmarks/results/
repair_starts.md`` (+ ``.csv``).

    python benchmarks/bench_repair_starts.py [--pairs lips20:gns lips20:painn rmd17:gns
        rmd17:painn] [--probe-epochs 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from benchenv import ROOT, cpu_name, git_commit

from gffmerge import methods
from gffmerge.checkpoint import load_checkpoint
from gffmerge.evaluate import evaluate
from gffmerge.experiment import ExperimentConfig, _Experiment
from gffmerge.repair import PROBE_FINALISTS, repair

PAIRS = {"lips20": (("Li3P", "P2S5"), "joint-Li3P-P2S5"),
         "rmd17": (("ethanol", "malonaldehyde"), "joint")}


def _force(model, test) -> float:
    return evaluate(model, test, progress=False)["all"]["force_mae_mev_per_a"]


@dataclass
class ShippedMerge:
    """The default merge of a shipped pair, as ``gffmerge experiment --repair`` makes it."""

    cfg: ExperimentConfig
    exp: _Experiment
    paths: list[Path]  # the two fine-tunes, then the joint model
    pick: Any  # the default's validated pick
    merge_s: float
    options: dict  # the merge report's options (its choices and alternatives)
    alternatives: dict  # the best candidate of every other family, by label
    alt_s: float


def shipped_default(dataset: str, model_kind: str, probe_epochs: int) -> ShippedMerge:
    """Merge the shipped fine-tunes of ``dataset``'s pair with the experiment runner's
    settings (the default, ``alternatives=True``)."""
    short, joint_role = PAIRS[dataset]
    paths = [ROOT / "checkpoints" / dataset / f"{model_kind}_{s}.pt"
             for s in (*short, joint_role)]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ExperimentConfig(None, [f"{dataset}/{s}" for s in short], tmp,
                               model_kind=model_kind, methods=[methods.DEFAULT_METHOD],
                               sources=[str(p) for p in paths[:2]], joint=str(paths[2]),
                               repair=True, repair_probe_epochs=probe_epochs)
        exp = _Experiment(cfg, progress=False)
        sources = [load_checkpoint(p)[0] for p in paths[:2]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pick, merge_s, _ = exp.merge(methods.DEFAULT_METHOD, sources, cfg.foundation)
            options = exp.last_report.options
        alternatives, alt_s = exp.repair_starts
    return ShippedMerge(cfg, exp, paths, pick, merge_s, options, alternatives, alt_s)


def run_pair(dataset: str, model_kind: str, probe_epochs: int) -> dict:
    m = shipped_default(dataset, model_kind, probe_epochs)
    cfg, exp, paths, pick, chosen = m.cfg, m.exp, m.paths, m.pick, m.options
    merge_s, alternatives, alt_s = m.merge_s, m.alternatives, m.alt_s
    keys = {k: v["key"] for k, v in chosen["alternatives"].items()}
    pick_desc = ", ".join(str(x) for x in (chosen["chosen"], chosen.get("chosen_ridge"),
                                      chosen.get("chosen_beta"), chosen.get("chosen_start"))
                     if x is not None)
    candidates = {"pick": pick, **alternatives}
    test = exp.test
    kw = dict(frames=cfg.repair_frames, seed=cfg.seed, batch_size=cfg.batch_size,
              val_frames=cfg.val_frames * len(exp.names))
    rows = {}
    for label, model in candidates.items():
        t0 = time.perf_counter()
        probe = repair(model, exp.data, epochs=probe_epochs, **kw)
        probe_s = time.perf_counter() - t0
        full = repair(model, exp.data, epochs=cfg.repair_epochs, **kw)
        rows[label] = dict(before=_force(model, test), probe_val=probe.best_val_loss,
                           probe_s=probe_s, full_val=full.best_val_loss,
                           after=_force(full.model, test), full_s=full.seconds)
        print(f"{dataset} {model_kind} {label}: {rows[label]}", flush=True)
    # the repair's second round: the best PROBE_FINALISTS again, for twice the epochs
    for label in sorted(rows, key=lambda k: rows[k]["probe_val"])[:PROBE_FINALISTS]:
        t0 = time.perf_counter()
        second = repair(candidates[label], exp.data, epochs=2 * probe_epochs, **kw)
        rows[label].update(probe2_val=second.best_val_loss,
                           probe_s=rows[label]["probe_s"] + time.perf_counter() - t0)
    joint = load_checkpoint(paths[2])[0]
    return dict(dataset=dataset, model=model_kind, rows=rows, merge_s=merge_s, alt_s=alt_s,
                keys=keys, pick=pick_desc,
                joint=_force(joint, test), epochs=cfg.repair_epochs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+",
                   default=["lips20:gns", "lips20:painn", "rmd17:gns", "rmd17:painn"])
    p.add_argument("--probe-epochs", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/repair_starts"))
    args = p.parse_args()
    commit, load = git_commit(), os.getloadavg()
    results = []
    for item in args.pairs:
        dataset, model_kind = item.split(":")
        results.append(run_pair(dataset, model_kind, args.probe_epochs))
    end_load = os.getloadavg()
    lines = ["# Which start to repair: probes against full repairs of every candidate", "",
             f"Command: `python benchmarks/bench_repair_starts.py --pairs {' '.join(args.pairs)}"
             f" --probe-epochs {args.probe_epochs}`; commit {commit}; machine: {cpu_name()}, "
             f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; load "
             f"average {load[0]:.1f} at start, {end_load[0]:.1f} at the end (shared 2-core "
             "machine: times are upper bounds).", "",
             "Candidates: the default's validated pick and the best of every other family "
             "its search scored (`alternatives=True`). Each is repaired with the "
             "experiment's budget (250 frames, 5 epochs, scope all, best validation kept) "
             f"and probed with {args.probe_epochs} epoch(s) on the same frames; the two "
             f"best probes go again for {2 * args.probe_epochs} epoch(s) (the repair's rule "
             "since stop 26: it starts from the best second probe). Combined "
             "test force MAE in meV/Å; validation losses are the training loss's "
             "(energy + 10 × force, eV units) on the validation split. **Bold**: the "
             "start each rule chooses.", ""]
    csv_rows = []
    for r in results:
        rows = r["rows"]
        one_round = min(rows, key=lambda k: rows[k]["probe_val"])
        by_probe = min((k for k in rows if "probe2_val" in rows[k]),
                       key=lambda k: rows[k]["probe2_val"])
        by_full = min(rows, key=lambda k: rows[k]["full_val"])
        keys = {k: ", ".join(map(str, v)) for k, v in r["keys"].items()}
        keys["pick"] = r["pick"]
        lines += [f"## {r['model']} {r['dataset']} (joint {r['joint']:.1f})", "",
                  "| start | test before | probe val loss | second probe | full repair val "
                  "loss | test after repair | probe s | repair s |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, x in rows.items():
            mark = ("pick " if label == "pick" else "") + ("probe " if label == by_probe
                                                           else "") \
                + ("full " if label == by_full else "")
            what = label if label == "pick" else f"{label}: {keys[label]}"
            second = f"{x['probe2_val']:.5g}" if "probe2_val" in x else "—"
            lines.append(f"| {what}{' (' + mark.strip() + ')' if mark else ''} | "
                         f"{x['before']:.1f} | {x['probe_val']:.5g} | {second} | "
                         f"{x['full_val']:.5g} | {x['after']:.1f} | {x['probe_s']:.0f} | "
                         f"{x['full_s']:.0f} |")
            csv_rows.append(dict(dataset=r["dataset"], model=r["model"], start=label,
                                 **{k: f"{x[k]:.6g}" if k in x else ""
                                    for k in ("before", "probe_val", "probe2_val", "full_val",
                                              "after", "probe_s", "full_s")}))
        probes_s = sum(x["probe_s"] for x in rows.values())
        lines += ["", f"Repaired test force MAE by rule: pick {rows['pick']['after']:.1f}, "
                      f"one probe round {rows[one_round]['after']:.1f} ({one_round}), "
                      f"**two rounds {rows[by_probe]['after']:.1f}** ({by_probe}), full repair "
                      f"by validation {rows[by_full]['after']:.1f} ({by_full}); "
                      f"joint {r['joint']:.1f}. Cost of the probe rule on top of the pick's "
                      f"repair: the alternatives' merges {r['alt_s']:.0f} s + probes "
                      f"{probes_s:.0f} s (the default's merge: {r['merge_s']:.0f} s).", ""]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        w.writeheader()
        w.writerows(csv_rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
