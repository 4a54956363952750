"""Gram statistics of GNS edge and node layers: structured provider vs dense hook vs the
official recipe; optionally the end-to-end measure + merge of the shipped LiPS20 GNS models.

    python benchmarks/bench_edge_gram.py                 # the grid -> results/edge_gram_cpu.*
    python benchmarks/bench_edge_gram.py --quick         # a small grid, for a smoke test
    python benchmarks/bench_edge_gram.py --end-to-end    # shipped LiPS20 GNS fine-tunes only
    python benchmarks/bench_edge_gram.py --device cuda --dims 64 128 --degrees 32 \
        --atoms 10000 100000                             # a GPU grid -> results/edge_gram_cuda.*

Layers (random graphs, float32 activations, float64 sums, Gram *and* cross sums):

* edge: ``EdgeConcatLinear(d, d, d)`` on ``[e, h[sender], h[receiver]]`` with ``E = degree·N``
  edges (receivers sorted as in a neighbour list, senders uniform);
* node: ``ConcatLinear([d, d, d], d)`` on ``[h, received, sent]`` (N rows; the degree does
  not enter).

Variants, each accumulating ``A = Σ x̃x̃ᵀ`` and ``B = Σ x̃yᵀ`` with the layer output ``y``:

* ``structured``: ``gffmerge.collect.sums_of(layer.gram_parts(...), y)``;
* ``dense``: the dense hook: ``x = layer.dense_input(...)`` (the materialised ``[R, in]``
  rows), ``gffmerge_ext.gram_`` / ``cross_`` on it;
* ``official``: the official GFFMerge style: materialise, cast to float64, append the ones
  column, ``A += x̃ᵀx̃`` and ``B += x̃ᵀ y`` with torch matmuls.

Every (case, variant) runs in a fresh subprocess: run it once on a tiny graph (lazy
initialisation), build the inputs, time one warm-up run and the median of ``--repeats``
further runs (just the one run when it took over 10 s). Then the peak: glibc serves every
allocation of 64 KiB or more by mmap (so freed temporaries leave the RSS), ``malloc_trim``,
reset the RSS high-water mark (``echo 5 > /proc/self/clear_refs``), run once more, and
report ``VmHWM - VmRSS`` as the peak accumulation memory (everything the variant touches
on top of its inputs, the materialised rows of dense/official included). With
``--device cuda`` the inputs live on the GPU, every timed run ends with a device
synchronisation, and the peak is ``torch.cuda.max_memory_allocated()`` of the extra run minus
the memory allocated before it (tensors only, the caching allocator's slack excluded).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VARIANTS = ("structured", "dense", "official")
LIPS20 = ("lips20/beta-Li3PS4", "lips20/gamma-Li3PS4")


# ---------------------------------------------------------------- one case (subprocess)
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _inputs(layer: str, d: int, degree: int, n: int, seed: int = 0, device: str = "cpu"):
    import torch

    from gffmerge.models.layers import ConcatLinear, EdgeConcatLinear

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if layer == "edge":
        e = n * degree
        receiver = torch.randint(0, n, (e,), generator=gen).sort().values
        sender = torch.randint(0, n, (e,), generator=gen)
        module = EdgeConcatLinear(d, d, d)
        args = (
            torch.randn(e, d, generator=gen),
            torch.randn(n, d, generator=gen),
            torch.stack([sender, receiver]),
        )
    else:
        module = ConcatLinear([d, d, d], d)
        args = tuple(torch.randn(n, d, generator=gen) for _ in range(3))
    if device != "cpu":  # drawn on the CPU, so that every device gets the same numbers
        module = module.to(device)
        args = tuple(a.to(device) for a in args)
    with torch.no_grad():
        y = module(*args)
    return module, args, y


def _variant(name: str):
    import torch

    import gffmerge_ext
    from gffmerge.collect import sums_of

    f64 = torch.float64

    def structured(module, args, y):
        return sums_of(module.gram_parts(*args), y)

    def dense(module, args, y):
        x = module.dense_input(*args)
        a = torch.zeros(x.shape[1] + 1, x.shape[1] + 1, dtype=f64, device=x.device)
        b = torch.zeros(x.shape[1] + 1, y.shape[1], dtype=f64, device=x.device)
        gffmerge_ext.gram_(a, x, augment=True)
        gffmerge_ext.cross_(b, x, y, augment_x=True)
        return a, b

    def official(module, args, y):
        x = module.dense_input(*args).to(f64)
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=f64, device=x.device)], dim=1)
        a = torch.zeros(x.shape[1], x.shape[1], dtype=f64, device=x.device)
        b = torch.zeros(x.shape[1], y.shape[1], dtype=f64, device=x.device)
        a += x.T @ x
        b += x.T @ y.to(f64)
        return a, b

    return {"structured": structured, "dense": dense, "official": official}[name]


def _mmap_small_allocations() -> bool:
    """Serve every allocation of 64 KiB or more by mmap (glibc ``M_MMAP_THRESHOLD``), so
    freed temporaries leave the RSS at once and the high-water mark tracks live memory."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024))
    except (OSError, AttributeError):
        return False


