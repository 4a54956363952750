"""gffmerge_ext ops: compiled kernels against the pure-torch float64 reference.

These run against the installed extension and fail when it is not built; set
GFFMERGE_ALLOW_NO_EXT=1 to skip the comparisons that need it.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gffmerge_ext
from gffmerge_ext import wrappers
from gffmerge_ext.reference import cross_reference_, gram_reference_

ROW_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "transposed", "strided", "expanded_rows", "expanded_cols"]
EPS = float(np.finfo(np.float64).eps)
RTOL = 1e-12
ERRORS = (RuntimeError, TypeError, ValueError, IndexError)


# ---- input factories ---------------------------------------------------------------------


def make_rows(gen, n, d, dtype, layout, device="cpu"):
    """[n, d] rows of ``dtype`` with the given memory layout (values exact in ``dtype``)."""
    if layout == "contiguous":
        x = torch.randn(n, d, generator=gen).to(dtype)
    elif layout == "transposed":
        x = torch.randn(d, n, generator=gen).to(dtype).T
    elif layout == "strided":
        x = torch.randn(2 * n, 3 * d, generator=gen).to(dtype)[::2, 1::3]
    elif layout == "expanded_rows":
        x = torch.randn(1, d, generator=gen).to(dtype).expand(n, d)
    else:
        x = torch.randn(n, 1, generator=gen).to(dtype).expand(n, d)
    return x.to(device) if device != "cpu" else x


def make_index(gen, n, m, kind, device="cpu"):
    if kind is None:
        return None
    dtype, strided = kind
    hi = max(n, 1)
    if strided:
        ix = torch.randint(0, hi, (2 * m,), generator=gen)[::2]
    else:
        ix = torch.randint(0, hi, (m,), generator=gen)
    return ix.to(dtype=dtype, device=device)


def make_weight(gen, m, kind, device="cpu"):
    if kind is None:
        return None
    sign, dtype = kind
    w = torch.randn(m, generator=gen) if sign == "signed" else torch.rand(m, generator=gen) + 0.1
    return w.to(dtype=dtype, device=device)


def poison(gen, shape, symmetric, device="cpu"):
    p = 1e3 * torch.randn(*shape, generator=gen, dtype=torch.float64)
    if symmetric:
        p = p + p.T
    return p.to(device)


def assert_increment(after, before, expected, scale):
    """``after - before == expected`` up to float64 summation-order error."""
    diff = after - before
    tol = RTOL * scale + 4 * EPS * (before.abs() + expected.abs()) + 1e-300
    err = (diff - expected).abs()
    bad = err > tol
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.numel()} entries off; worst at "
        f"{np.unravel_index(int((err / tol).argmax()), tuple(err.shape))}: "
        f"|err|/tol = {float((err / tol).max()):.3g}"
    )


def gram_scale(x, index, weight, augment):
    """Sum of |terms| per entry: the float64 rounding error is bounded relative to this."""
    D = x.shape[1] + augment
    s = torch.zeros(D, D, dtype=torch.float64, device=x.device)
    gram_reference_(s, x.abs(), index, None if weight is None else weight.abs(), augment)
    return s


# ---- the extension exists ----------------------------------------------------------------


@pytest.mark.needs_ext
def test_extension_is_built():
    assert gffmerge_ext.extension_available(), gffmerge_ext.load_error()
    assert gffmerge_ext.load_error() is None
    assert "ext" in gffmerge_ext.available_backends("cpu")


@pytest.mark.needs_ext
def test_build_info_keys():
    info = gffmerge_ext.build_info()
    expected = {
        "compiler",
        "cxx_standard",
        "openmp",
        "openmp_version",
        "cuda",
        "cuda_archs",
        "torch_version",
        "build_type",
        "blas",
    }
    assert expected <= set(info), expected - set(info)
    assert info["cxx_standard"] >= 202002
    assert info["openmp"] is True and info["openmp_version"] >= 201511
    assert isinstance(info["cuda"], bool) and isinstance(info["cuda_archs"], list)
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]


# ---- reference against numpy -------------------------------------------------------------


def test_reference_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 7, generator=gen)
    y = torch.randn(25, 5, generator=gen, dtype=torch.float64)
    ix = torch.randint(0, 40, (60,), generator=gen)
    iy = torch.randint(0, 25, (60,), generator=gen, dtype=torch.int64).to(torch.int32)
    w = torch.randn(60, generator=gen)

    X = x.numpy().astype(np.float64)[ix.numpy()]
    Xa = np.concatenate([X, np.ones((60, 1))], axis=1)
    Y = y.numpy()[iy.numpy()]
    wn = w.numpy().astype(np.float64)

    g = torch.zeros(8, 8, dtype=torch.float64)
    gram_reference_(g, x, ix, w, augment=True)
    np.testing.assert_allclose(g.numpy(), (Xa * wn[:, None]).T @ Xa, rtol=1e-13, atol=1e-12)

    c = torch.zeros(8, 5, dtype=torch.float64)
    cross_reference_(c, x, y, ix, iy, w, augment_x=True)
    np.testing.assert_allclose(c.numpy(), (Xa * wn[:, None]).T @ Y, rtol=1e-13, atol=1e-12)

    g0 = torch.zeros(7, 7, dtype=torch.float64)
    gram_reference_(g0, x)
    X0 = x.numpy().astype(np.float64)
    np.testing.assert_allclose(g0.numpy(), X0.T @ X0, rtol=1e-13, atol=1e-12)


# ---- compiled op vs reference (hypothesis) -------------------------------------------------


@st.composite
def gram_cases(draw):
    n = draw(st.integers(0, 1200))
    has_index = n > 0 and draw(st.booleans())
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "n": n,
        "d": draw(st.one_of(st.integers(1, 40), st.integers(1, 300))),
        "dtype": draw(st.sampled_from(ROW_DTYPES)),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "index": (
            (draw(st.sampled_from([torch.int64, torch.int32])), draw(st.booleans()))
            if has_index
            else None
        ),
        "m": draw(st.integers(0, 1500)) if has_index else n,
        "weight": draw(
            st.one_of(
                st.none(),
                st.tuples(
                    st.sampled_from(["positive", "signed"]),
                    st.sampled_from([torch.float32, torch.float64]),
                ),
            )
        ),
        "augment": draw(st.booleans()),
    }


@pytest.mark.needs_ext
@settings(max_examples=200, deadline=None)
@given(case=gram_cases())
def test_gram_matches_reference(device, case):
    check_gram_case(device, case)


def check_gram_case(device, case):
    """gram_ on a drawn case (under whatever GFFMERGE_GRAM_ROUTE is set) against the
    float64 reference, on a poisoned symmetric accumulator."""
    gen = torch.Generator().manual_seed(case["seed"])
    n, d, m, aug = case["n"], case["d"], case["m"], case["augment"]
    x = make_rows(gen, n, d, case["dtype"], case["layout"], device)
    index = make_index(gen, n, m, case["index"], device)
    weight = make_weight(gen, m, case["weight"], device)
    D = d + aug

    before = poison(gen, (D, D), symmetric=True, device=device)
    acc = before.clone()
    wrappers.gram_(acc, x, index, weight, aug, backend="ext")
    expected = torch.zeros(D, D, dtype=torch.float64, device=device)
    gram_reference_(expected, x, index, weight, aug)

    assert torch.equal(acc, acc.T), "gram_ result is not exactly symmetric"
    assert_increment(acc, before, expected, gram_scale(x, index, weight, aug))


@st.composite
def cross_cases(draw):
    nx = draw(st.integers(0, 900))
    with_ix = nx > 0 and draw(st.booleans())
    m = draw(st.integers(0, 1100)) if with_ix else nx
    ny = draw(st.integers(1, 900)) if m > 0 else 0
    with_iy = draw(st.booleans()) if ny > 0 else False
    if not with_iy:
        ny = m
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "nx": nx,
        "ny": ny,
        "m": m,
        "dx": draw(st.integers(1, 200)),
        "dy": draw(st.integers(1, 200)),
        "dtype_x": draw(st.sampled_from(ROW_DTYPES)),
        "dtype_y": draw(st.sampled_from(ROW_DTYPES)),
        "layout_x": draw(st.sampled_from(LAYOUTS)),
        "layout_y": draw(st.sampled_from(LAYOUTS)),
        "index_x": (draw(st.sampled_from([torch.int64, torch.int32])), False) if with_ix else None,
        "index_y": (draw(st.sampled_from([torch.int64, torch.int32])), True) if with_iy else None,
        "weight": draw(
            st.sampled_from([None, ("signed", torch.float32), ("positive", torch.float64)])
        ),
        "augment_x": draw(st.booleans()),
    }


@pytest.mark.needs_ext
@settings(max_examples=120, deadline=None)
@given(case=cross_cases())
def test_cross_matches_reference(device, case):
    check_cross_case(device, case)


def check_cross_case(device, case):
    """cross_ on a drawn case against the float64 reference, on a poisoned accumulator."""
    gen = torch.Generator().manual_seed(case["seed"])
    m, aug = case["m"], case["augment_x"]
    x = make_rows(gen, case["nx"], case["dx"], case["dtype_x"], case["layout_x"], device)
    y = make_rows(gen, case["ny"], case["dy"], case["dtype_y"], case["layout_y"], device)
    ix = make_index(gen, case["nx"], m, case["index_x"], device)
    iy = make_index(gen, case["ny"], m, case["index_y"], device)
    weight = make_weight(gen, m, case["weight"], device)
    shape = (case["dx"] + aug, case["dy"])

    before = poison(gen, shape, symmetric=False, device=device)
    acc = before.clone()
    wrappers.cross_(acc, x, y, ix, iy, weight, aug, backend="ext")
    expected = torch.zeros(shape, dtype=torch.float64, device=device)
    cross_reference_(expected, x, y, ix, iy, weight, aug)
    scale = torch.zeros(shape, dtype=torch.float64, device=device)
    cross_reference_(scale, x.abs(), y.abs(), ix, iy, None if weight is None else weight.abs(), aug)
    assert_increment(acc, before, expected, scale)


# ---- the two routes of gram_ / cross_ (GFFMERGE_GRAM_ROUTE) ---------------------------------

ROUTES = st.one_of(st.sampled_from(["kernel", "mm"]),
                   st.integers(1, 400).map(lambda rows: f"mm:{rows}"))


@contextlib.contextmanager
def _route(value):
    """GFFMERGE_GRAM_ROUTE set inside a with-block (hypothesis forbids monkeypatch here)."""
    old = os.environ.get("GFFMERGE_GRAM_ROUTE")
    os.environ["GFFMERGE_GRAM_ROUTE"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GFFMERGE_GRAM_ROUTE", None)
        else:
            os.environ["GFFMERGE_GRAM_ROUTE"] = old


@pytest.mark.needs_ext
@settings(max_examples=60, deadline=None)
@given(case=gram_cases(), route=ROUTES)
def test_gram_routes_match_reference(device, case, route):
    """The mm route (chunked float64 products; the CUDA default) and the tiled kernels (the
    CPU default) agree with the reference on every input form, chunk boundaries included."""
    with _route(route):
        check_gram_case(device, case)


@pytest.mark.needs_ext
@settings(max_examples=40, deadline=None)
@given(case=cross_cases(), route=ROUTES)
def test_cross_routes_match_reference(device, case, route):
    with _route(route):
        check_cross_case(device, case)


@pytest.mark.needs_ext
@pytest.mark.parametrize("value", ["tiles", "mm:0", "mm:-3", "mm:12x", "MM"])
def test_unknown_route_is_an_error(device, value, monkeypatch):
    monkeypatch.setenv("GFFMERGE_GRAM_ROUTE", value)
    acc = torch.zeros(3, 3, dtype=torch.float64, device=device)
    x = torch.ones(4, 3, device=device)
    with pytest.raises(RuntimeError, match=f"GFFMERGE_GRAM_ROUTE must be .* got '{value}'"):
        gffmerge_ext.gram_(acc, x, backend="ext")
    with pytest.raises(RuntimeError, match="GFFMERGE_GRAM_ROUTE must be"):
        gffmerge_ext.cross_(acc, x, x, backend="ext")
    assert torch.equal(acc, torch.zeros_like(acc))


# ---- poisoned accumulators and exact symmetry -----------------------------------------------


@pytest.mark.needs_ext
@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("d", [1, 3, 17, 64, 97, 200])
def test_gram_writes_every_entry_once(d, augment, device):
    """Non-symmetric poison: the increment must land in both triangles, exactly once."""
    gen = torch.Generator().manual_seed(d)
    x = torch.randn(1000, d, generator=gen).to(device)
    w = torch.randn(1000, generator=gen).to(device)
    D = d + augment
    before = poison(gen, (D, D), symmetric=False, device=device)
    acc = before.clone()
    gffmerge_ext.gram_(acc, x, weight=w, augment=augment, backend="ext")
    expected = torch.zeros(D, D, dtype=torch.float64, device=device)
    gram_reference_(expected, x, None, w, augment)
    assert_increment(acc, before, expected, gram_scale(x, None, w, augment))
    sym = poison(gen, (D, D), symmetric=True, device=device)
    gffmerge_ext.gram_(sym, x, weight=w, augment=augment, backend="ext")
    assert torch.equal(sym, sym.T)


@pytest.mark.needs_ext
def test_augmented_entries(device):
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], device=device)
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, device=device)
    acc = torch.zeros(3, 3, dtype=torch.float64, device=device)
    gffmerge_ext.gram_(acc, x, weight=w, augment=True, backend="ext")
    assert acc[2, 2] == 1.5
    assert acc[:2, 2].tolist() == [0.5 - 3 + 10, 1 - 4 + 12] == acc[2, :2].tolist()


@pytest.mark.needs_ext
def test_empty_and_single_feature(device):
    f64 = dict(dtype=torch.float64, device=device)
    acc = torch.full((4, 4), 7.0, **f64)
    gffmerge_ext.gram_(acc, torch.empty(0, 3, device=device), augment=True, backend="ext")
    gffmerge_ext.gram_(acc, torch.randn(5, 3, device=device),
                       torch.empty(0, dtype=torch.long, device=device), augment=True)
    assert torch.equal(acc, torch.full((4, 4), 7.0, **f64))
    one = torch.zeros(1, 1, **f64)
    gffmerge_ext.gram_(one, torch.tensor([[2.0], [3.0]], device=device), backend="ext")
    assert one.item() == 13.0
    ones = torch.zeros(1, 1, **f64)
    gffmerge_ext.gram_(ones, torch.empty(4, 0, device=device), augment=True, backend="ext")
    assert ones.item() == 4.0
    c = torch.zeros(2, 1, **f64)
    gffmerge_ext.cross_(c, torch.empty(0, 2, device=device), torch.empty(0, 1, device=device),
                        backend="ext")
    assert not c.any()


@pytest.mark.needs_ext
def test_wide_features(device):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(600, 1500, generator=gen).to(torch.bfloat16).to(device)
    w = torch.rand(600, generator=gen).to(device)
    acc = torch.zeros(1501, 1501, dtype=torch.float64, device=device)
    gffmerge_ext.gram_(acc, x, weight=w, augment=True, backend="ext")
    expected = torch.zeros_like(acc)
    gram_reference_(expected, x, None, w, True)
    assert torch.equal(acc, acc.T)
    assert_increment(acc, torch.zeros_like(acc), expected, gram_scale(x, None, w, True))


# ---- invariances ---------------------------------------------------------------------------


@pytest.mark.needs_ext
@pytest.mark.parametrize("augment", [False, True])
def test_split_rows_equals_one_call(augment, device):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 130, generator=gen).to(device)
    w = torch.randn(3000, generator=gen, dtype=torch.float64).to(device)
    D = 130 + augment
    one = torch.zeros(D, D, dtype=torch.float64, device=device)
    gffmerge_ext.gram_(one, x, weight=w, augment=augment, backend="ext")
    two = torch.zeros(D, D, dtype=torch.float64, device=device)
    gffmerge_ext.gram_(two, x[:1234], weight=w[:1234], augment=augment, backend="ext")
    gffmerge_ext.gram_(two, x[1234:], weight=w[1234:], augment=augment, backend="ext")
    assert_increment(two, torch.zeros_like(two), one, gram_scale(x, None, w, augment))

    y = torch.randn(3000, 40, generator=gen).to(torch.bfloat16).to(device)
    c1 = torch.zeros(D, 40, dtype=torch.float64, device=device)
    gffmerge_ext.cross_(c1, x, y, weight=w, augment_x=augment, backend="ext")
    c2 = torch.zeros(D, 40, dtype=torch.float64, device=device)
    idx = torch.arange(3000, device=device)
    for part in (idx[:700], idx[700:]):
        gffmerge_ext.cross_(c2, x, y, part, part, w[part], augment, backend="ext")
    scale = torch.zeros(D, 40, dtype=torch.float64, device=device)
    cross_reference_(scale, x.abs(), y.abs(), None, None, w.abs(), augment)
    assert_increment(c2, torch.zeros_like(c2), c1, scale)


@pytest.mark.needs_ext
def test_thread_count_does_not_change_the_result():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5000, 100, generator=gen).to(torch.float16)
    index = torch.randint(0, 5000, (7000,), generator=gen)
    w = torch.randn(7000, generator=gen)
    y = torch.randn(5000, 30, generator=gen)
    threads = torch.get_num_threads()
    results = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            g = torch.zeros(101, 101, dtype=torch.float64)
            gffmerge_ext.gram_(g, x, index, w, augment=True, backend="ext")
            c = torch.zeros(101, 30, dtype=torch.float64)
            gffmerge_ext.cross_(c, x, y, index, index, w, augment_x=True, backend="ext")
            results[t] = (g, c)
    finally:
        torch.set_num_threads(threads)
    assert_increment(results[2][0], 0 * results[1][0], results[1][0], gram_scale(x, index, w, True))
    scale = torch.zeros(101, 30, dtype=torch.float64)
    cross_reference_(scale, x.abs(), y.abs(), index, index, w.abs(), True)
    assert_increment(results[2][1], 0 * results[1][1], results[1][1], scale)


@pytest.mark.needs_ext
def test_aten_blas_fallback_agrees(monkeypatch):
    """GFFMERGE_BLAS=aten routes the block GEMMs through at::addmm_ instead of dgemm_."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 70, generator=gen)
    w = torch.randn(2000, generator=gen)
    fast = torch.zeros(71, 71, dtype=torch.float64)
    gffmerge_ext.gram_(fast, x, weight=w, augment=True, backend="ext")
    fast_c = torch.zeros(70, 70, dtype=torch.float64)
    gffmerge_ext.cross_(fast_c, x, x.T.contiguous().T, weight=w, backend="ext")
    monkeypatch.setenv("GFFMERGE_BLAS", "aten")
    assert gffmerge_ext.build_info()["blas"].startswith("aten")
    slow = torch.zeros(71, 71, dtype=torch.float64)
    gffmerge_ext.gram_(slow, x, weight=w, augment=True, backend="ext")
    slow_c = torch.zeros(70, 70, dtype=torch.float64)
    gffmerge_ext.cross_(slow_c, x, x, weight=w, backend="ext")
    assert torch.equal(slow, slow.T)
    assert_increment(slow, 0 * slow, fast, gram_scale(x, None, w, True))
    assert_increment(slow_c, 0 * slow_c, fast_c, gram_scale(x, None, w, False))


