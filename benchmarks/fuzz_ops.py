"""Random stress cases for the compiled ops against the float64 reference backend.

Each case draws one of ``gram_``, ``cross_`` and ``cholesky_solve_`` with random arguments
(shapes including 0 and 1, row counts across the kernels' row blocks and thread splits,
transposed / sliced / offset / zero-stride layouts, every row dtype, int32/int64 indices that
repeat, are sorted, reversed, shuffled, constant, empty or strided, signed or zero weights,
``augment``; for the solve: batches of well- and ill-conditioned SPD systems, clearly
indefinite ones with and without jitter steps, empty batches and right-hand sides), runs the
compiled op (``backend="ext"``, with anything it prints to stdout/stderr caught) and the
pure-torch float64 reference (``backend="torch"``) on copies of the same inputs, and records
per op and dtype the worst error:

* ``gram_`` / ``cross_``: ``max |Δext − Δref| / max(|X̃|ᵀ|W||Ỹ|)``, the added sums' difference
  relative to the sum of absolute products (so cancellation under signed weights does not
  inflate it); the accumulator starts non-zero, and ``gram_``'s result must be exactly
  symmetric;
* ``cholesky_solve_``: ``info`` and ``jitter`` must agree; the error is the backward error of
  the solution, ``|A X − B| / (|A| |X| + |B|)`` (the norm-wise bound a stable solver meets
  whatever the condition number), next to the factor's difference from the reference's,
  relative to ``|L_ref|`` and divided by the condition number.

A case fails when the two backends disagree on raising, the compiled op prints anything,
the error exceeds ``1e-12`` (gram, cross, solve backward error), or
``info``/``jitter``/symmetry differ. Writes
benchmarks/results/fuzz_ops.md (with the command, commit, machine, threads and load) unless
``--no-write``; exits 1 on any failure.

    python benchmarks/fuzz_ops.py                  # 10 000 cases (~1-2 min on 2 cores)
    python benchmarks/fuzz_ops.py --cases 50 --seed 3 --no-write
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

import gffmerge_ext

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchenv import cpu_name, git_commit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROW_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TOLERANCE = 1e-12
EPS = torch.finfo(torch.float64).eps


@dataclass
class Tally:
    """Worst error of one (op, dtype) group and the case it came from."""

    cases: int = 0
    raised: int = 0
    worst: float = 0.0
    worst_case: str = ""
    extra_worst: float = 0.0  # the solve's factor error / condition number
    failures: list[str] = field(default_factory=list)

    def add(self, err: float, case: str) -> None:
        self.cases += 1
        if err > self.worst or not self.worst_case:
            self.worst, self.worst_case = err, case


# ---------------------------------------------------------------- random inputs
def rand_count(rng: random.Random) -> int:
    """Row counts: mostly small (0 and 1 often), some across the 128..1024-row blocks and
    the 512-row-per-thread split."""
    u = rng.random()
    if u < 0.15:
        return rng.choice([0, 1, 2])
    if u < 0.75:
        return rng.randint(3, 64)
    if u < 0.95:
        return rng.randint(65, 600)
    return rng.randint(600, 2200)


def rand_dim(rng: random.Random) -> int:
    """Feature counts: 0, 1, small, around the 16/32-column tiles and the 96-column switch."""
    u = rng.random()
    if u < 0.08:
        return 0
    if u < 0.2:
        return 1
    if u < 0.75:
        return rng.randint(2, 20)
    return rng.choice([rng.randint(21, 70), 95, 96, 97, rng.randint(98, 140)])


def values(rng: random.Random, gen: torch.Generator, shape, dtype) -> torch.Tensor:
    """Random values at a random scale, exact in ``dtype`` (the reference casts the same
    values). float16 stays below its overflow."""
    scale = 10.0 ** rng.uniform(-3, 3 if dtype != torch.float16 else 2)
    t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
    if rng.random() < 0.1:  # a few exact zeros and repeated values
        t[t.abs() < scale * 0.3] = 0.0
    return t.to(dtype)


def rows_tensor(rng: random.Random, gen: torch.Generator, n: int, d: int, dtype
                ) -> tuple[torch.Tensor, str]:
    """``[n, d]`` rows of ``dtype`` in a random memory layout; returns (tensor, layout)."""
    layout = rng.choice(["contiguous", "transposed", "strided", "offset", "expanded_rows",
                         "expanded_cols", "column", "padded_rows"])
    if layout == "contiguous":
        x = values(rng, gen, (n, d), dtype)
    elif layout == "transposed":
        x = values(rng, gen, (d, n), dtype).T
    elif layout == "strided":
        sr, sc = rng.randint(1, 3), rng.randint(1, 3)
        x = values(rng, gen, (n * sr + 1, d * sc + 1), dtype)[1::sr, 1::sc][:n, :d]
    elif layout == "offset":
        x = values(rng, gen, (n + 3, d + 2), dtype)[3:, 2:]
    elif layout == "expanded_rows":
        x = values(rng, gen, (1, d), dtype).expand(n, d)
    elif layout == "expanded_cols":
        x = values(rng, gen, (n, 1), dtype).expand(n, d)
    elif layout == "column":  # one column of a wider tensor, as a [n, d] view with d = 1
        x = values(rng, gen, (n, d + 2), dtype)[:, 1:1 + d]
    else:
        x = values(rng, gen, (n, d + 5), dtype)[:, :d]
    assert tuple(x.shape) == (n, d)
    return x, layout


def index_tensor(rng: random.Random, gen: torch.Generator, rows: int, m: int
                 ) -> tuple[torch.Tensor | None, str]:
    """Row indices into ``rows`` rows (``m`` of them), in a random pattern."""
    pattern = rng.choice(["none", "none", "random", "sorted", "reversed", "permutation",
                          "constant", "empty", "strided", "first_last"])
    if pattern == "none":
        return None, "no index"
    dtype = rng.choice([torch.int64, torch.int32])
    if rows == 0 or pattern == "empty":
        return torch.zeros(0, dtype=dtype), f"empty {dtype}".replace("torch.", "")
    if pattern == "random":
        ix = torch.randint(0, rows, (m,), generator=gen)
    elif pattern == "sorted":
        ix = torch.randint(0, rows, (m,), generator=gen).sort().values
    elif pattern == "reversed":
        ix = torch.randint(0, rows, (m,), generator=gen).sort(descending=True).values
    elif pattern == "permutation":
        ix = torch.randperm(rows, generator=gen)[:m]
        if ix.numel() < m:
            ix = torch.cat([ix, torch.randint(0, rows, (m - ix.numel(),), generator=gen)])
    elif pattern == "constant":
        ix = torch.full((m,), rng.randrange(rows), dtype=torch.int64)
    elif pattern == "first_last":
        ix = torch.tensor([0, rows - 1] * (m // 2) + [rows - 1] * (m % 2), dtype=torch.int64)
    else:  # strided view of a longer index
        ix = torch.randint(0, rows, (2 * m,), generator=gen)[::2]
    return ix.to(dtype), f"{pattern} {dtype}".replace("torch.", "")


def weight_tensor(rng: random.Random, gen: torch.Generator, m: int
                  ) -> tuple[torch.Tensor | None, str]:
    kind = rng.choice(["none", "none", "positive", "signed", "zeros", "strided"])
    if kind == "none":
        return None, "no weight"
    dtype = rng.choice([torch.float32, torch.float64])
    if kind == "positive":
        w = torch.rand(m, generator=gen, dtype=torch.float64) * 10 ** rng.uniform(-2, 2)
    elif kind == "signed":
        w = torch.randn(m, generator=gen, dtype=torch.float64)
    elif kind == "zeros":
        w = torch.zeros(m, dtype=torch.float64)
    else:
        w = torch.randn(2 * m, generator=gen, dtype=torch.float64)[::2]
    return w.to(dtype), f"{kind} {dtype}".replace("torch.", "")


def gathered(x: torch.Tensor, index: torch.Tensor | None, augment: bool) -> torch.Tensor:
    rows = x if index is None else x.index_select(0, index.long())
    rows = rows.to(torch.float64)
    if augment:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def start_acc(gen: torch.Generator, rows: int, cols: int, scale: float,
              symmetric: bool = False) -> torch.Tensor:
    """A non-zero accumulator of the added sums' magnitude ``scale`` (so its own rounding,
    ~ε·|acc|, does not swamp the comparison of what the ops add)."""
    a = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * (scale or 1.0)
    return (a + a.T) * 0.5 if symmetric else a


# ---------------------------------------------------------------- one case per op
class Silent:
    """Catches what the compiled op writes to file descriptors 1 and 2 (a BLAS routine
    called with an invalid argument prints its complaint there, e.g. MKL's "Parameter 13
    was incorrect on entry to DGEMM", and carries on, or with reference BLAS stops the
    process): any output is a failure of the case."""

    def __init__(self) -> None:
        import tempfile

        self.sink = tempfile.TemporaryFile()
        self.text = ""

    def __enter__(self) -> Silent:
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        self.sink.seek(0)
        self.sink.truncate()
        os.dup2(self.sink.fileno(), 1)
        os.dup2(self.sink.fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        self.sink.seek(0)
        self.text = self.sink.read().decode(errors="replace").strip()


SILENT: Silent | None = None


def raised(e_ext, e_ref, tally, desc: str) -> bool:
    """Count a case where a backend raised: a failure when only one did; True if either did
    (nothing left to compare)."""
    if (e_ext is None) != (e_ref is None):
        tally.failures.append(f"{desc}: ext raised {e_ext!r}, reference raised {e_ref!r}")
        tally.cases += 1
        return True
    if e_ext is not None:
        tally.raised += 1
        tally.add(0.0, desc)
        return True
    return False


def both(fn_ext, fn_ref, tally: Tally, desc: str
         ) -> tuple[BaseException | None, BaseException | None]:
    """Run the compiled op (its output caught, see :class:`Silent`) and the reference."""
    global SILENT
    SILENT = SILENT or Silent()
    errs = []
    for k, fn in enumerate((fn_ext, fn_ref)):
        try:
            if k == 0:
                with SILENT:
                    fn()
            else:
                fn()
            errs.append(None)
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            errs.append(exc)
        if k == 0 and SILENT.text:
            tally.failures.append(f"{desc}: the op printed {SILENT.text[:200]!r}")
    return errs[0], errs[1]


def case_gram(rng, gen, tallies) -> None:
    dtype = rng.choice(ROW_DTYPES)
    n, d = rand_count(rng), rand_dim(rng)
    x, layout = rows_tensor(rng, gen, n, d, dtype)
    m = rand_count(rng) if rng.random() < 0.5 else n
    index, ixs = index_tensor(rng, gen, n, m)
    count = n if index is None else index.numel()
    weight, ws = weight_tensor(rng, gen, count)
    augment = rng.random() < 0.5
    D = d + int(augment)
    X = gathered(x, index, augment)
    W = torch.ones(count, dtype=torch.float64) if weight is None else weight.double()
    scale = (X.abs().T @ (W.abs()[:, None] * X.abs())).max().item() if X.numel() else 0.0
    acc0 = start_acc(gen, D, D, scale, symmetric=True)
    a_ext, a_ref = acc0.clone(), acc0.clone()
    desc = (f"gram_ x[{n},{d}] {layout}, index {ixs} ({count} rows), weight {ws}, "
            f"augment={augment}")
    tally = tallies[("gram_", str(dtype).replace("torch.", ""))]
    e_ext, e_ref = both(lambda: gffmerge_ext.gram_(a_ext, x, index, weight, augment,
                                                   backend="ext"),
                        lambda: gffmerge_ext.gram_(a_ref, x, index, weight, augment,
                                                   backend="torch"), tally, desc)
    if raised(e_ext, e_ref, tally, desc):
        return
    diff = ((a_ext - acc0) - (a_ref - acc0)).abs().max().item() if D else 0.0
    err = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
    tally.add(err, desc)
    if not torch.equal(a_ext, a_ext.T):
        tally.failures.append(f"{desc}: result not exactly symmetric")
    if not err <= TOLERANCE:
        tally.failures.append(f"{desc}: error {err:.3g}")


def side(rng, gen, pairs: int, d: int, dtype):
    """One operand of ``cross_`` for ``pairs`` pairs: rows without an index (then exactly
    ``pairs`` rows) or any number of rows and an index of length ``pairs``."""
    if rng.random() < 0.4:
        x, layout = rows_tensor(rng, gen, pairs, d, dtype)
        return x, None, layout, "no index"
    n = rand_count(rng) or (1 if pairs else 0)
    x, layout = rows_tensor(rng, gen, n, d, dtype)
    index, desc = index_tensor(rng, gen, n, pairs)
    if index is None or index.numel() != pairs:  # "none"/"empty" patterns: draw again
        index = torch.randint(0, max(n, 1), (pairs,), generator=gen)
        index, desc = (index, "random int64") if n else (index[:0], "empty int64")
        if not n and pairs:  # no rows to index: this operand has to be the rows themselves
            x, layout = rows_tensor(rng, gen, pairs, d, dtype)
            return x, None, layout, "no index"
    return x, index, layout, desc


def case_cross(rng, gen, tallies) -> None:
    dx, dy = rand_dim(rng), rand_dim(rng)
    tx = rng.choice(ROW_DTYPES)
    ty = tx if rng.random() < 0.5 else rng.choice(ROW_DTYPES)
    pairs = rand_count(rng)
    x, ix, lx, ixs = side(rng, gen, pairs, dx, tx)
    y, iy, ly, iys = side(rng, gen, pairs, dy, ty)
    if rng.random() < 0.05 and iy is not None and iy.numel():  # a refused call
        iy, iys = iy[:-1], iys + " (one short)"
    px = x.shape[0] if ix is None else ix.numel()
    py = y.shape[0] if iy is None else iy.numel()
    weight, ws = weight_tensor(rng, gen, px)
    augment = rng.random() < 0.5
    X, Y = gathered(x, ix, augment), gathered(y, iy, False)
    W = torch.ones(px, dtype=torch.float64) if weight is None else weight.double()
    scale = ((W.abs()[:, None] * X.abs()).T @ Y.abs()).max().item() \
        if px == py and X.numel() and Y.numel() else 0.0
    acc0 = start_acc(gen, dx + int(augment), dy, scale)
    a_ext, a_ref = acc0.clone(), acc0.clone()
    desc = (f"cross_ x[{x.shape[0]},{dx}] {tx} {lx}, y[{y.shape[0]},{dy}] {ty} {ly}, "
            f"index_x {ixs}, index_y {iys} ({px}/{py} pairs), weight {ws}, "
            f"augment_x={augment}").replace("torch.", "")
    tally = tallies[("cross_", str(tx).replace("torch.", ""))]
    e_ext, e_ref = both(lambda: gffmerge_ext.cross_(a_ext, x, y, ix, iy, weight, augment,
                                                    backend="ext"),
                        lambda: gffmerge_ext.cross_(a_ref, x, y, ix, iy, weight, augment,
                                                    backend="torch"), tally, desc)
    if raised(e_ext, e_ref, tally, desc):
        return
    diff = ((a_ext - acc0) - (a_ref - acc0)).abs().max().item() if acc0.numel() else 0.0
    err = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
    tally.add(err, desc)
    if not err <= TOLERANCE:
        tally.failures.append(f"{desc}: error {err:.3g}")


def spd_batch(rng, gen, L, n) -> tuple[torch.Tensor, list[float], str, list[float]]:
    """``L`` symmetric matrices; returns (A, condition numbers, kind, steps)."""
    kind = rng.choice(["spd", "spd", "ill", "indefinite", "indefinite+jitter", "diagonal"])
    mats, conds = [], []
    steps: list[float] = []
    if kind == "indefinite+jitter":
        steps = [10.0 ** k for k in range(-4, 1)]
    for _ in range(L):
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64)) \
            if n else (torch.zeros(0, 0, dtype=torch.float64), None)
        if kind == "ill":
            ev = torch.logspace(0, -rng.uniform(6, 11), n, dtype=torch.float64)
        elif kind.startswith("indefinite") and n:
            ev = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
            # the most negative eigenvalue, well away from every jitter step's threshold
            ev[rng.randrange(n)] = -3.0 * 10.0 ** -rng.randint(1, 3) * ev.mean()
        else:
            ev = torch.rand(n, generator=gen, dtype=torch.float64) * 10 + 0.1
        scale = 10.0 ** rng.uniform(-4, 4)
        if kind == "diagonal":
            a = torch.diag(ev * scale)
        else:
            a = (q * (ev * scale)) @ q.T if n else torch.zeros(0, 0, dtype=torch.float64)
            a = (a + a.T) * 0.5
        mats.append(a)
        conds.append((ev.abs().max() / ev.abs().min()).item() if n else 1.0)
    A = torch.stack(mats) if L else torch.zeros(0, n, n, dtype=torch.float64)
    return A.contiguous(), conds, kind, steps


def case_cholesky(rng, gen, tallies) -> None:
    L = rng.choice([0, 1, 1, 2, 3, rng.randint(4, 12)])
    u = rng.random()
    n = rng.choice([0, 1, 2]) if u < 0.15 else (rng.randint(3, 40) if u < 0.85
                                                 else rng.randint(41, 160))
    k = rng.choice([0, 1, 1, 2, rng.randint(3, 9)])
    A, conds, kind, steps = spd_batch(rng, gen, L, n)
    B = torch.randn(L, n, k, generator=gen, dtype=torch.float64).contiguous()
    desc = f"cholesky_solve_ L={L} n={n} k={k} {kind} steps={len(steps)}"
    tally = tallies[("cholesky_solve_", "float64")]
    out = {}

    def call(backend: str) -> None:
        a, b = A.clone(), B.clone()
        info = torch.full((L,), -7, dtype=torch.int32)
        jitter = torch.full((L,), -1.0, dtype=torch.float64)
        gffmerge_ext.cholesky_solve_(a, b, info, jitter, steps, backend=backend)
        out[backend] = (a, b, info, jitter)
    e_ext, e_ref = both(lambda: call("ext"), lambda: call("torch"), tally, desc)
    if e_ext is not None or e_ref is not None:
        tally.failures.append(f"{desc}: ext raised {e_ext!r}, reference raised {e_ref!r}")
        tally.cases += 1
        return
    (ae, be, ie, je), (ar, _, ir, jr) = out["ext"], out["torch"]
    tally.cases += 1
    if not torch.equal(ie, ir):
        tally.failures.append(f"{desc}: info {ie.tolist()} vs reference {ir.tolist()}")
        return
    if not torch.allclose(je, jr, rtol=1e-15, atol=0):
        tally.failures.append(f"{desc}: jitter {je.tolist()} vs reference {jr.tolist()}")
        return
    worst = 0.0
    for l in range(L):
        if int(ie[l]) != 0:
            continue
        a0 = A[l] + float(je[l]) * torch.eye(n, dtype=torch.float64)
        X = be[l]
        if k and n:
            res = (a0 @ X - B[l]).abs().max().item()
            denom = (a0.abs().max() * X.abs().max() * n + B[l].abs().max()).item()
            worst = max(worst, res / denom if denom > 0 else res)
        if n:
            lower = torch.tril(ae[l])
            fac = (lower - torch.tril(ar[l])).abs().max().item() / ar[l].abs().max().item()
            tally.extra_worst = max(tally.extra_worst, fac / max(conds[l], 1.0))
            if not torch.equal(ae[l], lower):
                tally.failures.append(f"{desc}: factor {l} has entries above the diagonal")
    tally.cases -= 1
    tally.add(worst, desc)
    if not worst <= TOLERANCE:
        tally.failures.append(f"{desc}: backward error {worst:.3g}")


CASES = (("gram_", case_gram, 0.4), ("cross_", case_cross, 0.35),
         ("cholesky_solve_", case_cholesky, 0.25))


# ---------------------------------------------------------------- the run
def run(cases: int, seed: int, threads: int, progress: bool) -> tuple[dict, dict]:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tallies: dict = defaultdict(Tally)
    counts: dict = defaultdict(int)
    blas = os.environ.get("GFFMERGE_BLAS")
    for c in range(cases):
        # both dgemm paths (exported BLAS, ATen) and 1..threads OpenMP threads
        if rng.random() < 0.25:
            os.environ["GFFMERGE_BLAS"] = "aten"
        else:
            os.environ.pop("GFFMERGE_BLAS", None)
        torch.set_num_threads(rng.randint(1, threads))
        u, acc = rng.random(), 0.0
        for name, fn, share in CASES:
            acc += share
            if u < acc or name == CASES[-1][0]:
                fn(rng, gen, tallies)
                counts[name] += 1
                break
        if progress and (c + 1) % 1000 == 0:
            print(f"  {c + 1}/{cases} cases", file=sys.stderr, flush=True)
    if blas is None:
        os.environ.pop("GFFMERGE_BLAS", None)
    else:
        os.environ["GFFMERGE_BLAS"] = blas
    torch.set_num_threads(threads)
    return tallies, counts


def table(tallies: dict) -> list[str]:
    lines = ["| op | dtype | cases | raised (both) | worst error | in ε | worst case |",
             "|---|---|---:|---:|---:|---:|---|"]
    for (op, dtype), t in sorted(tallies.items()):
        lines.append(f"| `{op}` | {dtype} | {t.cases} | {t.raised} | {t.worst:.2e} | "
                     f"{t.worst / EPS:.1f} | {t.worst_case} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="most OpenMP threads a case may use (each draws 1..THREADS)")
    p.add_argument("--out", type=Path, default=RESULTS / "fuzz_ops.md")
    p.add_argument("--no-write", action="store_true", help="print only, write no file")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    if not gffmerge_ext.extension_available():
        print(f"fuzz_ops: the compiled extension did not load ({gffmerge_ext.load_error()}); "
              "build it with `make install`", file=sys.stderr)
        return 2
    if args.cases < 1 or args.threads < 1:
        p.error("--cases and --threads must be >= 1")
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) \
        if argv is None else "fuzz_ops.main(" + repr(argv) + ")"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    tallies, counts = run(args.cases, args.seed, args.threads, not args.quiet)
    seconds = time.perf_counter() - t0
    load_after = os.getloadavg()
    failures = [f for t in tallies.values() for f in t.failures]
    solve = tallies.get(("cholesky_solve_", "float64"))
    info = gffmerge_ext.build_info()
    lines = [
        "# Fuzzing the compiled ops against the float64 reference",
        "",
        f"`{command}` — {args.cases} cases (seed {args.seed}: "
        f"{', '.join(f'{counts[n]} {n}' for n, _, _ in CASES)}) in {seconds:.1f} s.",
        "",
        f"- commit {git_commit()}, torch {torch.__version__}, extension built "
        f"{info['build_type']} with {info['compiler']}, BLAS: {info.get('blas', '?')} "
        "(a quarter of the cases through ATen's dgemm, `GFFMERGE_BLAS=aten`)",
        f"- machine: {cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}; each case used 1..{args.threads} OpenMP threads",
        f"- load average before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        "(1 min)",
        "",
        "Error: `gram_`/`cross_` — max |Δext − Δref| over the sum of absolute products "
        "max(|X̃|ᵀ|W||Ỹ|); `cholesky_solve_` — backward error |A X − B| / "
        "(|A| |X| n + |B|) of the compiled solve. ε = 2.2e-16. A case fails above "
        f"{TOLERANCE:g}, when only one backend raises, when the compiled op prints anything "
        "(a BLAS error message), or when info/jitter/symmetry differ.",
        "",
        *table(tallies),
        "",
    ]
    if solve is not None:
        lines += [f"`cholesky_solve_` factor vs the reference's, relative and divided by the "
                  f"condition number: worst {solve.extra_worst:.2e}.", ""]
    lines += [f"**Failures: {len(failures)}**" + (":" if failures else " (none)."), ""]
    lines += [f"- {f}" for f in failures[:20]]
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
