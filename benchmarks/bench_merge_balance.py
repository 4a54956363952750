"""Where a merge loses one of its systems: source balance and layer-by-layer drift.

A probe of the LiPS20 Li3P / P2S5 pair (issue 10's lead): the default (progressive) merge of
the GNS fine-tunes keeps Li3P (97.6 meV/Å against its fine-tune's 75.3) and loses P2S5
(330 against 83). This script measures three candidate explanations on the same 64
training frames per source (test frames are only scored, nothing is chosen on them):

1. **Balance of the sources' rows.** A Li3P cell has 64 atoms and ~2 300 edges, a P2S5 cell
   28 and ~450, so pooled sums give Li3P 70 % of the node rows and 84 % of the edge rows.
   Rows: pooled, ``weighting="per_model"`` (each source's sums over its row count) and the
   smaller-cell source's batches repeated 3 and 5 times (sums are additive, so repeating a
   source's batches c times weighs its rows by exactly c).
2. **Drift through the layers.** For every merged layer (forward order) and each source,
   ``‖y_merged − y_source‖ / ‖y_source‖`` of the layer's output on a batch of that source's
   training frames: where the merged model leaves each source's function.
3. **The last layer's objective** (GNS only: forces are ``Σ_e s_e u_e`` of the edge-level
   ``force_head``'s output ``s``). The layer-wise solve matches ``s`` per edge; refitting
   only ``force_head.2`` by least squares on the forces it produces (per atom and
   component, per-graph mean removed as in the model) against the sources' forces, or
   against the DFT labels of the same frames.

    python benchmarks/bench_merge_balance.py [--model gns] [--frames 64]

Writes ``benchmarks/results/merge_balance_lips20.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from pathlib import Path

import torch
from benchenv import cpu_name, git_commit

from gffmerge.checkpoint import load_checkpoint
from gffmerge.data import load_dataset
from gffmerge.evaluate import evaluate
from gffmerge.methods.progressive import ProgressiveOptions, progressive_merge

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("lips20/Li3P", "lips20/P2S5")


def merge(sources, batches, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return progressive_merge(sources, batches, ProgressiveOptions(
            frames=None, tangents="off", ridge=1e-4, **kw), progress=False)


def layer_io(model, batch, name):
    """(input, output) of layer ``name`` in ``model``'s forward on ``batch``."""
    seen = {}
    layer = dict(model.named_modules())[name]
    hook = layer.register_forward_hook(
        lambda m, i, o: seen.update(x=i[0].detach(), y=o.detach()))
    with torch.no_grad():
        model(batch, compute_forces=True)
    hook.remove()
    return seen["x"], seen["y"]


def force_rows(model, batch, x):
    """``[3N, d+1]`` rows of the GNS forces as a linear map of ``force_head.2``'s
    ``[W, b]`` given its inputs ``x`` (unscaled, per-graph mean removed)."""
    vec = batch.edge_vectors()
    r = vec.norm(dim=-1)
    w = (model.cutoff_fn(r)[:, None] * vec / r[:, None]).double()
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()
    rows = torch.zeros(batch.num_atoms, 3, xt.shape[1], dtype=torch.float64)
    rows.index_add_(0, batch.edge_index[1], w[:, :, None] * xt[:, None, :])
    total = torch.zeros(batch.num_graphs, 3, xt.shape[1], dtype=torch.float64)
    total.index_add_(0, batch.batch, rows)
    mean = total / batch.natoms.double()[:, None, None]
    return (rows - mean.index_select(0, batch.batch)).reshape(-1, xt.shape[1])


def theta(layer):
    return torch.cat([layer.weight.double().T, layer.bias.double()[None]]).reshape(-1)


