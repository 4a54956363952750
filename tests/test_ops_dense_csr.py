"""gffmerge::dense_csr_count_ and gffmerge::dense_csr_fill_ (the CSR arrays of a dense matrix):
the compiled CPU kernels against an independent float64 reference (an element-by-element
walk of the matrix), on random sparse and dense matrices with empty rows, all-zero and tiny
shapes, every input dtype and non-contiguous layouts; their checks against the
reference's; opcheck; and :func:`gffmerge.collect.sparse.csr_of_dense` against torch's
``to_sparse``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import gffmerge_ext
from gffmerge.collect.sparse import coo_of_csr, csr_of_dense
from gffmerge_ext.reference import dense_csr_count_reference_, dense_csr_fill_reference_

ERRORS = (RuntimeError, TypeError, ValueError, IndexError)
BACKENDS = [pytest.param("ext", marks=pytest.mark.needs_ext), "torch"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def walk(x):
    """The CSR arrays of ``x`` by a plain walk over its float64 values (entries != 0, NaN
    kept): the independent reference."""
    x64 = x.to(torch.float64).tolist()
    crow, col, val = [0], [], []
    for row in x64:
        for j, v in enumerate(row):
            if v != 0.0:  # NaN != 0
                col.append(j)
                val.append(v)
        crow.append(len(col))
    return (torch.tensor(crow, dtype=torch.int64), torch.tensor(col, dtype=torch.int64),
            torch.tensor(val, dtype=torch.float64))


def random_matrix(gen, rows, cols, density, empty_rows, dtype, layout, specials):
    x = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    x = x * (torch.rand(rows, cols, generator=gen) < density)
    if rows and empty_rows:
        x[1::3] = 0.0
    if specials and x.numel():
        flat = x.view(-1)
        picks = torch.randint(0, x.numel(), (4,), generator=gen)
        flat[picks[0]] = float("nan")
        flat[picks[1]] = -0.0  # not stored
        flat[picks[2]] = float("inf")
        flat[picks[3]] = 1e-30 if dtype == torch.float64 else 0.5
    x = x.to(dtype)
    if layout == "transposed":  # column-major storage
        x = x.T.contiguous().T
    elif layout == "sliced":  # a row stride wider than the row, every other column
        wide = torch.zeros(rows, 2 * cols + 3, dtype=dtype)
        wide[:, 1:2 * cols + 1:2] = x
        x = wide[:, 1:2 * cols + 1:2]
    return x


def convert(x, backend):
    crow = torch.full((x.shape[0] + 1,), -7, dtype=torch.int64)  # poisoned: every entry written
    gffmerge_ext.dense_csr_count_(crow, x, backend=backend)
    nnz = int(crow[-1])
    col = torch.full((nnz,), -7, dtype=torch.int64)
    val = torch.full((nnz,), float("nan"), dtype=torch.float64)
    gffmerge_ext.dense_csr_fill_(col, val, crow, x, backend=backend)
    return crow, col, val


def same(a, b):
    return torch.equal(a, b) or (a.shape == b.shape and bool(
        ((a == b) | (a.isnan() & b.isnan())).all()))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 60), cols=st.integers(0, 90),
       density=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]), empty_rows=st.booleans(),
       dtype=st.sampled_from(DTYPES), layout=st.sampled_from(["contiguous", "transposed",
                                                              "sliced"]),
       specials=st.booleans(), backend=st.sampled_from(BACKENDS[1:] + ["ext"]),
       seed=st.integers(0, 99))
# rows shorter, equal to and longer than the 16-column blocks of the fill
@example(rows=3, cols=15, density=1.0, empty_rows=False, dtype=torch.float32,
         layout="contiguous", specials=False, backend="ext", seed=0)
@example(rows=3, cols=16, density=0.1, empty_rows=False, dtype=torch.float32,
         layout="contiguous", specials=True, backend="ext", seed=1)
@example(rows=300, cols=33, density=0.01, empty_rows=True, dtype=torch.float32,
         layout="contiguous", specials=True, backend="ext", seed=2)
@example(rows=0, cols=5, density=0.5, empty_rows=False, dtype=torch.float64,
         layout="contiguous", specials=False, backend="ext", seed=3)
@example(rows=4, cols=0, density=0.5, empty_rows=False, dtype=torch.float64,
         layout="contiguous", specials=False, backend="ext", seed=4)
@example(rows=5, cols=7, density=0.0, empty_rows=False, dtype=torch.bfloat16,
         layout="sliced", specials=False, backend="ext", seed=5)
def test_dense_csr_matches_an_element_walk(rows, cols, density, empty_rows, dtype, layout,
                                           specials, backend, seed):
    if backend == "ext" and "cpu" not in gffmerge_ext.row_gram_devices():
        pytest.skip("the compiled extension is not built")
    gen = torch.Generator().manual_seed(seed)
    x = random_matrix(gen, rows, cols, density, empty_rows, dtype, layout, specials)
    crow, col, val = convert(x, backend)
    want_crow, want_col, want_val = walk(x)
    assert torch.equal(crow, want_crow)
    assert torch.equal(col, want_col)
    assert same(val, want_val)  # exact: the conversion to float64 is exact


@pytest.mark.needs_ext
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")
@pytest.mark.parametrize("threads", [1, 2])
def test_large_bag_of_words_and_threads(threads):
    """A CiteSeer-sized block (rows split between threads) against torch's ``to_sparse``."""
    gen = torch.Generator().manual_seed(11)
    x = (torch.rand(1200, 3703, generator=gen) < 0.0085).float() * torch.rand(1200, 3703,
                                                                              generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        crow, col, val = convert(x, "ext")
    finally:
        torch.set_num_threads(before)
    want = x.to_sparse_csr()
    assert torch.equal(crow, want.crow_indices())
    assert torch.equal(col, want.col_indices())
    assert torch.equal(val, want.values().double())


@pytest.mark.needs_ext
def test_opcheck_and_fake_tensor_mode():
    gen = torch.Generator().manual_seed(3)
    x = random_matrix(gen, 12, 9, 0.3, True, torch.float32, "contiguous", False)
    crow = torch.zeros(13, dtype=torch.int64)
    torch.library.opcheck(torch.ops.gffmerge.dense_csr_count_.default, (crow, x), {})
    gffmerge_ext.dense_csr_count_(crow, x)
    nnz = int(crow[-1])
    torch.library.opcheck(torch.ops.gffmerge.dense_csr_fill_.default,
                          (torch.zeros(nnz, dtype=torch.int64),
                           torch.zeros(nnz, dtype=torch.float64), crow, x), {})
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        xf = torch.zeros(3, 4)
        c = torch.zeros(4, dtype=torch.int64)
        assert gffmerge_ext.dense_csr_count_(c, xf) is None
        assert gffmerge_ext.dense_csr_fill_(torch.zeros(2, dtype=torch.int64),
                                            torch.zeros(2, dtype=torch.float64), c, xf) is None


@pytest.mark.cuda  # skipped without a CUDA device (tests/conftest.py)
def test_cuda_tensors_raise_a_clear_error():
    x = torch.ones(2, 3, device="cuda")
    with pytest.raises(RuntimeError, match="no cuda kernel for dense_csr_count_"):
        gffmerge_ext.dense_csr_count_(torch.zeros(3, dtype=torch.int64, device="cuda"), x,
                                      backend="ext")
    with pytest.raises(RuntimeError, match="no cuda kernel for dense_csr_fill_"):
        gffmerge_ext.dense_csr_fill_(torch.zeros(6, dtype=torch.int64, device="cuda"),
                                     torch.zeros(6, dtype=torch.float64, device="cuda"),
                                     torch.tensor([0, 3, 6], device="cuda"), x, backend="ext")


def _count_error_cases():
    x, crow = torch.ones(2, 3), torch.zeros(3, dtype=torch.int64)
    return [
        ((crow, torch.ones(6)), r"x must be 2-D \[rows, cols\], got a 1-D tensor of shape"),
        ((crow, torch.ones(2, 3, dtype=torch.int32)),
         "x must be float32, float64, bfloat16 or float16, got"),
        ((crow.int(), x), "crow must be int64, got"),
        ((crow[:2], x),
         r"crow must be a contiguous 1-D tensor with rows \+ 1 = 3 entries \(rows from x\), "
         r"got shape \[2\]"),
        ((torch.zeros(6, dtype=torch.int64)[::2], x), "crow must be a contiguous 1-D tensor"),
    ]


def _fill_error_cases():
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    crow = torch.tensor([0, 2, 3])
    col, val = torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.float64)
    return [
        ((col, val, crow.int(), x), "crow must be int64, got"),
        ((col.int(), val, crow, x), "col must be int64, got"),
        ((torch.zeros(6, dtype=torch.int64)[::2], val, crow, x),
         "col must be a contiguous 1-D tensor"),
        ((col, val.float(), crow, x), "values must be float64, got"),
        ((col, val[:2], crow, x),
         r"values must be a contiguous 1-D tensor with one entry per column index: expected "
         r"\[3\], got shape \[2\]"),
        ((col, val, torch.tensor([1, 2, 3]), x),
         r"crow\[0\] = 1 breaks the CSR row pointers \(crow\[0\] = 0, non-decreasing, "
         r"crow\[2\] = len\(col\) = 3\)"),
        ((col, val, torch.tensor([0, 2, 2]), x), r"crow\[2\] = 2 breaks the CSR row pointers"),
        ((col, val, torch.tensor([0, 1, 3]), x),
         r"row 0 of x has 2 non-zeros but crow gives it 1 \(crow must come from "
         r"dense_csr_count_ of the same x\)"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_count_error_cases())))
