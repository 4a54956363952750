"""The fast paths of measuring (issue 15) give the statistics of the paths they replace.

* the register-tile block products of ``gram_``/``cross_`` (csrc/kernels/block_products.h)
  against the float64 reference and against the dgemm path (``GFFMERGE_BLAS=dgemm``);
* the cross sums of a layer on its own inputs formed as ``A Θᵀ`` against the measured ones;
* early-stopped progressive passes against full forwards.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gffmerge_ext
from gffmerge_ext.reference import cross_reference_, gram_reference_

F64 = torch.float64


def _close(a, b, scale, rtol=1e-12):
    """``a == b`` up to float64 summation-order error relative to the sum of |terms|."""
    err = (a - b).abs()
    tol = rtol * scale + 1e-300
    assert bool((err <= tol).all()), f"worst |err|/tol {float((err / tol).max()):.3g}"


def _rows(gen, n, d, dtype, layout):
    if layout == "contiguous":
        return torch.randn(n, d, generator=gen).to(dtype)
    if layout == "transposed":
        return torch.randn(d, n, generator=gen).to(dtype).T
    return torch.randn(2 * n + 1, 3 * d + 2, generator=gen).to(dtype)[1::2, 2::3]


@st.composite
def _cases(draw):
    # column counts on both sides of the 8 x 4 tile edges and the padded leading dimension
    d = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 31, 63, 64, 65, 72, 100]))
    n = draw(st.sampled_from([0, 1, 2, 3, 17, 64, 65, 300, 1500]))
    dtype = draw(st.sampled_from([torch.float32, F64, torch.bfloat16]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    weighted = draw(st.booleans())
    indexed = draw(st.booleans())
    augment = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return d, n, dtype, layout, weighted, indexed, augment, seed


@pytest.mark.needs_ext
@settings(max_examples=80, deadline=None)
@given(case=_cases())
def test_tiled_gram_and_cross_match_reference_and_dgemm(case):
    """Symmetric Gram (one triangle of tiles, mirrored once) and cross sums from the
    register tiles equal the float64 reference and the dgemm path."""
    d, n, dtype, layout, weighted, indexed, augment, seed = case
    gen = torch.Generator().manual_seed(seed)
    x = _rows(gen, max(n, 1) if indexed else n, d, dtype, layout)
    y = _rows(gen, x.shape[0], 1 + seed % 11, dtype, "contiguous")
    m = n if not indexed else n + 5
    index = torch.randint(0, max(x.shape[0], 1), (m,), generator=gen) if indexed else None
    if indexed and n == 0:
        index = index[:0]
    count = index.numel() if indexed else n
    w = torch.randn(count, generator=gen, dtype=F64) if weighted else None
    D = d + augment

    def run():
        g = torch.zeros(D, D, dtype=F64)
        c = torch.zeros(D, y.shape[1], dtype=F64)
        gffmerge_ext.gram_(g, x, index=index, weight=w, augment=augment, backend="ext")
        gffmerge_ext.cross_(c, x, y, index_x=index, index_y=index, weight=w,
                            augment_x=augment, backend="ext")
        return g, c

    saved = os.environ.pop("GFFMERGE_BLAS", None)
    try:
        tiled_g, tiled_c = run()
        os.environ["GFFMERGE_BLAS"] = "dgemm"
        assert gffmerge_ext.build_info()["block_products"].startswith("dgemm")
        blas_g, blas_c = run()
    finally:
        os.environ.pop("GFFMERGE_BLAS", None)
        if saved is not None:
            os.environ["GFFMERGE_BLAS"] = saved

    ref_g = torch.zeros(D, D, dtype=F64)
    ref_c = torch.zeros(D, y.shape[1], dtype=F64)
    gram_reference_(ref_g, x, index, w, augment)
    cross_reference_(ref_c, x, y, index, index, w, augment)
    scale_g = torch.zeros(D, D, dtype=F64)
    gram_reference_(scale_g, x.abs(), index, None if w is None else w.abs(), augment)
    scale_c = torch.zeros(D, y.shape[1], dtype=F64)
    cross_reference_(scale_c, x.abs(), y.abs(), index, index,
                     None if w is None else w.abs(), augment)
    assert torch.equal(tiled_g, tiled_g.T)
    _close(tiled_g, ref_g, scale_g)
    _close(tiled_g, blas_g, scale_g)
    _close(tiled_c, ref_c, scale_c)
    _close(tiled_c, blas_c, scale_c)


@pytest.mark.needs_ext
def test_tiles_are_used_where_the_cpu_has_them():
    info = gffmerge_ext.build_info()["block_products"]
    assert info.startswith("register tiles") or info.startswith("dgemm (no avx2")


@pytest.mark.needs_ext
def test_tiled_gram_adds_to_what_is_there():
    """The increment is added to ``acc`` (not written over it), both triangles alike."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(700, 13, generator=gen)
    before = torch.randn(14, 14, generator=gen, dtype=F64)
    before = before + before.T
    acc = before.clone()
    gffmerge_ext.gram_(acc, x, augment=True, backend="ext")
    ref = torch.zeros(14, 14, dtype=F64)
    gram_reference_(ref, x, None, None, True)
    scale = torch.zeros(14, 14, dtype=F64)
    gram_reference_(scale, x.abs(), None, None, True)
    _close(acc - before, ref, scale + before.abs() * 1e4)
    assert torch.equal(acc, acc.T)