# ---- torch.library integration --------------------------------------------------------------


def _opcheck_samples(device="cpu"):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(300, 6, generator=gen).to(device)
    y = torch.randn(200, 4, generator=gen, dtype=torch.float64).to(device)
    ix = torch.randint(0, 300, (500,), generator=gen).to(device)
    iy = torch.randint(0, 200, (500,), generator=gen).int().to(device)
    w = torch.randn(500, generator=gen).to(device)
    z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)
    gram = [
        ((z(6, 6), x), {}),
        ((z(7, 7), x), {"augment": True}),
        ((z(7, 7), x.T.contiguous().T, ix, w, True), {}),
        ((z(6, 6), x.to(torch.bfloat16)), {"index": ix[:10]}),
    ]
    cross = [
        ((z(6, 4), x[:200], y), {}),
        ((z(7, 4), x, y, ix, iy, w, True), {}),
        ((z(6, 4), x.half(), y), {"index_x": ix[:200]}),
    ]
    return gram, cross


@pytest.mark.needs_ext
def test_opcheck(device):
    gram, cross = _opcheck_samples(device)
    for args, kwargs in gram:
        torch.library.opcheck(torch.ops.gffmerge.gram_.default, args, kwargs)
    for args, kwargs in cross:
        torch.library.opcheck(torch.ops.gffmerge.cross_.default, args, kwargs)


