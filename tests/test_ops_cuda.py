"""CUDA kernels of gffmerge_ext (gram_, cross_, cholesky_solve_) on a GPU.

Every test here is marked ``cuda`` and skipped, with that reason, where torch sees no CUDA
device. tests/test_ops.py and tests/test_ops_solve.py also run their device-parametrised
tests on "cuda" when there is one; tests/test_ops_cuda_emulated.py runs the kernels' phases
on the CPU everywhere.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gffmerge_ext
from gffmerge_ext.reference import cross_reference_, gram_reference_

pytestmark = pytest.mark.cuda  # tests/conftest.py skips it without a CUDA device

F64 = torch.float64
ROW_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
EPS = torch.finfo(F64).eps
STEPS = (1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4)


def assert_increment(after, before, expected, scale, count):
    """Within the recursive-summation bound: count * eps * sum of |terms| (at least 1e-12)."""
    tol = max(1e-12, count * EPS) * scale + 4 * EPS * (before.abs() + expected.abs()) + 1e-300
    err = (after - before - expected).abs()
    bad = err > tol
    assert not bad.any(), f"{int(bad.sum())} of {bad.numel()} entries off; worst |err|/tol = " \
        f"{float((err / tol).max()):.3g}"


def rows(gen, n, d, dtype, layout):
    if layout == "contiguous":
        x = torch.randn(n, d, generator=gen)
    elif layout == "transposed":
        x = torch.randn(d, n, generator=gen).T
    elif layout == "strided":
        x = torch.randn(2 * n, 3 * d, generator=gen)[::2, 1::3]
    else:  # expanded
        x = torch.randn(1, d, generator=gen).expand(n, d)
    return x.to(dtype).cuda()


def index_pattern(gen, kind, m, n):
    if kind == "random":
        ix = torch.randint(0, n, (m,), generator=gen)
    elif kind == "sorted":
        ix = torch.randint(0, n, (m,), generator=gen).sort().values
    elif kind == "one_hot_row":
        ix = torch.full((m,), n // 2, dtype=torch.long)
    elif kind == "reversed":
        ix = (n - 1 - torch.arange(m)) % n
    else:  # strided int32
        ix = torch.randint(0, n, (2 * m,), generator=gen)[::2].int()
    return ix.cuda()


def test_extension_has_cuda_kernels():
    assert gffmerge_ext.extension_available(), gffmerge_ext.load_error()
    info = gffmerge_ext.build_info()
    assert info["cuda"], "a CUDA device is present but gffmerge_ext was built without CUDA"
    assert "ext" in gffmerge_ext.available_backends("cuda")


# ---- gram_ / cross_ against the float64 reference -------------------------------------------

DIMS = [1, 2, 31, 32, 33, 63, 64, 65, 127, 129, 200, 513]


@st.composite
def moment_cases(draw):
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "n": draw(st.sampled_from([1, 7, 511, 513, 4096, 70_000])),
        "d": draw(st.sampled_from(DIMS)),
        "dy": draw(st.sampled_from(DIMS)),
        "dtype": draw(st.sampled_from(ROW_DTYPES)),
        "dtype_y": draw(st.sampled_from(ROW_DTYPES)),
        "layout": draw(st.sampled_from(["contiguous", "transposed", "strided", "expanded"])),
        "index": draw(st.sampled_from([None, "random", "sorted", "one_hot_row", "reversed",
                                       "strided_int32"])),
        "weight": draw(st.sampled_from([None, torch.float32, torch.float64])),
        "augment": draw(st.booleans()),
    }


@settings(max_examples=80, deadline=None)
@given(case=moment_cases())
def test_gram_and_cross_match_reference(case):
    gen = torch.Generator().manual_seed(case["seed"])
    n, d, aug = case["n"], case["d"], case["augment"]
    if n * max(d, case["dy"]) > 20_000_000:
        n = 20_000_000 // max(d, case["dy"])
    x = rows(gen, n, d, case["dtype"], case["layout"])
    y = rows(gen, n, case["dy"], case["dtype_y"], "contiguous")
    ix = None if case["index"] is None else index_pattern(gen, case["index"], n + 17, n)
    m = n if ix is None else ix.shape[0]
    w = None if case["weight"] is None else torch.randn(m, generator=gen).to(case["weight"]).cuda()
    iy = None if ix is None else torch.randint(0, n, (m,), generator=gen).cuda()

    D = d + aug
    before = 1e3 * torch.randn(D, D, generator=gen, dtype=F64).cuda()
    acc = before.clone()
    gffmerge_ext.gram_(acc, x, ix, w, aug, backend="ext")
    expected = torch.zeros(D, D, dtype=F64, device="cuda")
    gram_reference_(expected, x, ix, w, aug)
    scale = torch.zeros_like(expected)
    gram_reference_(scale, x.abs(), ix, None if w is None else w.abs(), aug)
    assert_increment(acc, before, expected, scale, m)

    shape = (D, case["dy"])
    before = 1e3 * torch.randn(*shape, generator=gen, dtype=F64).cuda()
    acc = before.clone()
    gffmerge_ext.cross_(acc, x, y, ix, iy, w, aug, backend="ext")
    expected = torch.zeros(shape, dtype=F64, device="cuda")
    cross_reference_(expected, x, y, ix, iy, w, aug)
    scale = torch.zeros_like(expected)
    cross_reference_(scale, x.abs(), y.abs(), ix, iy, None if w is None else w.abs(), aug)
    assert_increment(acc, before, expected, scale, m)


@pytest.mark.parametrize("d", [5, 64, 300])
def test_gram_symmetric_poison_stays_exactly_symmetric(d):
    gen = torch.Generator().manual_seed(d)
    x = torch.randn(20_000, d, generator=gen).half().cuda()
    acc = torch.randn(d + 1, d + 1, generator=gen, dtype=F64)
    acc = (acc + acc.T).cuda()
    gffmerge_ext.gram_(acc, x, weight=torch.randn(20_000, generator=gen).cuda(), augment=True)
    assert torch.equal(acc, acc.T)


# ---- determinism, streams, devices ----------------------------------------------------------


def test_two_runs_are_bitwise_equal():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(300_000, 96, generator=gen).bfloat16().cuda()
    y = torch.randn(300_000, 40, generator=gen).cuda()
    ix = torch.randint(0, 300_000, (400_000,), generator=gen).cuda()
    w = torch.rand(400_000, generator=gen).cuda()
    A0 = torch.randn(8, 120, 200, generator=gen, dtype=F64)
    A0 = (A0 @ A0.transpose(1, 2)).cuda()
    A0[3] = 0.0
    B0 = torch.randn(8, 120, 7, generator=gen, dtype=F64).cuda()
    results = []
    for _ in range(2):
        g = torch.zeros(97, 97, dtype=F64, device="cuda")
        gffmerge_ext.gram_(g, x, ix, w, True)
        c = torch.zeros(97, 40, dtype=F64, device="cuda")
        gffmerge_ext.cross_(c, x, y, ix, ix, w, True)
        A, B = A0.clone(), B0.clone()
        info = torch.empty(8, dtype=torch.int32, device="cuda")
        jit = torch.empty(8, dtype=F64, device="cuda")
        gffmerge_ext.cholesky_solve_(A, B, info, jit, STEPS)
        results.append((g, c, A, B, info, jit))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_runs_on_the_current_stream():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(200_000, 64, generator=gen).cuda()
    expected = torch.zeros(64, 64, dtype=F64, device="cuda")
    gffmerge_ext.gram_(expected, x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        acc = torch.zeros(64, 64, dtype=F64, device="cuda")
        for _ in range(3):
            gffmerge_ext.gram_(acc, x)
        A = (3 * torch.eye(50, dtype=F64, device="cuda")).expand(4, 50, 50).contiguous()
        B = torch.ones(4, 50, 2, dtype=F64, device="cuda")
        info = torch.empty(4, dtype=torch.int32, device="cuda")
        jit = torch.empty(4, dtype=F64, device="cuda")
        gffmerge_ext.cholesky_solve_(A, B, info, jit, STEPS)
    side.synchronize()
    torch.testing.assert_close(acc, 3 * expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(B, torch.full_like(B, 1 / 3))


def test_device_mismatch():
    acc = torch.zeros(4, 4, dtype=F64, device="cuda")
    with pytest.raises(RuntimeError, match="x is on cpu but acc is on cuda:0; all tensors must "
                                           "be on the same device"):
        gffmerge_ext.gram_(acc, torch.randn(10, 4), backend="ext")
    with pytest.raises(RuntimeError, match="index is on cpu but acc is on cuda:0"):
        gffmerge_ext.gram_(acc, torch.randn(10, 4, device="cuda"), torch.arange(3),
                           backend="ext")
    A = torch.eye(3, dtype=F64, device="cuda")[None]
    with pytest.raises(RuntimeError, match="B is on cpu but A is on cuda:0"):
        gffmerge_ext.cholesky_solve_(A, torch.zeros(1, 3, 1, dtype=F64),
                                     torch.zeros(1, dtype=torch.int32, device="cuda"),
                                     torch.zeros(1, dtype=F64, device="cuda"), backend="ext")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    x = torch.randn(5000, 33, device="cuda:1")
    acc = torch.zeros(34, 34, dtype=F64, device="cuda:1")
    gffmerge_ext.gram_(acc, x, augment=True, backend="ext")
    expected = torch.zeros_like(acc)
    gram_reference_(expected, x, None, None, True)
    torch.testing.assert_close(acc, expected, rtol=1e-12, atol=1e-9)


def test_index_out_of_range_leaves_acc_alone():
    x = torch.randn(10, 4, device="cuda")
    acc = torch.full((4, 4), 3.0, dtype=F64, device="cuda")
    bad = torch.tensor([0, 3, 10, 2, -1], device="cuda")
    with pytest.raises(RuntimeError, match=r"index\[2\] = 10 is out of range for x with 10 rows"):
        gffmerge_ext.gram_(acc, x, bad, backend="ext")
    with pytest.raises(RuntimeError, match=r"index_y\[0\] = -4 is out of range for y"):
        gffmerge_ext.cross_(acc, x, x, None, torch.full((10,), -4, device="cuda").int(),
                            backend="ext")
    assert torch.equal(acc, torch.full((4, 4), 3.0, dtype=F64, device="cuda"))


# ---- cholesky_solve_ against the CPU op ----------------------------------------------------


# n <= 1024: failed systems are retried by the rescue kernel; above: by batched cuSOLVER calls.
@pytest.mark.parametrize(("L", "n", "k"), [(1, 1, 1), (7, 33, 5), (40, 128, 64), (3, 700, 9),
                                           (3, 1024, 2), (4, 1100, 3), (2, 2000, 1)])
def test_cholesky_matches_cpu(L, n, k):
    gen = torch.Generator().manual_seed(L * n)
    g = torch.randn(L, n + 5, n, generator=gen, dtype=F64)
    A0 = g.transpose(1, 2) @ g
    if L > 2:
        A0[1] = 0.0
        A0[1, :2, :2] = torch.tensor([[1.0, 1.0], [1.0, 1.0 - 1e-13]])
        A0[1].diagonal()[2:] = 1.0
        A0[2] = -torch.eye(n, dtype=F64)
    B0 = torch.randn(L, n, k, generator=gen, dtype=F64)
    out = {}
    for device in ("cpu", "cuda"):
        A, B = A0.clone().to(device), B0.clone().to(device)
        info = torch.empty(L, dtype=torch.int32, device=device)
        jit = torch.empty(L, dtype=F64, device=device)
        gffmerge_ext.cholesky_solve_(A, B, info, jit, STEPS, backend="ext")
        out[device] = [t.cpu() for t in (A, B, info, jit)]
    (A_c, B_c, i_c, j_c), (A_g, B_g, i_g, j_g) = out["cpu"], out["cuda"]
    assert i_c.tolist() == i_g.tolist()
    torch.testing.assert_close(j_g, j_c, rtol=1e-13, atol=0)
    ok = i_c == 0
    assert not A_g.triu(1)[ok].any()
    torch.testing.assert_close(A_g[ok], A_c[ok], rtol=1e-9, atol=1e-9 * math.sqrt(n))
    torch.testing.assert_close(B_g[ok], B_c[ok], rtol=1e-7, atol=1e-8)
    assert torch.equal(B_g[~ok], B0[~ok])


def test_opcheck_cuda():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(300, 6, generator=gen).cuda()
    ix = torch.randint(0, 300, (500,), generator=gen).cuda()
    w = torch.randn(500, generator=gen).cuda()
    z = lambda *s: torch.zeros(*s, dtype=F64, device="cuda")
    torch.library.opcheck(torch.ops.gffmerge.gram_.default, (z(7, 7), x, ix, w, True))
    torch.library.opcheck(torch.ops.gffmerge.cross_.default, (z(7, 6), x, x.half(), ix, ix, w,
                                                              True))
    A = torch.eye(5, dtype=F64, device="cuda").expand(3, 5, 5).contiguous()
    torch.library.opcheck(torch.ops.gffmerge.cholesky_solve_.default,
                          (A, z(3, 5, 2), torch.zeros(3, dtype=torch.int32, device="cuda"),
                           z(3), list(STEPS)))