def test_count_errors(backend, case):
    args, message = _count_error_cases()[case]
    before = args[0].clone()
    with pytest.raises(ERRORS, match=message):
        gffmerge_ext.dense_csr_count_(*args, backend=backend)
    assert torch.equal(args[0], before)  # nothing written before the checks passed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_fill_error_cases())))
def test_fill_errors(backend, case):
    args, message = _fill_error_cases()[case]
    with pytest.raises(ERRORS, match=message):
        gffmerge_ext.dense_csr_fill_(*args, backend=backend)


def test_reference_equals_the_walk():
    gen = torch.Generator().manual_seed(8)
    x = random_matrix(gen, 20, 30, 0.2, True, torch.float32, "sliced", True)
    crow = torch.empty(21, dtype=torch.int64)
    dense_csr_count_reference_(crow, x)
    col = torch.empty(int(crow[-1]), dtype=torch.int64)
    val = torch.empty(int(crow[-1]), dtype=torch.float64)
    dense_csr_fill_reference_(col, val, crow, x)
    want = walk(x)
    assert torch.equal(crow, want[0]) and torch.equal(col, want[1]) and same(val, want[2])


@pytest.mark.parametrize("compiled", [pytest.param(True, marks=pytest.mark.needs_ext), False])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.6])
def test_csr_of_dense_equals_to_sparse(compiled, density, monkeypatch):
    """The CSR tensor (and its COO view) hold exactly ``to_sparse``'s entries in float64;
    None above ``max_density`` (counted, not converted)."""
    import gffmerge.collect.sparse as sparse_mod

    if not compiled:
        monkeypatch.setattr(sparse_mod, "row_gram_devices", lambda: ())
    gen = torch.Generator().manual_seed(2)
    x = random_matrix(gen, 50, 70, density, True, torch.float32, "contiguous", False)
    z = csr_of_dense(x)
    want = x.to_sparse().double().coalesce()
    assert z.layout == torch.sparse_csr and z.dtype == torch.float64
    assert torch.equal(z.to_dense(), x.double())
    coo = coo_of_csr(z)
    assert coo.is_coalesced()
    assert torch.equal(coo.indices(), want.indices())
    assert torch.equal(coo.values(), want.values())
    limit = 0.1
    got = csr_of_dense(x, limit)
    assert (got is None) == (want._nnz() > limit * x.numel())