@pytest.mark.needs_ext
def test_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        acc = torch.zeros(5, 5, dtype=torch.float64)
        x = torch.randn(10, 4)
        assert gffmerge_ext.gram_(acc, x, augment=True) is None
        c = torch.zeros(4, 3, dtype=torch.float64)
        assert gffmerge_ext.cross_(c, x, torch.randn(10, 3)) is None


@pytest.mark.needs_ext
def test_every_schema_has_a_fake():
    from gffmerge_ext import fakes

    assert fakes.REGISTERED == ("gram_", "cross_", "parts_gram_", "row_gram_", "csr_mm_",
                                "dense_csr_count_", "dense_csr_fill_", "cholesky_solve_")
    assert fakes.op_defined("gram_") and not fakes.op_defined("no_such_op_")


@pytest.mark.needs_ext
def test_torch_compile_fullgraph():
    def step(acc, c, x, y):
        gffmerge_ext.gram_(acc, x, augment=True)
        torch.ops.gffmerge.cross_(c, x, y, None, None, None, True)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(50, 4, generator=gen), torch.randn(50, 2, generator=gen)
    acc, c = torch.zeros(5, 5, dtype=torch.float64), torch.zeros(5, 2, dtype=torch.float64)
    compiled(acc, c, x, y)
    ref, ref_c = torch.zeros_like(acc), torch.zeros_like(c)
    gram_reference_(ref, x, None, None, True)
    cross_reference_(ref_c, x, y, None, None, None, True)
    torch.testing.assert_close(acc, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, ref_c, rtol=1e-12, atol=1e-12)


