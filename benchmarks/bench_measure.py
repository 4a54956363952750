"""Statistics at the price of the forward pass (issue 15): every figure a ratio to the forward.

For the shipped foundation models (GNS, PaiNN; SchNet at random initialisation, none is
shipped) on rMD17 ethanol (64 frames per batch) and a LiPS20 gamma-Li3PS4 cell (8 frames per
batch), in one process and interleaved round by round (best of ``--repeats``):

* ``forward``: ``default_forward`` under ``no_grad`` (what ``measure`` runs);
* ``measure``: ``gffmerge.measure`` (structured providers, the default);
* ``dense``: ``measure(dense=True)`` (every layer's input rows materialised);
* ``cross``: ``measure(cross=True)`` (cross sums for ``target="cross"``, formed as ``G Θᵀ``);
* ``tangent``: the force-aware one-shot sums (value and tangent rows along one random
  direction per frame: one dual pass per batch records inputs and targets,
  :mod:`gffmerge.collect.progressive`), the targets' sums of affine layers derived from
  their Grams and weights (``cross="auto"``, the default);
* ``tangent_measured``: the same with every target sum measured from the recorded outputs
  (``cross="measured"``: the route before round 7, the reference);
* ``floor``: the forward plus ``gffmerge_ext.gram_`` alone on each distinct layer input
  measure forms (the dense rows; the edge part only for an edge layer with gathered parts),
  recorded once and timed apart: what is left once every overhead is gone.

Times are wall clock and CPU seconds of this process (one torch thread by default, so the
CPU time is the work done, the wall time that plus waiting on a shared machine); the ratio
columns are CPU-time ratios, the wall ratios are in the CSV. ``fraction of floor`` is
floor / measure. Timing runs under glibc's default allocator settings (what a user's
process has), or with ``--allocator warm`` under settings that keep freed memory in the heap
(``mallopt``: no mmap below 32 MiB, no trimming, 256 MiB top pad), so that after warm-up no
mode faults fresh pages in. Under the default settings the forward's own fresh buffers fault
their pages in on some calls and not on others, depending on the heap the process happens
to have (GNS ethanol, 256 frames: 35 ms without faults, 63-77 ms in fresh processes), which
moves every ratio; ``warm`` times the work alone (the stricter ratios). Peak memory is
measured after all timing, in a second pass: glibc serves allocations of 64 KiB and more by
mmap, the RSS high-water mark is reset before a run of
each mode (``/proc/self/clear_refs``) and the peak is ``VmHWM - VmRSS`` (on CUDA:
``max_memory_allocated`` above the start), the median of three runs after one warm-up
call of each mode. (Until this change the timing ran under the
mmap setting too, where every fresh buffer of 64 KiB or more faults its pages in.)

Scaling: GNS on ethanol at 8-128 frames per batch, and GNS on a replicated LiPS20 cell
(``--big``, 2 000+ atoms).

    python benchmarks/bench_measure.py                  # ~3-5 min on 2 busy cores
    python benchmarks/bench_measure.py --quick          # smoke test
    python benchmarks/bench_measure.py --device cuda    # on a GPU (make gpu-check)

Writes ``benchmarks/results/measure.{md,csv,png}`` (``--out`` prefix).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from bench_edge_gram import _mmap_small_allocations, _reset_peak, _status_kb, _trim
from benchenv import cpu_name, git_commit

import gffmerge
import gffmerge_ext
from gffmerge.checkpoint import load_checkpoint
from gffmerge.collect import default_forward, move_to
from gffmerge.collect.order import layer_input, mergeable_layers
from gffmerge.collect.progressive import prepare_sources, stage_sums
from gffmerge.collect.recording import structured_input
from gffmerge.data import load_dataset
from gffmerge.models import build_model
from gffmerge.models.parts import Dense

ROOT = Path(__file__).resolve().parents[1]
MODES = ("forward", "measure", "dense", "cross", "tangent", "tangent_measured", "floor")
PEAK_REPEATS = 3
TARGETS = {"measure": {"gns": 1.5, "painn": 1.1, "schnet": 1.1}, "tangent": 2.5, "peak": 1.2}


def load_model(name: str, dataset: str) -> torch.nn.Module:
    if name == "schnet":
        torch.manual_seed(0)
        return build_model("schnet").eval()
    return load_checkpoint(ROOT / "checkpoints" / dataset / f"{name}_foundation.pt")[0].eval()


def make_batches(model, dataset: str, system: str, frames_per_batch: int, n_batches: int,
                 device: str, replicate: int = 1):
    ds = load_dataset([f"{dataset}/{system}"]).split("train")
    ds = ds.subset(frames_per_batch * n_batches, seed=0)
    batches = [move_to(b, device) for b in ds.batches_for(model, frames_per_batch)]
    if replicate > 1:
        batches = [replicated(b, replicate) for b in batches]
    return batches


def replicated(batch, n: int):
    """``n`` copies of ``batch``'s frames in one batch (n times the atoms and edges, the
    same edges per atom): a large system for the scaling rows."""
    cat = torch.cat
    parts = range(n)
    atoms, graphs = batch.num_atoms, batch.num_graphs
    opt = lambda t: None if t is None else cat([t] * n)  # noqa: E731
    return replace(
        batch, z=cat([batch.z] * n), pos=cat([batch.pos] * n),
        batch=cat([batch.batch + k * graphs for k in parts]),
        edge_index=cat([batch.edge_index + k * atoms for k in parts], 1),
        cell_shift=cat([batch.cell_shift] * n), cell=cat([batch.cell] * n),
        pbc=cat([batch.pbc] * n), natoms=cat([batch.natoms] * n), energy=opt(batch.energy),
        forces=opt(batch.forces), system=opt(batch.system))


def floor_inputs(model, batches):
    """Per batch, the distinct row tensors whose Gram measure cannot avoid (see module
    docstring), recorded once."""
    names = list(gffmerge.architecture.linear_layers(model))
    modules = dict(model.named_modules())
    seen: list[list[torch.Tensor]] = []
    for b in batches:
        rows: dict[tuple, torch.Tensor] = {}

        def hook(module, args, kwargs, output, rows=rows):
            inp = structured_input(module, args, kwargs)
            if inp is not None:
                ts = [p.x.reshape(-1, p.width) for p in inp.parts if isinstance(p, Dense)]
            else:
                ts = [layer_input(module, args, kwargs)]
            for t in ts:
                rows.setdefault((t.data_ptr(), tuple(t.shape), t._version), t.detach())

        hs = [modules[n].register_forward_hook(hook, with_kwargs=True) for n in names]
        with torch.no_grad():
            default_forward(model, b)
        for h in hs:
            h.remove()
        seen.append(list(rows.values()))
    return seen


def runners(model, batches, name: str, device: str, floor: bool = True):
    rows = floor_inputs(model, batches) if floor else []
    infos = mergeable_layers(model)
    layer_names = list(infos)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            for b in batches:
                default_forward(model, b)
        sync()

    def measure(**kw):
        return lambda: (gffmerge.measure(model, batches, progress=False, **kw), sync())

    def tangent(route: str):
        def run():
            srcs = prepare_sources([model], [batches], frames=None, names=layer_names,
                                   tangents=True, seed=0, outputs=False)
            stage_sums(None, srcs, layer_names, infos, tangents=True, cross=route)
            sync()
        return run

    def floor():
        forward()
        for ts in rows:
            for t in ts:
                acc = torch.zeros(t.shape[1] + 1, t.shape[1] + 1, dtype=torch.float64,
                                  device=t.device)
                gffmerge_ext.gram_(acc, t, augment=True)
        sync()

    fns = {"forward": forward, "measure": measure(), "dense": measure(dense=True),
           "cross": measure(cross=True), "tangent": tangent("auto"),
           "tangent_measured": tangent("measured"), "floor": floor}
    return fns


def peak_mb(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _trim()
    if not _reset_peak():
        return float("nan")
    base = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - base) / 1024


def _keep_freed_memory() -> bool:
    """glibc settings under which freed memory stays in the heap (``--allocator warm``):
    M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 2 GiB, M_TOP_PAD 256 MiB."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(bool(libc.mallopt(k, v)) for k, v in
                   ((-3, 32 << 20), (-1, (1 << 31) - 1), (-2, 256 << 20)))
    except (OSError, AttributeError):
        return False


