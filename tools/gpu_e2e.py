"""`make gpu-check` step e2e: measure and merge shipped force fields on the GPU, against the CPU.

For each shipped model kind (GNS: edge-MLP layers through the structured provider; PaiNN:
dense hooks) on the rMD17 ethanol/malonaldehyde pair, each source is measured on the same
frames on "cpu" and on "cuda" (the extension's CUDA gram kernels), and the paper's solve
(method gffmerge) runs on each device's statistics (the CUDA Cholesky for the CUDA stats).
The Grams may differ only by the float32 forward's rounding on two devices; the merged
weights by that, amplified by the conditioning. Writes a table (markdown + csv) and exits 1
when a step raised or a difference exceeds its bound.

    python tools/gpu_e2e.py --out benchmarks/results/gpu_e2e [--frames 64]
"""

from __future__ import annotations

import argparse
import csv
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

# Bounds: relative Frobenius differences between the devices' results.
GRAM_BOUND = 1e-4
WEIGHT_BOUND = 1e-2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def timed(fn, *args, **kwargs):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run_kind(kind: str, frames: int, rows: list[dict], gpu: str = "cuda") -> bool:
    import gffmerge
    from gffmerge.checkpoint import load_checkpoint
    from gffmerge.data import load_dataset

    names = ["ethanol", "malonaldehyde"]
    models = [load_checkpoint(ROOT / f"checkpoints/rmd17/{kind}_{n}.pt")[0] for n in names]
    datas = [load_dataset([f"rmd17/{n}"], max_frames=frames, seed=0).split("train")
             for n in names]
    stats = {}
    ok = True
    for device in ("cpu", gpu):
        per = []
        t_all = 0.0
        for model, ds, name in zip(models, datas, names):
            m = model.to(device)
            loader = ds.batches_for(m, 8)
            s, t = timed(gffmerge.measure, m, loader, device=device, progress=False,
                         label=name)
            per.append(s)
            t_all += t
        stats[device] = gffmerge.Stats.concat(per)
        rows.append({"model": kind, "step": f"measure {device}", "seconds": round(t_all, 3),
                     "detail": f"{len(stats[device].layers)} layers, "
                               f"{sum(len(d) for d in datas)} frames"})
        models = [m.cpu() for m in models]
    worst, where = 0.0, ""
    for k, (mc, mg) in enumerate(zip(stats["cpu"].models, stats[gpu].models)):
        for name, lc in mc.layers.items():
            lg = mg.layers[name]
            assert lg.gram.device.type == gpu, f"{name}: {gpu} stats on {lg.gram.device}"
            assert lc.rows == lg.rows, f"{name}: rows {lc.rows} (cpu) != {lg.rows} (cuda)"
            r = rel(lg.gram, lc.gram)
            if r > worst:
                worst, where = r, f"model {k} {name}"
    ok &= worst <= GRAM_BOUND
    rows.append({"model": kind, "step": f"gram {gpu} vs cpu", "seconds": "",
                 "detail": f"max rel diff {worst:.2e} at {where} (bound {GRAM_BOUND:g})"})
    merged = {}
    for device in ("cpu", gpu):
        ms = [m.to(device) for m in models]
        res, t = timed(gffmerge.solve, ms, stats[device])
        merged[device] = {k: v.detach().cpu() for k, v in res.model.state_dict().items()}
        rows.append({"model": kind, "step": f"solve {device}", "seconds": round(t, 3),
                     "detail": f"on {next(res.model.parameters()).device}"})
        models = [m.cpu() for m in models]
    worst, where = 0.0, ""
    for key, vc in merged["cpu"].items():
        if vc.is_floating_point() and vc.numel():
            r = rel(merged[gpu][key], vc)
            if r > worst:
                worst, where = r, key
    finite = all(torch.isfinite(v).all() for v in merged[gpu].values()
                 if v.is_floating_point())
    ok &= worst <= WEIGHT_BOUND and finite
    rows.append({"model": kind, "step": f"merged {gpu} vs cpu", "seconds": "",
                 "detail": f"max rel diff {worst:.2e} at {where} (bound {WEIGHT_BOUND:g}); "
                           f"finite {finite}"})
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_e2e"))
    p.add_argument("--frames", type=int, default=64, help="frames per system (train split)")
    p.add_argument("--kinds", nargs="+", default=["gns", "painn"])
    p.add_argument("--device", default="cuda", help="the device compared with cpu (cpu: a "
                   "dry run of this script without a GPU)")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_e2e: torch sees no CUDA device; run it on a GPU machine (make gpu-check)",
              file=sys.stderr)
        return 2
    rows: list[dict] = []
    ok = True
    for kind in args.kinds:
        try:
            ok &= run_kind(kind, args.frames, rows, args.device)
        except Exception as exc:  # report and go on with the next kind
            traceback.print_exc()
            rows.append({"model": kind, "step": "FAILED", "seconds": "",
                         "detail": f"{type(exc).__name__}: {exc}"[:300].replace("\n", " ")})
            ok = False
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [f"# GPU end to end: measure and solve on {args.device} vs cpu", "",
             f"Command: `python tools/gpu_e2e.py --frames {args.frames} --device "
             f"{args.device}`; commit {commit}; {platform.node()}; torch {torch.__version__}; "
             f"GPU {gpu}; threads {torch.get_num_threads()}.", "",
             "| model | step | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['step']} | {r['seconds']} | {r['detail']} |" for r in rows]
    lines += ["", "All within bounds." if ok else "FAILED: see the rows above."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "step", "seconds", "detail"])
        w.writeheader()
        w.writerows(rows)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