# ---- errors ---------------------------------------------------------------------------------

BACKENDS = [pytest.param("ext", marks=pytest.mark.needs_ext), "torch"]


def _gram_error_cases():
    x = torch.randn(10, 4)
    f64 = dict(dtype=torch.float64)
    return [
        ((torch.zeros(4, 4), x), {}, "acc must be float64, got"),
        (
            (torch.zeros(5, 5, **f64), x),
            {},
            r"acc must have shape \[4, 4\] \(x has 4 features, augment=False\), got \[5, 5\]",
        ),
        (
            (torch.zeros(4, 4, **f64), x),
            {"augment": True},
            r"acc must have shape \[5, 5\] \(x has 4 features, augment=True\), got \[4, 4\]",
        ),
        ((torch.zeros(8, 8, **f64)[::2, ::2], x), {}, "acc must be contiguous"),
        (
            (torch.zeros(4, 4, **f64), torch.randn(2, 10, 4)),
            {},
            r"x must be 2-D \[rows, features\], got a 3-D tensor of shape \[2, 10, 4\]",
        ),
        (
            (torch.zeros(4, 4, **f64), torch.ones(10, 4, dtype=torch.int32)),
            {},
            "x must be float32, float64, bfloat16 or float16, got",
        ),
        (
            (torch.zeros(4, 4, **f64), x),
            {"index": torch.tensor([0, 3, 10, 2])},
            r"index\[2\] = 10 is out of range for x with 10 rows \(valid: 0 <= index < 10\)",
        ),
        (
            (torch.zeros(4, 4, **f64), x),
            {"index": torch.tensor([1, -1], dtype=torch.int32)},
            r"index\[1\] = -1 is out of range for x with 10 rows",
        ),
        (
            (torch.zeros(4, 4, **f64), x),
            {"index": torch.tensor([1.0, 2.0])},
            "index must be int64 or int32, got",
        ),
        (
            (torch.zeros(4, 4, **f64), x),
            {"index": torch.zeros(2, 2, dtype=torch.long)},
            r"index must be 1-D, got shape \[2, 2\]",
        ),
        (
            (torch.zeros(4, 4, **f64), x),
            {"weight": torch.ones(9)},
            "weight must have one entry per gathered row: expected 10, got 9",
        ),
        (
            (torch.zeros(4, 4, **f64), x),
            {"index": torch.tensor([1, 2]), "weight": torch.ones(10)},
            "expected 2, got 10",
        ),
        (
            (torch.zeros(4, 4, **f64), x),
            {"weight": torch.ones(10, dtype=torch.float16)},
            "weight must be float32 or float64, got",
        ),
        (
            (torch.zeros(4, 4, **f64, device="meta"), x),
            {},
            "x is on cpu but acc is on meta; all tensors must be on the same device",
        ),
    ]