def _cuda_peak_mb(fn, module, args, y) -> float:
    """Tensor memory the run allocates on top of what was allocated before it."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        fn(module, args, y)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_case(
    layer: str, d: int, degree: int, n: int, variant: str, repeats: int, long_s: float,
    device: str = "cpu",
) -> dict:
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn = _variant(variant)
    with torch.no_grad():  # lazy initialisation (BLAS buffers, ...) outside the peak
        fn(*_inputs(layer, d, degree, 64, seed=1, device=device))
    module, args, y = _inputs(layer, d, degree, n, device=device)
    times = []
    with torch.no_grad():
        for _ in range(1 + repeats):
            sync()
            t0 = time.perf_counter()
            out = fn(module, args, y)
            sync()
            times.append(time.perf_counter() - t0)
            del out
            if times[0] > long_s:  # one run only: it is its own warm-up
                break
    timed = times[1:] or times
    if device == "cuda":
        return {
            "seconds": statistics.median(timed),
            "repeats": len(timed),
            "first_s": times[0],
            "peak_mb": _cuda_peak_mb(fn, module, args, y),
            "peak_exact": True,
            "rows": int(y.shape[0]),
        }
    mmap = _mmap_small_allocations()
    _trim()
    base_kb = _status_kb("VmRSS")
    exact = _reset_peak()
    with torch.no_grad():
        fn(module, args, y)
    peak_kb = _status_kb("VmHWM") - base_kb
    return {
        "seconds": statistics.median(timed),
        "repeats": len(timed),
        "first_s": times[0],
        "peak_mb": peak_kb / 1024,
        "peak_exact": exact and mmap,
        "rows": int(y.shape[0]),
    }


# ---------------------------------------------------------------- planning
def estimate(layer: str, d: int, degree: int, n: int, variant: str) -> tuple[float, float]:
    """(bytes of inputs + temporaries, multiply-adds) of one run, for skipping only."""
    out = d
    if layer == "edge":
        rows = n * degree
        inputs = rows * d * 4 * 2 + rows * 16 + n * d * 4
    else:
        rows = n
        inputs = 4 * n * d * 4
    width = 3 * d
    if variant == "structured":
        temps = 6 * n * (d + 1) * 8 + 64 * 2**20 + (rows * 48 if layer == "edge" else 0)
        dense_w = d if layer == "edge" else width
        macs = rows * (dense_w + 1) * (dense_w + 1 + out)
    else:
        temps = rows * (width * 4 + 2 * (width + 1) * 8 + out * 8)
        macs = rows * (width + 1) * (width + 1 + out)
    return inputs + temps, macs


def _gmacs_per_s(device: str = "cpu") -> float:
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a = torch.randn(4096, 512, dtype=torch.float64, device=device)
    a.T @ a
    sync()
    t0 = time.perf_counter()
    for _ in range(3):
        a.T @ a
    sync()
    return 3 * 4096 * 512 * 512 / (time.perf_counter() - t0) / 1e9


def grid(quick: bool, dims=None, degrees=None, atoms=None):
    ds = dims or ((64,) if quick else (64, 128, 256))
    degrees = degrees or ((16, 32) if quick else (16, 32, 64))
    ns = atoms or ((1_000,) if quick else (1_000, 10_000, 100_000))
    for layer in ("edge", "node"):
        for d in ds:
            for n in ns:
                for degree in degrees if layer == "edge" else (0,):
                    yield layer, d, degree, n


# ---------------------------------------------------------------- machine + output
def machine(threads: int, device: str = "cpu") -> dict:
    import torch

    import gffmerge_ext

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ext = Path(gffmerge_ext.__file__).resolve()
    available = getattr(gffmerge_ext, "extension_available", None)
    backend = (
        f"compiled extension ({ext.parent})"
        if callable(available) and available()
        else f"pure-torch ops ({ext})"
    )
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        cpu = f"{props.name} ({props.total_memory / 2**30:.0f} GB; host CPU {cpu})"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "torch": torch.__version__,
        "threads": threads,
        "gffmerge_ext": backend,
        "python": platform.python_version(),
    }


def _fmt_s(x):
    return "—" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def _fmt_mb(x):
    return "—" if x is None else (f"{x:.1f}" if x < 100 else f"{x:.0f}")


def _ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def _fmt_r(x):
    return "—" if x is None else f"{x:.1f}×"


def table_rows(results: list[dict]) -> list[dict]:
    cases: dict[tuple, dict] = {}
    for r in results:
        key = (r["layer"], r["d"], r["degree"], r["n"])
        c = cases.setdefault(
            key,
            {
                "layer": r["layer"],
                "d": r["d"],
                "degree": r["degree"],
                "n": r["n"],
                "rows": r.get("rows"),
            },
        )
        c[r["variant"]] = r
        c["rows"] = c["rows"] or r.get("rows")
    rows = []
    for c in cases.values():
        get = {v: c.get(v, {}) for v in VARIANTS}
        s = {v: get[v].get("seconds") for v in VARIANTS}
        m = {v: get[v].get("peak_mb") for v in VARIANTS}
        rows.append(
            {
                **{k: c[k] for k in ("layer", "d", "degree", "n", "rows")},
                **{f"{v}_s": s[v] for v in VARIANTS},
                **{f"{v}_mb": m[v] for v in VARIANTS},
                "speedup_vs_official": _ratio(s["official"], s["structured"]),
                "speedup_vs_dense": _ratio(s["dense"], s["structured"]),
                "memory_ratio_vs_official": _ratio(m["official"], m["structured"]),
                "memory_ratio_vs_dense": _ratio(m["dense"], m["structured"]),
                "skipped": "; ".join(
                    f"{v}: {get[v]['skipped']}" for v in VARIANTS if "skipped" in get[v]
                ),
            }
        )
    return rows


def _extrapolate(rows: list[dict], r: dict, key: str) -> float | None:
    """``key`` of row ``r`` scaled linearly in the number of rows from the largest measured
    case of the same layer, width and degree (both time and memory of the dense and
    official variants are linear in the rows)."""
    same = [q for q in rows if (q["layer"], q["d"], q["degree"]) == (r["layer"], r["d"],
                                                                      r["degree"])
            and q[key] is not None]
    if not same:
        return None
    q = max(same, key=lambda q: q["rows"])
    return q[key] * r["rows"] / q["rows"]


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| layer | d | degree | N | rows | structured s | dense s | official s | "
        "speed-up vs official | vs dense | structured MB | dense MB | official MB | "
        "memory ratio vs official | vs dense |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['d']} | {r['degree'] or '—'} | {r['n']:,} | {r['rows']:,} | "
            f"{_fmt_s(r['structured_s'])} | {_fmt_s(r['dense_s'])} | "
            f"{_fmt_s(r['official_s'])} | {_fmt_r(r['speedup_vs_official'])} | "
            f"{_fmt_r(r['speedup_vs_dense'])} | {_fmt_mb(r['structured_mb'])} | "
            f"{_fmt_mb(r['dense_mb'])} | {_fmt_mb(r['official_mb'])} | "
            f"{_fmt_r(r['memory_ratio_vs_official'])} | {_fmt_r(r['memory_ratio_vs_dense'])} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    colors = {"structured": "tab:green", "dense": "tab:orange", "official": "tab:red"}
    markers = {64: "o", 128: "s", 256: "^"}
    for col, layer, xkey, xlabel in ((0, "edge", "rows", "edges E"), (1, "node", "n", "atoms N")):
        for row, (suffix, ylabel) in enumerate(
            (("_s", "seconds (Gram + cross sums)"), ("_mb", "peak accumulation memory (MB)"))
        ):
            ax = axes[row, col]
            for v in VARIANTS:
                for d in markers:
                    pts = sorted(
                        (r[xkey], r[v + suffix])
                        for r in rows
                        if r["layer"] == layer and r["d"] == d and r[v + suffix] is not None
                    )
                    if pts:
                        xs, ys = zip(*pts, strict=True)
                        ax.plot(
                            xs,
                            ys,
                            marker=markers[d],
                            color=colors[v],
                            alpha=0.8,
                            linestyle="-",
                            linewidth=0.8,
                            label=f"{v}, d={d}",
                        )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(
                f"{'EdgeConcatLinear' if layer == 'edge' else 'ConcatLinear'} "
                f"({'[e, h_s, h_r]' if layer == 'edge' else '[h, recv, sent]'})"
            )
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- end to end
ROBUST = dict(prior="mean", ridge=1e-2, ridge_mode="relative")


def _rel_state(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max() / b[k].double().abs().max())
               for k in b if b[k].is_floating_point() and b[k].abs().max() > 0)


def end_to_end(repeats: int, limit: int | None) -> dict:
    import warnings

    import torch

    import gffmerge
    from gffmerge.checkpoint import load_checkpoint
    from gffmerge.data import load_dataset

    root = HERE.parent / "checkpoints" / "lips20"
    paths = [root / f"gns_{s.split('/')[1]}.pt" for s in LIPS20]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return {"missing": missing}
    models = [load_checkpoint(p)[0] for p in paths]
    data = load_dataset(list(LIPS20)).split("train")
    own = [data.for_system(s) for s in LIPS20]
    loaders = [d.batches_for(m, 8) for m, d in zip(models, own)]
    for loader in loaders:  # warm the neighbour-list cache
        for _ in loader:
            pass

    def forward_only():
        for m, loader in zip(models, loaders):
            m.eval()
            graphs = 0
            with torch.no_grad():
                for batch in loader:
                    m.measure_forward(batch)
                    graphs += batch.num_graphs
                    if limit is not None and graphs >= limit:
                        break

    stats = {}

    def run(mode):
        stats[mode] = gffmerge.Stats.concat(
            gffmerge.measure(m, loader, limit=limit, progress=False, dense=mode == "dense")
            for m, loader in zip(models, loaders))

    modes = {"forward only": forward_only, "structured": lambda: run("structured"),
             "dense": lambda: run("dense")}
    times = {mode: [] for mode in modes}
    peaks = {mode: 0.0 for mode in modes}
    exact = _mmap_small_allocations()
    for _ in range(repeats):  # interleaved, so that load drifts hit every mode alike
        for mode, fn in modes.items():
            _trim()
            base_kb = _status_kb("VmRSS")
            exact = _reset_peak() and exact
            t0 = time.perf_counter()
            fn()
            times[mode].append(time.perf_counter() - t0)
            peaks[mode] = max(peaks[mode], (_status_kb("VmHWM") - base_kb) / 1024)
    out: dict = {
        "checkpoints": [str(p.relative_to(HERE.parent)) for p in paths],
        "config": models[0].config,
        "frames": [len(d) for d in own],
        "limit": limit,
        "times": times,
        "peaks_mb": peaks,
        "peak_exact": exact,
    }
    merged = {}
    for mode in ("structured", "dense"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            merged[mode, "default"] = gffmerge.solve(models, stats[mode]).model.state_dict()
            out[f"solve_s_{mode}"] = time.perf_counter() - t0
            merged[mode, "robust"] = gffmerge.solve(models, stats[mode],
                                                    **ROBUST).model.state_dict()
    worst = 0.0
    for name in stats["dense"].layers:
        for a, b in zip(stats["structured"].models, stats["dense"].models, strict=True):
            ga, gb = a.layers[name].gram, b.layers[name].gram
            worst = max(worst, float((ga - gb).abs().max() / gb.abs().max()))
    out["gram_max_rel_diff"] = worst
    for opts in ("default", "robust"):
        out[f"merged_max_rel_diff_{opts}"] = _rel_state(merged["structured", opts],
                                                        merged["dense", opts])
    out["edges_per_model"] = [m.layers["layers.0.edge_in"].rows for m in stats["dense"].models]
    return out


def end_to_end_md(e2e: dict, command: str) -> str:
    if "missing" in e2e:
        return (
            f"Not run: checkpoints missing ({', '.join(e2e['missing'])}). Run "
            f"`{command}` once they exist.\n"
        )
    med = {k: statistics.median(v) for k, v in e2e["times"].items()}
    fwd = med["forward only"]
    rows = []
    for mode, label in (("forward only", "forward passes only (no hooks)"),
                        ("structured", "`measure()` (structured, default)"),
                        ("dense", "`measure(dense=True)` (`--dense`)")):
        hooks = "—" if mode == "forward only" else f"{med[mode] - fwd:.1f}"
        rows.append(f"| {label} | {med[mode]:.1f} | "
                    f"{', '.join(f'{t:.1f}' for t in e2e['times'][mode])} | {hooks} | "
                    f"{e2e['peaks_mb'][mode]:.0f} |")
    lines = [
        f"Checkpoints {', '.join(e2e['checkpoints'])} (GNS {e2e['config']}), each measured on "
        f"its own LiPS20 training frames ({', '.join(map(str, e2e['frames']))} frames; "
        f"limit {e2e['limit']}), batches of 8, both models per run. Edges per model: "
        f"{', '.join(f'{x:,}' for x in e2e['edges_per_model'])}. Runs interleaved "
        "(forward, structured, dense, forward, ...); peak = largest `VmHWM − VmRSS` of a run.",
        "",
        "| run | seconds (median) | runs | statistics overhead s (− forward) | peak MB |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Measure speed-up structured vs dense: {med['dense'] / med['structured']:.2f}× "
        f"overall, {(med['dense'] - fwd) / max(med['structured'] - fwd, 1e-9):.2f}× on the "
        "statistics overhead (`edge_in` and `node_mlp.0` are structured, and the "
        "attention layers and the force head share one Gram of `e'` (dedup); every other "
        "plain `nn.Linear` on edge rows, e.g. `edge_out` and the edge encoder, costs the "
        "same `O(E·d²)` on both paths). Solve: "
        f"{e2e['solve_s_structured']:.2f} s / {e2e['solve_s_dense']:.2f} s.",
        "",
        f"Largest relative Gram difference structured vs dense: {e2e['gram_max_rel_diff']:.1e}. "
        "Largest relative difference of the merged parameters: "
        f"{e2e['merged_max_rel_diff_default']:.1e} with the default solve options (ridge "
        "1e-6 absolute: the `edge_in` Grams of these models are numerically singular, the "
        "Cholesky needs jitter, and the solution is not determined by the data, so 1e-13 "
        "differences in the sums move it), "
        f"{e2e['merged_max_rel_diff_robust']:.1e} with `prior='mean', ridge=1e-2, "
        "ridge_mode='relative'`.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small grid")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where inputs and sums live (default cpu)")
    p.add_argument("--dims", type=int, nargs="+", help="layer widths d (overrides the grid's)")
    p.add_argument("--degrees", type=int, nargs="+", help="edge-layer degrees (overrides)")
    p.add_argument("--atoms", type=int, nargs="+", help="node counts N (overrides)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--max-gb",
        type=float,
        default=8.0,
        help="skip variants whose inputs + temporaries exceed this",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="skip variants estimated to take longer per run",
    )
    p.add_argument(
        "--plan-gmacs",
        type=float,
        default=None,
        help="float64 GMAC/s assumed when estimating run times for skipping (default 8 on "
        "the CPU, 2000 on a GPU)",
    )
    p.add_argument(
        "--end-to-end",
        action="store_true",
        help="only the end-to-end measure + merge of the shipped LiPS20 GNS",
    )
    p.add_argument("--e2e-limit", type=int, default=None, help="graphs per model (end to end)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        layer, d, degree, n, variant = args.worker
        res = run_case(layer, int(d), int(degree), int(n), variant, args.repeats, 10.0,
                       args.device)
        print("RESULT " + json.dumps(res))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device (a CPU build of torch, or no GPU)")
    if args.device == "cuda" and args.end_to_end:
        sys.exit("--end-to-end runs on the CPU only; drop --device cuda")
    torch.set_num_threads(args.threads)
    name = f"edge_gram_{args.device}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:])
    info = machine(args.threads, args.device)
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    if args.end_to_end:
        e2e = end_to_end(max(1, args.repeats), args.e2e_limit)
        text = end_to_end_md(e2e, command)
        print(text)
        path = out / f"{name}_end_to_end.md"
        path.write_text(
            "# End-to-end: measure + merge of the shipped LiPS20 GNS fine-tunes\n\n"
            f"Command: `{command}`\n\n"
            f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
            f"{info['threads']} thread(s), gffmerge_ext: {info['gffmerge_ext']}. Load average "
            f"before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}.\n\n" + text
        )
        print(f"wrote {path}")
        return 0

    rate = _gmacs_per_s(args.device)
    # Fixed, so that the skipped set does not depend on load.
    plan_rate = args.plan_gmacs or (2000.0 if args.device == "cuda" else 8.0)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results = []
    for layer, d, degree, n in grid(args.quick, args.dims, args.degrees, args.atoms):
        for variant in VARIANTS:
            mem, macs = estimate(layer, d, degree, n, variant)
            est_s = 1.5 * macs / (plan_rate * 1e9)
            base = {
                "layer": layer,
                "d": d,
                "degree": degree,
                "n": n,
                "variant": variant,
                "rows": n * degree if layer == "edge" else n,
            }
            if mem > args.max_gb * 2**30:
                base["skipped"] = f"needs ~{mem / 2**30:.1f} GB > {args.max_gb:g} GB"
            elif est_s > args.max_seconds:
                base["skipped"] = f"~{est_s:.0f} s per run > {args.max_seconds:g} s"
            if "skipped" in base:
                print(
                    f"{layer:4s} d={d:3d} deg={degree:2d} N={n:>6d} {variant:10s} "
                    f"skipped: {base['skipped']}",
                    flush=True,
                )
                results.append(base)
                continue
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                layer,
                str(d),
                str(degree),
                str(n),
                variant,
                "--threads",
                str(args.threads),
                "--repeats",
                str(args.repeats),
                "--device",
                args.device,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                base["skipped"] = f"failed (exit {proc.returncode}): {proc.stderr[-300:]}"
                print(base["skipped"], file=sys.stderr)
                results.append(base)
                continue
            res = {**base, **json.loads(line[0][len("RESULT ") :])}
            results.append(res)
            print(
                f"{layer:4s} d={d:3d} deg={degree:2d} N={n:>6d} {variant:10s} "
                f"{res['seconds']:8.3f} s (n={res['repeats']})  peak {res['peak_mb']:8.1f} MB",
                flush=True,
            )

    rows = table_rows(results)
    table = markdown_table(rows)
    print()
    print(table)
    with open(out / f"{name}.csv", "w", newline="") as f:
        keys = [
            "layer",
            "d",
            "degree",
            "n",
            "rows",
            "variant",
            "seconds",
            "repeats",
            "first_s",
            "peak_mb",
            "peak_exact",
            "skipped",
        ]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow(r)
    try:
        plot(rows, out / f"{name}.png")
        figure = [f"![scaling]({name}.png)", ""]
    except ImportError as exc:  # matplotlib is optional (a GPU machine may lack it)
        print(f"no plot: {exc}", file=sys.stderr)
        figure = []
    highlights = []
    for r in rows:
        if r["layer"] == "edge" and r["degree"] in (32, 64):
            cells = []
            for base in ("official", "dense"):
                for unit, ratio in (("_s", "speedup_vs_"), ("_mb", "memory_ratio_vs_")):
                    value = r[ratio + base]
                    if value is not None:
                        cells.append(_fmt_r(value))
                        continue
                    est = _extrapolate(rows, r, base + unit)
                    mine = r["structured" + unit]
                    cells.append("—" if est is None or not mine else f"≈{est / mine:.0f}× (e)")
            highlights.append(f"| {r['d']} | {r['degree']} | {r['n']:,} | " + " | ".join(cells)
                              + " |")
    load_after = os.getloadavg()
    exact = all(r.get("peak_exact", True) for r in results)
    cpu_peak = (
        "Peak memory: each (case, variant) runs in "
        "a fresh process; after the timed runs, glibc is set to serve every allocation "
        "≥ 64 KiB by mmap (`mallopt(M_MMAP_THRESHOLD)`, so freed temporaries leave the "
        "RSS), `malloc_trim(0)`, the RSS high-water mark is reset "
        "(`/proc/self/clear_refs`), the variant runs once more, and `VmHWM − VmRSS` is "
        "reported: every byte the variant touches on top of its inputs (process level: "
        "tensors, BLAS and allocator overheads), including the materialised rows of "
        "dense/official, which the GNS forward never builds."
        + (
            ""
            if exact
            else " **clear_refs or mallopt was not available: the peaks are upper bounds.**"
        )
    )
    cuda_peak = (
        "Every timed run ends with `torch.cuda.synchronize()`. Peak memory: each (case, "
        "variant) runs in a fresh process; after the timed runs the variant runs once more "
        "and `torch.cuda.max_memory_allocated()` minus the memory allocated before it is "
        "reported: the GPU tensor memory it needs on top of its inputs (the caching "
        "allocator's reserve and cuBLAS workspaces not included), the materialised rows of "
        "dense/official included."
    )
    load_note = " (the 2 cores are shared with other jobs)" if args.device == "cpu" else ""
    md = [
        f"# Edge/node-layer Gram statistics on {args.device.upper()}: structured provider vs "
        "dense hook vs official recipe",
        "",
        f"Command: `{command}` ({(time.perf_counter() - t_start) / 60:.1f} min)",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; Python "
        f"{info['python']}, torch {info['torch']}, {info['threads']} torch thread(s) per run; "
        f"gffmerge_ext: {info['gffmerge_ext']}. float64 matmul rate measured at start: "
        f"{rate:.1f} GMAC/s (skips assume {plan_rate:g}). Load average (1 min) before / "
        f"after: {load_before[0]:.2f} / {load_after[0]:.2f}{load_note}.",
        "",
        "## What is measured",
        "",
        "Each variant accumulates the augmented Gram `A = Σ x̃x̃ᵀ` **and** the cross sums "
        "`B = Σ x̃yᵀ` with the layer output (float64) for one batch:",
        "",
        "* **structured**: `sums_of(layer.gram_parts(...), y)`: `gram_`/`cross_` of the "
        "edge features and output as they are (the compiled ops convert row blocks to "
        "float64 internally); one pass over ≤ 8 MiB float64 chunks `[e, 1, y]` for the "
        "scatter sums per sender / receiver; degree-weighted node-level products; the "
        "sender × receiver block from `index_add` of `h[sender]` over the sorted "
        "receivers; no `[E, 3d]` tensor;",
        "* **dense**: the dense hook: `layer.dense_input(...)` materialises the `[R, 3d]` "
        "float32 rows, then `gffmerge_ext.gram_` / `cross_` on them;",
        "* **official**: materialise, `.to(float64)`, append the ones column, "
        "`A += x̃ᵀx̃`, `B += x̃ᵀ y.double()` (torch matmuls).",
        "",
        "Edge layer: `EdgeConcatLinear(d, d, d)` on a random graph with `E = degree × N` "
        "(receivers sorted, senders uniform). Node layer: `ConcatLinear([d, d, d], d)` on "
        "three `[N, d]` tensors; its cost does not depend on the degree.",
        "",
        f"Time: median of {args.repeats} runs after a warm-up run (just that one run when "
        "it took > 10 s; `repeats` in the CSV). "
        + (cuda_peak if args.device == "cuda" else cpu_peak),
        "Variants estimated to need more than "
        f"{args.max_gb:g} GB (inputs + temporaries) or more than {args.max_seconds:g} s per "
        "run were skipped (— in the table; reasons below).",
        "",
        "## Highlights: edge layer at degree 32 and 64",
        "",
        "| d | degree | N | speed-up vs official | memory ratio vs official | "
        "speed-up vs dense hook | memory ratio vs dense hook |",
        "|---|---|---|---|---|---|---|",
        *highlights,
        "",
        "(e): the dense/official variant was skipped there (memory); its time and peak "
        "are extrapolated linearly in E from the largest measured case with the same d "
        "and degree, the structured values are measured.",
        "",
        "## All cases",
        "",
        table,
        "",
        *figure,
        "## Skipped",
        "",
        *(
            [
                f"* {r['layer']} d={r['d']} degree={r['degree']} N={r['n']:,}: {r['skipped']}"
                for r in rows
                if r["skipped"]
            ]
            or ["(none)"]
        ),
        "",
    ]
    e2e_path = out / f"{name}_end_to_end.md"
    if args.device == "cpu":  # the end-to-end run is CPU only
        md += [
            "## End to end (shipped LiPS20 GNS fine-tunes)",
            "",
            (
                e2e_path.read_text().split("\n", 2)[2]
                if e2e_path.is_file()
                else "Run `python benchmarks/bench_edge_gram.py --end-to-end`."
            ),
            "",
        ]
    (out / f"{name}.md").write_text("\n".join(md))
    print(f"wrote {out / (name + '.md')}, .csv" + (", .png" if figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
