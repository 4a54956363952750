"""gffmerge::row_gram_ (``acc += Z Zᵀ``) and gffmerge::csr_mm_ (``out += Z M``) of CSR rows:
the compiled CPU kernels against independent float64 dense products, on random sparse
matrices with empty rows, empty columns, unsorted and repeated entries; their checks
against the reference's; opcheck."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import gffmerge_ext
from gffmerge_ext.reference import csr_mm_reference_, row_gram_reference_

ERRORS = (RuntimeError, TypeError, ValueError, IndexError)
BACKENDS = [pytest.param("ext", marks=pytest.mark.needs_ext), "torch"]
RTOL = 1e-13


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def random_csr(gen, rows, cols, density, repeats, shuffle, empty_rows, index_dtype,
               value_dtype):
    """CSR arrays of a random ``[rows, cols]`` matrix and its dense float64 form (repeated
    entries summed), built independently of the kernel: entries drawn as (row, col) pairs."""
    n = int(rows * cols * density)
    r = torch.randint(0, max(rows, 1), (n,), generator=gen)
    c = torch.randint(0, max(cols, 1), (n,), generator=gen)
    if rows and empty_rows:
        keep = r % 3 != 1  # every third row empty
        r, c = r[keep], c[keep]
    if not repeats:
        key = torch.unique(r * max(cols, 1) + c)
        r, c = key // max(cols, 1), key % max(cols, 1)
    else:  # every entry of the first half again
        r, c = torch.cat([r, r[: len(r) // 2]]), torch.cat([c, c[: len(c) // 2]])
    v = torch.randn(len(r), generator=gen, dtype=torch.float64)
    if shuffle:  # a row's entries in random order
        perm = torch.randperm(len(r), generator=gen)
        r, c, v = r[perm], c[perm], v[perm]
        order = torch.argsort(r, stable=True)
    else:
        order = torch.argsort(r * max(cols, 1) + c, stable=True)
    r, c, v = r[order], c[order], v[order]
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    if rows:
        crow[1:] = torch.cumsum(torch.bincount(r, minlength=rows), 0)
    vals = v.to(value_dtype)
    dense = torch.zeros(rows, cols, dtype=torch.float64)
    dense.index_put_((r, c), vals.to(torch.float64), accumulate=True)
    return crow.to(index_dtype), c.to(index_dtype), vals, dense


@pytest.mark.needs_ext
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 70), cols=st.integers(1, 90),
       density=st.sampled_from([0.0, 0.02, 0.1, 0.5]), repeats=st.booleans(),
       shuffle=st.booleans(), empty_rows=st.booleans(),
       index_dtype=st.sampled_from([torch.int64, torch.int32]),
       value_dtype=st.sampled_from([torch.float64, torch.float32]), seed=st.integers(0, 99))
# tiny products added into an O(1) accumulator (a relative check of acc - start failed here)
@example(rows=8, cols=7, density=0.02, repeats=False, shuffle=False, empty_rows=False,
         index_dtype=torch.int64, value_dtype=torch.float64, seed=84)
def test_row_gram_matches_dense_float64(rows, cols, density, repeats, shuffle, empty_rows,
                                        index_dtype, value_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    crow, col, vals, dense = random_csr(gen, rows, cols, density, repeats, shuffle,
                                        empty_rows, index_dtype, value_dtype)
    want = dense @ dense.T
    fresh = torch.zeros(rows, rows, dtype=torch.float64)  # the product alone: no cancellation
    gffmerge_ext.row_gram_(fresh, crow, col, vals, cols, backend="ext")
    if rows:
        assert rel(fresh, want) <= RTOL or float(want.abs().max()) == 0.0
    start = torch.randn(rows, rows, generator=gen, dtype=torch.float64)
    start = start + start.T  # symmetric: the sum stays exactly symmetric
    acc = start.clone()
    gffmerge_ext.row_gram_(acc, crow, col, vals, cols, backend="ext")
    assert torch.equal(acc, acc.T)  # the increment is exactly symmetric
    if rows:  # added into the accumulator: rounding relative to the accumulator's size
        scale = max(float(want.abs().max()), float(start.abs().max()), 1.0)
        assert float((acc - start - want).abs().max()) <= 1e-12 * scale
    ref = start.clone()
    row_gram_reference_(ref, crow, col, vals, cols)
    assert torch.allclose(acc, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.needs_ext
@pytest.mark.parametrize("threads", [1, 2])
def test_row_gram_large_and_threads(threads):
    gen = torch.Generator().manual_seed(5)
    crow, col, vals, dense = random_csr(gen, 400, 1500, 0.02, True, True, True, torch.int64,
                                        torch.float64)
    acc = torch.zeros(400, 400, dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gffmerge_ext.row_gram_(acc, crow, col, vals, 1500, backend="ext")
    finally:
        torch.set_num_threads(before)
    assert rel(acc, dense @ dense.T) <= RTOL
    assert torch.equal(acc, acc.T)


@pytest.mark.needs_ext
def test_row_gram_of_a_torch_csr_tensor():
    z = torch.sparse_coo_tensor(torch.tensor([[0, 2, 2, 3], [4, 0, 4, 1]]),
                                torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64),
                                (5, 6)).to_sparse_csr()
    acc = torch.zeros(5, 5, dtype=torch.float64)
    gffmerge_ext.row_gram_(acc, z.crow_indices(), z.col_indices(), z.values(), 6,
                           backend="ext")
    zd = z.to_dense()
    assert torch.equal(acc, zd @ zd.T)  # exact: at most two terms per entry


@pytest.mark.needs_ext
def test_opcheck_and_fake_tensor_mode():
    gen = torch.Generator().manual_seed(3)
    crow, col, vals, _ = random_csr(gen, 12, 9, 0.3, True, True, True, torch.int64,
                                    torch.float64)
    op = torch.ops.gffmerge.row_gram_.default
    torch.library.opcheck(op, (torch.zeros(12, 12, dtype=torch.float64), crow, col, vals, 9), {})
    crow32, col32 = crow.int(), col.int()
    torch.library.opcheck(op, (torch.zeros(12, 12, dtype=torch.float64), crow32, col32,
                               vals.float(), 9), {})
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        acc = torch.zeros(3, 3, dtype=torch.float64)
        assert gffmerge_ext.row_gram_(acc, torch.tensor([0, 1, 1, 2]), torch.tensor([0, 2]),
                                      torch.ones(2, dtype=torch.float64), 3) is None


@pytest.mark.needs_ext
def test_cpu_only_kernel():
    assert "cpu" in gffmerge_ext.row_gram_devices()
    assert "cuda" not in gffmerge_ext.row_gram_devices()


@pytest.mark.cuda  # skipped without a CUDA device (tests/conftest.py)
def test_cuda_tensors_raise_a_clear_error():
    acc = torch.zeros(2, 2, dtype=torch.float64, device="cuda")
    crow = torch.tensor([0, 1, 2], device="cuda")
    with pytest.raises(RuntimeError, match="no cuda kernel for row_gram_"):
        gffmerge_ext.row_gram_(acc, crow, crow[:2], torch.ones(2, dtype=torch.float64,
                                                               device="cuda"), 2, backend="ext")


def _error_cases():
    f64 = dict(dtype=torch.float64)
    crow, col, v = torch.tensor([0, 2, 3]), torch.tensor([0, 3, 1]), torch.ones(3, **f64)
    z = torch.zeros(2, 2, **f64)
    return [
        ((z, crow.float(), col, v, 4), "crow must be int64 or int32"),
        ((z, torch.zeros(0, dtype=torch.long), col, v, 4),
         r"crow must be 1-D with rows \+ 1 >= 1 entries, got shape \[0\]"),
        ((torch.zeros(3, 3, **f64), crow, col, v, 4),
         r"acc must have shape \[2, 2\] \(crow has 2 rows\), got \[3, 3\]"),
        ((torch.zeros(2, 2), crow, col, v, 4), "acc must be float64"),
        ((z, crow, col.double(), v, 4), "col must be int64 or int32"),
        ((z, crow, col[None], v, 4), "col must be 1-D"),
        ((z, crow, col, v.half(), 4), "values must be float32 or float64"),
        ((z, crow, col, v[:2], 4),
         r"values must be 1-D with one entry per column index: expected \[3\], got shape \[2\]"),
        ((z, crow, col, v, -1), "cols must be >= 0, got -1"),
        ((z, torch.tensor([1, 2, 3]), col, v, 4),
         r"crow\[0\] = 1 breaks the CSR row pointers \(crow\[0\] = 0, non-decreasing, "
         r"crow\[2\] = len\(col\) = 3\)"),
        ((z, torch.tensor([0, 2, 1]), col, v, 4), r"crow\[2\] = 1 breaks the CSR row pointers"),
        ((z, torch.tensor([0, 3, 2]), col, v, 4), r"crow\[2\] = 2 breaks the CSR row pointers"),
        ((z, crow, torch.tensor([0, 4, 1]), v, 4),
         r"col\[1\] = 4 is out of range for cols = 4 \(valid: 0 <= col < 4\)"),
        ((z, crow, torch.tensor([0, 1, -2]), v, 4), r"col\[2\] = -2 is out of range"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_error_cases())))
def test_row_gram_errors(backend, case):
    args, message = _error_cases()[case]
    before = args[0].clone()
    with pytest.raises(ERRORS, match=message):
        gffmerge_ext.row_gram_(*args, backend=backend)
    assert torch.equal(args[0], before)  # nothing added before the checks passed


@pytest.mark.needs_ext
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 70), cols=st.integers(1, 5000), k=st.integers(0, 70),
       density=st.sampled_from([0.0, 0.002, 0.02, 0.3]), repeats=st.booleans(),
       shuffle=st.booleans(), empty_rows=st.booleans(),
       index_dtype=st.sampled_from([torch.int64, torch.int32]), strided_m=st.booleans(),
       seed=st.integers(0, 99))
def test_csr_mm_matches_dense_float64(rows, cols, k, density, repeats, shuffle, empty_rows,
                                      index_dtype, strided_m, seed):
    """Column counts on both sides of the strip widths (8 / 16 / 32 columns of M, chosen by
    the number of rows of M) and output widths that are no multiple of any."""
    gen = torch.Generator().manual_seed(seed)
    cols = min(cols, 60) if density > 0.01 else cols
    crow, col, vals, dense = random_csr(gen, rows, cols, density, repeats, shuffle,
                                        empty_rows, index_dtype, torch.float64)
    m = torch.randn(cols, k, generator=gen, dtype=torch.float64)
    if strided_m:  # rows of M contiguous, a row stride wider than k
        m = torch.randn(cols, k + 3, generator=gen, dtype=torch.float64)[:, 1:k + 1]
    start = torch.randn(rows, k, generator=gen, dtype=torch.float64)
    out = start.clone()
    gffmerge_ext.csr_mm_(out, crow, col, vals, m, backend="ext")
    want = start + dense @ m
    scale = max(float((dense.abs() @ m.abs()).max()) if rows and k else 0.0, 1.0)
    if out.numel():
        assert float((out - want).abs().max()) <= 1e-13 * scale
    ref = start.clone()
    csr_mm_reference_(ref, crow, col, vals, m)
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12 * scale)


@pytest.mark.needs_ext
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cols", [1433, 3703, 9000])  # strips of 32, 16, 8 columns
def test_csr_mm_wide_and_threads(threads, cols):
    gen = torch.Generator().manual_seed(cols)
    crow, col, vals, dense = random_csr(gen, 600, cols, 0.01, True, True, True, torch.int64,
                                        torch.float64)
    m = torch.randn(cols, 131, generator=gen, dtype=torch.float64)
    out = torch.zeros(600, 131, dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gffmerge_ext.csr_mm_(out, crow, col, vals, m, backend="ext")
    finally:
        torch.set_num_threads(before)
    assert rel(out, dense @ m) <= 1e-13


@pytest.mark.needs_ext
@pytest.mark.parametrize("cols", [1433, 3703, 9000])  # strips of 32, 16, 8 columns
def test_csr_mm_avx512_strips_equal_avx2_strips_to_the_bit(cols, monkeypatch):
    """The AVX-512 strips fuse the same multiply-adds in the same order as the AVX2 ones
    (``GFFMERGE_BLAS=avx2``); on a CPU without AVX-512 both runs take the AVX2 strips."""
    gen = torch.Generator().manual_seed(cols + 1)
    crow, col, vals, _ = random_csr(gen, 300, cols, 0.01, True, True, True, torch.int64,
                                    torch.float64)
    m = torch.randn(cols, 77, generator=gen, dtype=torch.float64)
    start = torch.randn(300, 77, generator=gen, dtype=torch.float64)
    monkeypatch.delenv("GFFMERGE_BLAS", raising=False)
    wide = start.clone()
    gffmerge_ext.csr_mm_(wide, crow, col, vals, m, backend="ext")
    monkeypatch.setenv("GFFMERGE_BLAS", "avx2")
    narrow = start.clone()
    gffmerge_ext.csr_mm_(narrow, crow, col, vals, m, backend="ext")
    assert torch.equal(wide, narrow)


@pytest.mark.needs_ext
def test_csr_mm_opcheck_and_fake_tensor_mode():
    gen = torch.Generator().manual_seed(4)
    crow, col, vals, _ = random_csr(gen, 12, 9, 0.3, True, True, True, torch.int64,
                                    torch.float64)
    op = torch.ops.gffmerge.csr_mm_.default
    m = torch.randn(9, 5, dtype=torch.float64)
    torch.library.opcheck(op, (torch.zeros(12, 5, dtype=torch.float64), crow, col, vals, m), {})
    torch.library.opcheck(op, (torch.zeros(12, 5, dtype=torch.float64), crow.int(), col.int(),
                               vals, m), {})
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.zeros(3, 4, dtype=torch.float64)
        assert gffmerge_ext.csr_mm_(out, torch.tensor([0, 1, 1, 2]), torch.tensor([0, 2]),
                                    torch.ones(2, dtype=torch.float64),
                                    torch.zeros(3, 4, dtype=torch.float64)) is None


@pytest.mark.cuda  # skipped without a CUDA device (tests/conftest.py)
def test_csr_mm_cuda_tensors_raise_a_clear_error():
    cuda = dict(dtype=torch.float64, device="cuda")
    crow = torch.tensor([0, 1, 2], device="cuda")
    with pytest.raises(RuntimeError, match="no cuda kernel for csr_mm_"):
        gffmerge_ext.csr_mm_(torch.zeros(2, 3, **cuda), crow, crow[:2], torch.ones(2, **cuda),
                             torch.ones(2, 3, **cuda), backend="ext")


def _csr_mm_error_cases():
    f64 = dict(dtype=torch.float64)
    crow, col, v = torch.tensor([0, 2, 3]), torch.tensor([0, 3, 1]), torch.ones(3, **f64)
    o, m = torch.zeros(2, 5, **f64), torch.ones(4, 5, **f64)
    return [
        ((torch.zeros(2, 5), crow, col, v, m), "out must be float64"),
        ((torch.zeros(5, 2, **f64).T, crow, col, v, m),
         r"out must be a contiguous 2-D \[rows, k\] tensor"),
        ((o, crow.float(), col, v, m), "crow must be int64 or int32"),
        ((o, crow[:2], col, v, m),
         r"crow must be 1-D with rows \+ 1 = 3 entries \(rows from out\), got shape \[2\]"),
        ((o, crow, col.double(), v, m), "col must be int64 or int32"),
        ((o, crow, col, v.float(), m), "values must be float64"),
        ((o, crow, col, v[:2], m), r"values must be 1-D with one entry per column index"),
        ((o, crow, col, v, m.float()), "m must be float64"),
        ((o, crow, col, v, torch.ones(4, 6, **f64)),
         r"m must be 2-D \[cols, 5\] \(k from out\), got shape \[4, 6\]"),
        ((o, crow, col, v, torch.ones(5, 4, **f64).T), "m's rows must be contiguous"),
        ((o, torch.tensor([0, 3, 2]), col, v, m), r"crow\[2\] = 2 breaks the CSR row pointers"),
        ((o, crow, torch.tensor([0, 4, 1]), v, m),
         r"col\[1\] = 4 is out of range for cols = 4 \(valid: 0 <= col < 4\)"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_csr_mm_error_cases())))
def test_csr_mm_errors(backend, case):
    args, message = _csr_mm_error_cases()[case]
    before = args[0].clone()
    with pytest.raises(ERRORS, match=message):
        gffmerge_ext.csr_mm_(*args, backend=backend)
    assert torch.equal(args[0], before)