def _gram_error_params():
    # A device mismatch reaches a compiled kernel only with a real second device: that case is
    # in tests/test_ops_cuda.py, marked cuda. Here the meta one checks the reference alone.
    out = []
    for case, (args, _, _) in enumerate(_gram_error_cases()):
        for backend in BACKENDS:
            if args[0].device.type == "meta" and backend != "torch":
                continue
            marks = backend.marks if hasattr(backend, "marks") else ()
            out.append(pytest.param(getattr(backend, "values", (backend,))[0], case, marks=marks))
    return out


@pytest.mark.parametrize(("backend", "case"), _gram_error_params())
def test_gram_errors(backend, case):
    args, kwargs, message = _gram_error_cases()[case]
    with pytest.raises(ERRORS, match=message):
        gffmerge_ext.gram_(*args, **kwargs, backend=backend)


def _cross_error_cases():
    x, y = torch.randn(10, 4), torch.randn(8, 3)
    f64 = dict(dtype=torch.float64)
    return [
        (
            (torch.zeros(4, 3, **f64), x, y),
            {},
            r"x and y must pair up row for row, but x.shape\[0\] = 10 and y.shape\[0\] = 8",
        ),
        (
            (torch.zeros(4, 3, **f64), x, y),
            {"index_x": torch.arange(5)},
            r"but len\(index_x\) = 5 and y.shape\[0\] = 8",
        ),
        (
            (torch.zeros(4, 3, **f64), x, y),
            {"index_x": torch.arange(6), "index_y": torch.arange(7)},
            r"len\(index_x\) = 6 and len\(index_y\) = 7",
        ),
        (
            (torch.zeros(4, 3, **f64), x, y),
            {"augment_x": True, "index_y": torch.arange(10) % 8},
            r"acc must have shape \[5, 3\] \(x has 4 features, augment_x=True, y has 3 "
            r"features\), got \[4, 3\]",
        ),
        ((torch.zeros(4, 3), x[:8], y), {}, "acc must be float64"),
        ((torch.zeros(4, 3, **f64), x[:8], y[None]), {}, "y must be 2-D"),
        (
            (torch.zeros(4, 3, **f64), x[:8], y),
            {"index_y": torch.tensor([0, 8, 1, 2, 3, 4, 5, 6])},
            r"index_y\[1\] = 8 is out of range for y with 8 rows",
        ),
        ((torch.zeros(4, 3, **f64), x[:8], y), {"weight": torch.ones(7)}, "expected 8, got 7"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_cross_error_cases())))
def test_cross_errors(backend, case):
    args, kwargs, message = _cross_error_cases()[case]
    with pytest.raises(ERRORS, match=message):
        gffmerge_ext.cross_(*args, **kwargs, backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        gffmerge_ext.gram_(torch.zeros(2, 2, dtype=torch.float64), torch.randn(3, 2), backend="mkl")


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(wrappers, "extension_available", lambda: False)
    monkeypatch.setattr(wrappers, "load_error", lambda: "ImportError: no _C here")
    monkeypatch.setattr(wrappers, "_warned_fallback", False)
    x = torch.randn(20, 3)
    acc = torch.zeros(3, 3, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gffmerge_ext.gram_(acc, x)
        gffmerge_ext.cross_(torch.zeros(3, 3, dtype=torch.float64), x, x)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "ImportError: no _C here" in messages[0] and "make install" in messages[0]
    torch.testing.assert_close(acc, x.double().T @ x.double(), rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="backend='ext' but the compiled extension"):
        gffmerge_ext.gram_(acc, x, backend="ext")
    assert gffmerge_ext.available_backends() == ("torch",)