def run_case(model_name, dataset, system, fpb, n_batches, repeats, device, modes,
             replicate=1) -> dict:
    """Timing of one case (under the allocator settings of the run, see ``--allocator``)."""
    model = load_model(model_name, dataset).to(device)
    batches = make_batches(model, dataset, system, fpb, n_batches, device, replicate)
    fns = {m: f for m, f in runners(model, batches, model_name, device).items() if m in modes}
    for f in fns.values():  # warm-up (lazy initialisation, caches)
        f()
    wall = {m: float("inf") for m in fns}
    cpu = {m: float("inf") for m in fns}
    for _ in range(repeats):
        for m, f in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            wall[m] = min(wall[m], time.perf_counter() - t0)
            cpu[m] = min(cpu[m], time.process_time() - c0)
    b0 = batches[0]
    out = dict(model=model_name, data=f"{dataset}/{system}" + (f" x{replicate}" if
                                                               replicate > 1 else ""),
               frames_per_batch=fpb * replicate if replicate > 1 else fpb,
               batches=len(batches), atoms=b0.num_atoms, edges=b0.num_edges,
               edges_per_atom=round(b0.num_edges / b0.num_atoms, 1),
               forward_s=round(wall["forward"], 4), forward_cpu_s=round(cpu["forward"], 4),
               load=round(os.getloadavg()[0], 2))
    for m in fns:
        if m == "forward":
            continue
        out[f"{m}_x"] = round(cpu[m] / cpu["forward"], 3)
        out[f"{m}_wall_x"] = round(wall[m] / wall["forward"], 3)
    if "floor" in fns and "measure" in fns:
        out["fraction_of_floor"] = round(cpu["floor"] / cpu["measure"], 3)
    return out