def refit_force_head(merged, sources, subsets, *, labels: bool, ridge: float = 1e-4):
    """``merged`` with ``force_head.2`` refitted on force rows (each source's sums over its
    row count, relative ridge toward the sources' mean)."""
    d = merged.force_head[2].in_features + 1
    G = torch.zeros(d, d, dtype=torch.float64)
    C = torch.zeros(d, dtype=torch.float64)
    for sub, src in zip(subsets, sources):
        Gk, Ck, n = torch.zeros_like(G), torch.zeros_like(C), 0
        for b in sub.batches_for(merged, 8):
            A = force_rows(merged, b, layer_io(merged, b, "force_head.2")[0])
            if labels:
                t = (b.forces.double() / float(merged.scale)).reshape(-1)
            else:
                t = force_rows(src, b, layer_io(src, b, "force_head.2")[0]) @ theta(
                    src.force_head[2])
            Gk += A.T @ A
            Ck += A.T @ t
            n += A.shape[0]
        G += Gk / n
        C += Ck / n
    prior = torch.stack([theta(s.force_head[2]) for s in sources]).mean(0)
    lam = ridge * G.trace() / d
    th = torch.linalg.solve(G + lam * torch.eye(d, dtype=torch.float64), C + lam * prior)
    out = copy.deepcopy(merged)
    with torch.no_grad():
        out.force_head[2].weight.copy_(th[:-1][None].float())
        out.force_head[2].bias.copy_(th[-1:].float())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gns", choices=["gns", "painn"])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/merge_balance_lips20.md"))
    args = p.parse_args()
    t_start, load0, commit = time.perf_counter(), os.getloadavg(), git_commit()
    data = load_dataset(list(SYSTEMS))
    train, test = data.split("train"), data.split("test")
    ck = ROOT / "checkpoints/lips20"
    sources = [load_checkpoint(ck / f"{args.model}_{s.split('/')[1]}.pt")[0] for s in SYSTEMS]
    subsets = [train.for_system(s).subset(args.frames, seed=0) for s in SYSTEMS]
    short = [s.split("/")[1] for s in SYSTEMS]
    sizes = []
    for sub, m in zip(subsets, sources):
        b = next(iter(sub.batches_for(m, 8)))
        sizes.append((b.num_atoms / b.num_graphs, b.edge_index.shape[1] / b.num_graphs))

    rows = []

    def score(label, model, seconds=None):
        ev = evaluate(model, test, progress=False)
        per = [ev[s]["force_mae_mev_per_a"] for s in SYSTEMS]
        rows.append((label, ev["all"]["force_mae_mev_per_a"], *per, sum(per) / len(per),
                     ev["all"]["energy_mae_mev_per_atom"], seconds))
        print(f"{label:60s} F {rows[-1][1]:.1f} ({per[0]:.1f} / {per[1]:.1f})", flush=True)

    for s, m in zip(short, sources):
        score(f"fine-tune {s}", m)
    base = [list(sub.batches_for(m, 8)) for sub, m in zip(subsets, sources)]
    default = names = None
    for label, reps, kw in (("pooled (the default's weighting)", (1, 1), {}),
                            ("per_model (each source's sums / its rows)", (1, 1),
                             {"weighting": "per_model"}),
                            (f"pooled, {short[1]} rows ×3", (1, 3), {}),
                            (f"pooled, {short[1]} rows ×5", (1, 5), {})):
        t0 = time.process_time()
        res = merge(sources, [b * r for b, r in zip(base, reps)], **kw)
        score(f"progressive, ridge 1e-4, {label}", res.model, time.process_time() - t0)
        if default is None:
            default, names = res.model, [lr.name for lr in res.report.layers]

    drift = {}
    for s, sub, src in zip(short, subsets, sources):
        batch = next(iter(sub.batches_for(src, 32)))
        for n in names:
            ym, ys = layer_io(default, batch, n)[1], layer_io(src, batch, n)[1]
            drift[(n, s)] = ((ym - ys).norm() / ys.norm()).item()

    if args.model == "gns":
        for labels in (False, True):
            t0 = time.process_time()
            m = refit_force_head(default, sources, subsets, labels=labels)
            score("pooled + force_head.2 refitted on forces ("
                  + ("DFT labels" if labels else "the sources' forces") + ")", m,
                  time.process_time() - t0)

    load1 = os.getloadavg()
    lines = [f"# Where the merge loses a system: LiPS20 {short[0]} / {short[1]}, {args.model}",
             "",
             f"Command: `python benchmarks/bench_merge_balance.py --model {args.model} "
             f"--frames {args.frames}`; commit {commit}; machine: {cpu_name()}, "
             f"{os.cpu_count()} cores shared with other jobs, {torch.get_num_threads()} torch "
             f"threads; load average {load0[0]:.1f} at start, {load1[0]:.1f} at end; total "
             f"{(time.perf_counter() - t_start) / 60:.1f} min.", "",
             f"Per frame: {short[0]} {sizes[0][0]:.0f} atoms / {sizes[0][1]:.0f} edges, "
             f"{short[1]} {sizes[1][0]:.0f} atoms / {sizes[1][1]:.0f} edges. Merges: "
             f"progressive, ridge 1e-4, no tangent rows, {args.frames} training frames per "
             "source. Force MAE (meV/Å) on the test split; `all` pools every force "
             "component (larger cells weigh more), `mean` is the mean of the two systems.", "",
             f"| merge | all F | {short[0]} F | {short[1]} F | mean F | all E | CPU s |",
             "|---|---|---|---|---|---|---|"]
    for label, f_all, f0, f1, f_mean, e_all, sec in rows:
        lines.append(f"| {label} | {f_all:.1f} | {f0:.1f} | {f1:.1f} | {f_mean:.1f} | "
                     f"{e_all:.1f} | {'' if sec is None else f'{sec:.1f}'} |")
    lines += ["", "Drift of the pooled merge from each source, layer by layer in forward order "
              "(‖y_merged − y_source‖ / ‖y_source‖ of the layer's output on 32 of that "
              "source's training frames):", "",
              f"| layer | {short[0]} | {short[1]} |", "|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {drift[(n, short[0])]:.3f} | {drift[(n, short[1])]:.3f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
