"""gffmerge_ext.cholesky_solve_: compiled op against the pure-torch reference, on every device.

Like tests/test_ops.py, these need the built extension; GFFMERGE_ALLOW_NO_EXT=1 skips the
comparisons that need it.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gffmerge_ext
from gffmerge_ext.reference import cholesky_solve_reference_

STEPS = (1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4)
F64 = torch.float64


def spd(gen, L, n, rank=None, scale=1.0):
    g = torch.randn(L, rank or n + 3, n, generator=gen, dtype=F64)
    return scale * g.transpose(1, 2) @ g


def nearly_singular(n, c=1.0):
    """c [[1, 1], [1, 1 - 1e-13]] (+) c I: fails plainly, needs jitter > 5e-14 c."""
    a = c * torch.eye(n, dtype=F64)
    a[:2, :2] = c * torch.tensor([[1.0, 1.0], [1.0, 1.0 - 1e-13]], dtype=F64)
    return a


def outputs(L, device):
    info = torch.full((L,), -7, dtype=torch.int32, device=device)
    jitter = torch.full((L,), math.nan, dtype=F64, device=device)
    return info, jitter


def run(A, B, steps=STEPS, backend="ext"):
    A, B = A.clone(), B.clone()
    info, jitter = outputs(A.shape[0], A.device)
    gffmerge_ext.cholesky_solve_(A, B, info, jitter, steps, backend=backend)
    return A, B, info, jitter


def assert_solved(A0, X, B0, jitter, rtol=1e-9):
    """(A0 + jitter I) X == B0 up to a backward-stable residual."""
    n = A0.shape[-1]
    if X.numel() == 0:
        return
    eye = torch.eye(n, dtype=F64, device=A0.device)
    M = A0 + jitter[:, None, None] * eye
    resid = (M @ X - B0).abs().amax(dim=(1, 2))
    size = (M.abs() @ X.abs()).amax(dim=(1, 2)) + B0.abs().amax(dim=(1, 2))
    assert (resid <= rtol * n * size).all(), (resid, size)


# ---- against the reference ------------------------------------------------------------------


@st.composite
def batches(draw):
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "L": draw(st.integers(1, 6)),
        "n": draw(st.one_of(st.integers(1, 12), st.integers(1, 130))),
        "k": draw(st.integers(0, 9)),
        "scale": draw(st.sampled_from([1e-6, 1.0, 1e4])),
    }


@pytest.mark.needs_ext
@settings(max_examples=60, deadline=None)
@given(case=batches())
def test_matches_reference(device, case):
    gen = torch.Generator().manual_seed(case["seed"])
    L, n, k = case["L"], case["n"], case["k"]
    A0 = spd(gen, L, n, scale=case["scale"]).to(device)
    B0 = torch.randn(L, n, k, generator=gen, dtype=F64).to(device)
    A, X, info, jitter = run(A0, B0)
    Ar, Xr, info_r, jitter_r = run(A0, B0, backend="torch")
    assert info.tolist() == info_r.tolist() == [0] * L
    assert jitter.tolist() == jitter_r.tolist() == [0.0] * L
    torch.testing.assert_close(A, Ar, rtol=1e-10, atol=1e-12 * case["scale"] ** 0.5)
    assert not A.triu(1).any(), "the factor must be lower triangular"
    torch.testing.assert_close(X, Xr, rtol=1e-7, atol=1e-9 / case["scale"])
    assert_solved(A0, X, B0, jitter)


@pytest.mark.needs_ext
def test_reads_only_the_lower_triangle(device):
    gen = torch.Generator().manual_seed(1)
    A0 = spd(gen, 3, 9)
    B0 = torch.randn(3, 9, 2, generator=gen, dtype=F64)
    junk = A0.clone()
    upper = torch.ones(9, 9, dtype=torch.bool).triu(1)
    junk[:, upper] = math.nan
    A, X, info, _ = run(junk.to(device), B0.to(device))
    assert info.tolist() == [0, 0, 0]
    assert not A.isnan().any()
    assert_solved(A0.to(device), X, B0.to(device), torch.zeros(3, dtype=F64, device=device))


# ---- jitter and failures --------------------------------------------------------------------


@pytest.mark.needs_ext
@pytest.mark.parametrize("backend", ["ext", "torch"])
@pytest.mark.parametrize("c", [1e-3, 1.0, 1e3])
def test_jitter_path(device, backend, c):
    gen = torch.Generator().manual_seed(2)
    good = spd(gen, 1, 6)[0]
    A0 = torch.stack([good, nearly_singular(6, c), good]).to(device)
    B0 = torch.randn(3, 6, 4, generator=gen, dtype=F64).to(device)
    A, X, info, jitter = run(A0, B0, backend=backend)
    scale = A0[1].diagonal().abs().mean().item()
    assert info.tolist() == [0, 0, 0]
    assert jitter[0] == jitter[2] == 0.0
    # 1e-14 c is too little, 1e-12 c is enough
    assert jitter[1].item() == pytest.approx(1e-12 * scale, rel=1e-12)
    assert_solved(A0, X, B0, jitter)
    eye = torch.eye(6, dtype=F64, device=device)
    torch.testing.assert_close(A[1] @ A[1].T, A0[1] + jitter[1] * eye, rtol=1e-12, atol=1e-12 * c)


@pytest.mark.needs_ext
@pytest.mark.parametrize("backend", ["ext", "torch"])
def test_failure_reports_info_and_keeps_rhs(device, backend):
    gen = torch.Generator().manual_seed(3)
    good = spd(gen, 1, 5)[0]
    indefinite = torch.diag(torch.tensor([1.0, 2.0, -3.0, 4.0, 5.0], dtype=F64))
    A0 = torch.stack([indefinite, good, nearly_singular(5)]).to(device)
    B0 = torch.randn(3, 5, 3, generator=gen, dtype=F64).to(device)

    A, X, info, jitter = run(A0, B0, steps=(), backend=backend)
    assert info.tolist() == [3, 0, 2]  # order of the first non-positive leading minor
    assert jitter.tolist() == [0.0, 0.0, 0.0]
    assert torch.equal(X[0], B0[0]) and torch.equal(X[2], B0[2])
    assert_solved(A0[1:2], X[1:2], B0[1:2], jitter[1:2])

    A, X, info, jitter = run(A0, B0, backend=backend)
    assert info.tolist() == [3, 0, 0]
    scale = A0[0].diagonal().abs().mean().item()
    assert jitter[0].item() == pytest.approx(STEPS[-1] * scale, rel=1e-12)  # the last attempt
    assert torch.equal(X[0], B0[0])


@pytest.mark.needs_ext
@pytest.mark.parametrize("backend", ["ext", "torch"])
def test_zero_diagonal_scale_is_one(device, backend):
    """A zero matrix: mean |diag| is 0, so the steps are absolute (scale 1)."""
    A0 = torch.zeros(1, 3, 3, dtype=F64, device=device)
    B0 = torch.ones(1, 3, 1, dtype=F64, device=device)
    _, X, info, jitter = run(A0, B0, backend=backend)
    assert info.tolist() == [0] and jitter.tolist() == [1e-14]
    torch.testing.assert_close(X, B0 / 1e-14)


@pytest.mark.needs_ext
def test_empty_sizes(device):
    for L, n, k in [(0, 3, 2), (2, 0, 3), (2, 3, 0)]:
        gen = torch.Generator().manual_seed(L * 100 + n * 10 + k)
        A0 = spd(gen, L, n).to(device) if n else torch.zeros(L, 0, 0, dtype=F64, device=device)
        B0 = torch.randn(L, n, k, generator=gen, dtype=F64).to(device)
        for backend in ("ext", "torch"):
            A, X, info, jitter = run(A0, B0, backend=backend)
            assert info.tolist() == [0] * L and jitter.tolist() == [0.0] * L
            assert X.shape == B0.shape


@pytest.mark.needs_ext
def test_aten_lapack_fallback_agrees(monkeypatch):
    """GFFMERGE_BLAS=aten routes potrf/potrs through ATen instead of the exported LAPACK."""
    gen = torch.Generator().manual_seed(4)
    A0 = torch.cat([spd(gen, 3, 20), nearly_singular(20)[None]])
    B0 = torch.randn(4, 20, 5, generator=gen, dtype=F64)
    fast = run(A0, B0)
    monkeypatch.setenv("GFFMERGE_BLAS", "aten")
    slow = run(A0, B0)
    assert fast[2].tolist() == slow[2].tolist() == [0, 0, 0, 0]
    assert fast[3].tolist() == slow[3].tolist()
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-12, atol=1e-12)


# ---- torch.library integration --------------------------------------------------------------


def _opcheck_samples(device):
    gen = torch.Generator().manual_seed(5)
    A = spd(gen, 3, 6).to(device)
    A[1] = nearly_singular(6).to(device)
    B = torch.randn(3, 6, 2, generator=gen, dtype=F64).to(device)
    i32 = torch.zeros(3, dtype=torch.int32, device=device)
    f64 = torch.zeros(3, dtype=F64, device=device)
    return [
        (A, B, i32, f64, list(STEPS)),
        (A, B, i32, f64, []),
        (A[:1], B[:1, :, :0], i32[:1], f64[:1], [1e-8]),
    ]


@pytest.mark.needs_ext
def test_opcheck(device):
    for args in _opcheck_samples(device):
        args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(torch.ops.gffmerge.cholesky_solve_.default, args)


@pytest.mark.needs_ext
def test_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        A = torch.zeros(2, 4, 4, dtype=F64)
        B = torch.zeros(2, 4, 3, dtype=F64)
        info, jitter = torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=F64)
        assert gffmerge_ext.cholesky_solve_(A, B, info, jitter, STEPS) is None


# ---- errors -----------------------------------------------------------------------------------


def _error_cases():
    A, B = torch.eye(3, dtype=F64).expand(2, 3, 3).contiguous(), torch.zeros(2, 3, 1, dtype=F64)
    i32, f64 = torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=F64)
    return [
        ((A.float(), B, i32, f64), {}, "A must be float64, got"),
        ((A[:, :2], B, i32, f64), {}, r"A must be \[L, n, n\] .*got shape \[2, 2, 3\]"),
        ((A[0], B, i32, f64), {}, r"A must be \[L, n, n\]"),
        ((torch.eye(3, dtype=F64).expand(2, 3, 3), B, i32, f64), {}, "A must be contiguous"),
        ((A, B.float(), i32, f64), {}, "B must be float64, got"),
        ((A, torch.zeros(2, 4, 1, dtype=F64), i32, f64), {},
         r"B must be \[2, 3, k\] \(L and n from A\), got shape \[2, 4, 1\]"),
        ((A, torch.zeros(2, 3, 2, dtype=F64)[:, :, :1], i32, f64), {},
         "B must be contiguous"),
        ((A, B, i32.long(), f64), {}, "info must be int32, got"),
        ((A, B, i32[:1], f64), {}, r"info must be a contiguous \[2\] tensor, got shape \[1\]"),
        ((A, B, i32, f64.float()), {}, "jitter must be float64, got"),
        ((A, B, i32, torch.zeros(3, dtype=F64)), {}, r"jitter must be a contiguous \[2\] tensor"),
        ((A, B, i32, f64, [1e-3, -1.0]), {}, r"jitter_steps\[1\] must be finite and > 0, got -1"),
        ((A, B, i32, f64, [math.inf]), {}, r"jitter_steps\[0\] must be finite and > 0"),
        ((A, B, i32, f64, [1e-3] * 33), {}, "at most 32 jitter steps, got 33"),
    ]


CASES = _error_cases()


@pytest.mark.parametrize("backend", [pytest.param("ext", marks=pytest.mark.needs_ext), "torch"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_errors(backend, case):
    args, kwargs, message = CASES[case]
    with pytest.raises((RuntimeError, TypeError, ValueError), match=message):
        gffmerge_ext.cholesky_solve_(*args, **kwargs, backend=backend)


def test_reference_device_mismatch():
    A = torch.eye(2, dtype=F64, device="meta")[None]
    with pytest.raises(ValueError, match="B is on cpu but A is on meta"):
        cholesky_solve_reference_(A, torch.zeros(1, 2, 1, dtype=F64),
                                  torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=F64))