def peak_case(row: dict, model_name, dataset, system, fpb, n_batches, device,
              replicate=1) -> None:
    """Peak memory of the forward and of measure for a timed case, added to ``row``. Run
    after all timing: on CPU it needs every allocation of 64 KiB or more served by mmap
    (:func:`_mmap_small_allocations`), which makes each fresh buffer fault its pages in
    and would slow both modes' timing in a way the default allocator does not."""
    model = load_model(model_name, dataset).to(device)
    batches = make_batches(model, dataset, system, fpb, n_batches, device, replicate)
    fns = runners(model, batches, model_name, device, floor=False)
    # one call of each first (lazy initialisation: a fresh model's first forward, the first
    # measure call's imports and the extension's kept scratch), then the median of three
    # interleaved peaks: a single first call read 1.5-2.1x for measure (round 5) where the
    # steady state is 1.0-1.25x (round 6)
    for m in ("forward", "measure"):
        fns[m]()
    runs = {m: [] for m in ("forward", "measure")}
    for _ in range(PEAK_REPEATS):
        for m in runs:
            runs[m].append(peak_mb(fns[m], device))
    peaks = {m: sorted(v)[len(v) // 2] for m, v in runs.items()}
    for m, v in peaks.items():
        row[f"peak_{m}_mb"] = round(v, 1)
    if peaks.get("forward"):
        row["peak_x"] = round(peaks["measure"] / max(peaks["forward"], 1e-9), 2)


def grid(quick: bool, big: bool):
    cases = [("gns", "rmd17", "ethanol", 64, 4), ("gns", "lips20", "gamma-Li3PS4", 8, 2),
             ("painn", "rmd17", "ethanol", 64, 4), ("painn", "lips20", "gamma-Li3PS4", 8, 2),
             ("schnet", "rmd17", "ethanol", 64, 4), ("schnet", "lips20", "gamma-Li3PS4", 8, 2)]
    scaling = [("gns", "rmd17", "ethanol", fpb, max(1, 256 // fpb)) for fpb in (8, 32, 128)]
    if quick:
        cases = [(m, d, s, f, 1) for m, d, s, f, _ in cases[:2]]
        scaling = []
    out = [(c, MODES, 1) for c in cases]
    out += [(c, ("forward", "measure", "floor"), 1) for c in scaling]
    if big:
        out.append((("gns", "lips20", "gamma-Li3PS4", 1, 1), ("forward", "measure", "floor"),
                    16))
    return out


def markdown(rows: list[dict], command: str, threads: int, device: str,
             allocator: str = "default") -> str:
    load = os.getloadavg()
    lines = [
        "# Measure against the forward (issue 15)", "",
        f"Command: `{command}`; machine: {cpu_name()}, {os.cpu_count()} cores shared with "
        f"other jobs; {threads} torch thread(s); device {device}; torch {torch.__version__}; "
        f"commit {git_commit()}; block products: "
        f"{gffmerge_ext.build_info().get('block_products', '?')}; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.", "",
        "Ratios are CPU time of this process over the forward's CPU time in the same round "
        "(best of the rounds, modes interleaved); wall-clock ratios are in measure.csv. "
        "`force-aware` = one-shot sums with one tangent direction per frame, targets' "
        "sums of affine layers derived from Grams and weights (the default); `force-aware "
        "measured` = the same with every target sum measured (`cross=\"measured\"`); "
        "`floor` = the forward plus `gram_` alone on the distinct rows measure forms; "
        "`of floor` = floor / measure. Timing under "
        + ("glibc's default allocator settings; " if allocator == "default" else
           "allocator settings that keep freed memory in the heap (`--allocator warm`: "
           "no mode faults fresh pages in after warm-up; the work alone); ")
        +
        "peak = RSS high-water mark above the start of a run (MiB), measured after all "
        "timing with every allocation of 64 KiB or more served by mmap, median of three "
        "runs after one warm-up call of each mode.", "",
        "| model | data | frames/batch | atoms / edges per batch | forward s (CPU) | measure | "
        "dense | cross | force-aware | force-aware measured | floor | of floor | "
        "peak fwd / measure MiB | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def g(k, r=r):
            v = r.get(k)
            return "" if v is None else f"{v:.2f}×"
        lines.append(
            f"| {r['model']} | {r['data']} | {r['frames_per_batch']} | {r['atoms']} / "
            f"{r['edges']} | {r['forward_cpu_s']:.3f} | {g('measure_x')} | {g('dense_x')} | "
            f"{g('cross_x')} | {g('tangent_x')} | {g('tangent_measured_x')} | {g('floor_x')} | "
            f"{r.get('fraction_of_floor', '')} | {r.get('peak_forward_mb', '')} / "
            f"{r.get('peak_measure_mb', '')} | {r['load']} |")
    lines += ["", "## Targets", ""]
    for r in rows:
        if "measure_x" not in r:
            continue
        target = TARGETS["measure"][r["model"]]
        if r["model"] == "gns" and r["data"].startswith("rmd17"):
            target = 1.6
        ok = r["measure_x"] <= target
        verdict = "met" if ok else f"missed by {r['measure_x'] - target:.2f}×"
        lines.append(f"- {r['model']} on {r['data']} at {r['frames_per_batch']} frames: "
                     f"measure {r['measure_x']:.2f}× (target ≤ {target}×): {verdict}")
    # force-aware: one random direction per frame, so the ratio is per tangent direction
    for key, what, per in (("tangent_x", "force-aware {x:.2f}×", " per tangent direction"),
                           ("peak_x", "peak memory of measure {x:.2f}× the forward's", "")):
        target = TARGETS[key[:-2] if key == "peak_x" else "tangent"]
        for r in rows:
            if r.get(key) is None:
                continue
            verdict = "met" if r[key] <= target else f"missed by {r[key] - target:.2f}×"
            lines.append(f"- {r['model']} on {r['data']} at {r['frames_per_batch']} frames: "
                         + what.format(x=r[key]) + f" (target ≤ {target}×{per}): {verdict}")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in rows if "dense_x" in r]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    modes = ["measure", "dense", "cross", "tangent", "tangent_measured", "floor"]
    width = 0.13
    for i, m in enumerate(modes):
        ax.bar([j + i * width for j in range(len(main))],
               [r.get(f"{m}_x", 0) for r in main], width, label=m)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 2.5 * width for j in range(len(main))])
    ax.set_xticklabels([f"{r['model']}\n{r['data'].split('/')[1]}\n{r['frames_per_batch']} fr"
                        for r in main], fontsize=8)
    ax.set_ylabel("CPU time / forward")
    ax.legend(fontsize=8)
    ax.set_title("Statistics against the forward pass (same process, interleaved)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--big", action="store_true", help="add a 16x replicated LiPS20 cell")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/measure"))
    p.add_argument("--allocator", choices=("default", "warm"), default="default",
                   help="timing under glibc's default settings, or with freed memory kept "
                        "in the heap (no page faults after warm-up)")
    p.add_argument("--models", default=None,
                   help="comma-separated subset of gns,painn,schnet (default: all)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_measure.py " + " ".join(sys.argv[1:])
    rows = []
    cases = grid(args.quick, args.big)
    if args.allocator == "warm" and not args.device.startswith("cuda"):
        if not _keep_freed_memory():
            print("bench_measure: --allocator warm needs glibc's mallopt (not found here); "
                  "run without --allocator", file=sys.stderr)
            sys.exit(2)
    if args.models:
        keep = set(args.models.split(","))
        cases = [c for c in cases if c[0][0] in keep]
    for (model, dataset, system, fpb, nb), modes, rep in cases:
        r = run_case(model, dataset, system, fpb, nb, args.repeats, args.device, modes, rep)
        print(r, flush=True)
        rows.append(r)
    if not args.device.startswith("cuda"):
        _mmap_small_allocations()  # from here on: peaks only, no timing
    for row, ((model, dataset, system, fpb, nb), _, rep) in zip(rows, cases, strict=True):
        peak_case(row, model, dataset, system, fpb, nb, args.device, rep)
        print({k: v for k, v in row.items() if k.startswith("peak")}, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in rows[0], k))
    with open(f"{out}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    Path(f"{out}.md").write_text(markdown(rows, command.strip(), args.threads, args.device,
                                          args.allocator))
    plot(rows, Path(f"{out}.png"))
    print(f"wrote {out}.md/.csv/.png")


if __name__ == "__main__":
    main()
