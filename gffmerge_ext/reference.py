"""The pure-torch backend of the gffmerge ops (``backend="torch"``), in float64.

Same contract as the compiled kernels and the same error messages (:mod:`.checks`); every
compiled backend is tested against these. They make float64 copies of the gathered rows, so
they are the slow path, not a second implementation to tune.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .checks import (
    DENSE_CSR_FILL,
    check_cholesky,
    check_cross,
    check_csr_mm,
    check_dense_csr_count,
    check_dense_csr_fill,
    check_gram,
    check_parts_gram,
    check_row_counts,
    check_row_gram,
)

__all__ = [
    "cholesky_solve_reference_",
    "cross_reference_",
    "gram_reference_",
    "parts_gram_reference_",
    "row_gram_reference_",
    "csr_mm_reference_",
    "dense_csr_count_reference_",
    "dense_csr_fill_reference_",
]


def _rows64(x: Tensor, index: Tensor | None, augment: bool) -> Tensor:
    rows = x if index is None else x.index_select(0, index.long())
    rows = rows.to(torch.float64)
    if augment:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


@torch.no_grad()
def gram_reference_(
    acc: Tensor,
    x: Tensor,
    index: Tensor | None = None,
    weight: Tensor | None = None,
    augment: bool = False,
) -> None:
    """Reference for :func:`gffmerge_ext.gram_`: gather, cast to float64, ``X.T @ (w X)``,
    symmetrise."""
    check_gram(acc, x, index, weight, augment)
    X = _rows64(x, index, augment)
    WX = X if weight is None else X * weight.to(torch.float64)[:, None]
    g = X.T @ WX
    acc.add_((g + g.T) * 0.5)


@torch.no_grad()
def cross_reference_(
    acc: Tensor,
    x: Tensor,
    y: Tensor,
    index_x: Tensor | None = None,
    index_y: Tensor | None = None,
    weight: Tensor | None = None,
    augment_x: bool = False,
) -> None:
    """Reference for :func:`gffmerge_ext.cross_`: gather both sides, cast to float64,
    ``(w X).T @ Y``."""
    check_cross(acc, x, y, index_x, index_y, weight, augment_x)
    X = _rows64(x, index_x, augment_x)
    if weight is not None:
        X = X * weight.to(torch.float64)[:, None]
    acc.add_(X.T @ _rows64(y, index_y, False))


@torch.no_grad()
def parts_gram_reference_(
    acc: Tensor,
    dense: Tensor | None,
    nodes: Sequence[Tensor],
    indices: Sequence[Tensor],
    gates: Sequence[Tensor | None],
    dense_block: bool = True,
) -> None:
    """Reference for :func:`gffmerge_ext.parts_gram_`: the explicit float64 rows
    ``[dense, g_1 H_1[i_1], ..., 1]`` (an ``[R, W + 1]`` copy), ``X.T @ X``, symmetrised;
    without ``dense_block`` the dense-and-ones entries are left out."""
    check_parts_gram(acc, dense, nodes, indices, gates)
    count = dense.shape[0] if dense is not None else indices[0].shape[0]
    f64 = torch.float64
    cols = [] if dense is None else [dense.to(f64)]
    for h, index, gate in zip(nodes, indices, gates):
        rows = h.to(f64).index_select(0, index.long())
        cols.append(rows if gate is None else rows * gate.to(f64)[:, None])
    cols.append(torch.ones(count, 1, dtype=f64, device=acc.device))
    X = torch.cat(cols, dim=1)
    g = X.T @ X
    g = (g + g.T) * 0.5
    if not dense_block:
        d = 0 if dense is None else dense.shape[1]
        keep = torch.ones(g.shape[0], dtype=torch.bool, device=g.device)
        keep[:d] = False
        keep[-1] = False
        g[~(keep[:, None] | keep[None, :])] = 0.0
    acc.add_(g)


@torch.no_grad()
def row_gram_reference_(acc: Tensor, crow: Tensor, col: Tensor, values: Tensor, cols: int
                        ) -> None:
    """Reference for :func:`gffmerge_ext.row_gram_`: the dense float64 ``Z [R, cols]`` (repeated
    entries summed), ``Z @ Z.T``, symmetrised."""
    check_row_gram(acc, crow, col, values, cols)
    rows = crow.shape[0] - 1
    counts = (crow[1:] - crow[:-1]).long()
    row = torch.repeat_interleave(torch.arange(rows, device=acc.device), counts)
    z = torch.zeros(rows, cols, dtype=torch.float64, device=acc.device)
    z.index_put_((row, col.long()), values.to(torch.float64), accumulate=True)
    g = z @ z.T
    acc.add_((g + g.T) * 0.5)


@torch.no_grad()
def csr_mm_reference_(out: Tensor, crow: Tensor, col: Tensor, values: Tensor, m: Tensor) -> None:
    """Reference for :func:`gffmerge_ext.csr_mm_`: the dense float64 ``Z [R, cols]`` (repeated
    entries summed), ``out += Z @ m``."""
    check_csr_mm(out, crow, col, values, m)
    rows = out.shape[0]
    counts = (crow[1:] - crow[:-1]).long()
    row = torch.repeat_interleave(torch.arange(rows, device=out.device), counts)
    z = torch.zeros(rows, m.shape[0], dtype=torch.float64, device=out.device)
    z.index_put_((row, col.long()), values, accumulate=True)
    out.add_(z @ m)


@torch.no_grad()
def dense_csr_count_reference_(crow: Tensor, x: Tensor) -> None:
    """Reference for :func:`gffmerge_ext.dense_csr_count_`: ``crow = [0, cumsum((x != 0)
    per row)]``."""
    check_dense_csr_count(crow, x)
    crow[0] = 0
    crow[1:] = torch.cumsum((x != 0).sum(1), 0)


@torch.no_grad()
def dense_csr_fill_reference_(col: Tensor, values: Tensor, crow: Tensor, x: Tensor) -> None:
    """Reference for :func:`gffmerge_ext.dense_csr_fill_`: the positions of ``x != 0`` in
    row-major order (``nonzero``) and their values in float64."""
    check_dense_csr_fill(col, values, crow, x)
    mask = x != 0
    check_row_counts(DENSE_CSR_FILL, mask.sum(1), crow)
    r, c = mask.nonzero(as_tuple=True)
    col.copy_(c)
    values.copy_(x[r, c].to(torch.float64))


@torch.no_grad()
def cholesky_solve_reference_(
    A: Tensor, B: Tensor, info: Tensor, jitter: Tensor, jitter_steps: Sequence[float] = ()
) -> None:
    """Reference for :func:`gffmerge_ext.cholesky_solve_`: one ``torch.linalg.cholesky_ex``
    per attempt and system (a host synchronisation each on the GPU)."""
    steps = [float(v) for v in jitter_steps]
    check_cholesky(A, B, info, jitter, steps)
    n = A.shape[1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    for l in range(A.shape[0]):
        a0 = A[l].clone()
        chol, status = torch.linalg.cholesky_ex(a0)
        status, jit = int(status), 0.0
        if status and steps:
            scale = a0.diagonal().abs().mean().item() if n else 1.0
            scale = scale if scale > 0 else 1.0
            for step in steps:
                jit = step * scale
                chol, status = torch.linalg.cholesky_ex(a0 + jit * eye)
                status = int(status)
                if status == 0:
                    break
        A[l] = chol
        info[l] = status
        jitter[l] = jit
        if status == 0 and B.shape[2]:
            B[l] = torch.cholesky_solve(B[l], chol)
