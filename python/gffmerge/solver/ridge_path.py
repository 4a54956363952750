"""Every ridge of one system: ``(A + λI) Θ = B + λ Θ₀`` for several ``λ``, exactly.

A validation choice of the ridge solves the same system for several ``λ``. The system is
formed once (Gram or kernel) and solved on its smaller side (float64):

* **dual** (rows given, fewer rows than columns): with ``A = ZᵀZ`` and ``B = ZᵀY``
  (``Z [R, dim]`` the weighted input rows, sparse or dense, ``Y`` the targets),
  ``Θ(λ) = Θ₀ + Zᵀ (ZZᵀ + λI)⁻¹ (Y − ZΘ₀)``: an ``R × R`` kernel instead of the
  ``dim × dim`` Gram. A GNN's first layer measured on a source's own labelled nodes has
  ~100-1 000 rows and 1 400-7 400 columns;
* **primal**: the Gram ``A`` itself.

Each side is factorised per ``λ`` by Cholesky (``route="cholesky"``, the default) or once
for all ``λ`` by an eigen-decomposition (``"eigen"``: ``A = V diag(w) Vᵀ``,
``Θ(λ) = V diag(1/(w + λ)) Vᵀ (B + λΘ₀)``). Measured here (float64, one thread): an
eigen-decomposition of a 700-1 000 matrix costs 14-15 Choleskys of it, so for a handful
of ridges separate Choleskys are the cheaper exact route; the eigen route pays off from
about 15 ridges.

Directions without data (zero rows of ``A``) get ``Θ₀`` in every route, as in
:func:`~gffmerge.solver.solve_systems`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from gffmerge_ext import row_gram_, row_gram_devices

from ..collect.sparse import csr_matmul
from .cholesky import solve_spd

ROUTES = ("cholesky", "eigen")

F64 = torch.float64


def _mm(z: Tensor, m: Tensor) -> Tensor:
    return csr_matmul(z, m) if z.layout != torch.strided else z @ m


def kernel(z: Tensor) -> Tensor:
    """``Z Zᵀ`` as a dense float64 matrix.

    Sparse rows on the CPU: :func:`gffmerge_ext.row_gram_` (the compiled kernel: each row of
    the product from the columns it touches, up to the diagonal, ``Σ_c nnz(column c)² / 2``
    multiply-adds; exactly symmetric) where that is much less work than :func:`kernel_gathered`
    (``nnz · R``), which is used otherwise and on other devices. Measured here (float64, one
    thread; a GNN's first layer on own nodes and neighbours, 452-663 rows × 1 434-7 407
    columns): 19-33 ms → 5-7 ms (3-6.7×); on hidden features (129-257 columns, nearly full)
    the two are within 20 % and the gathered sums are kept."""
    if z.layout == torch.strided:
        return z @ z.T
    zc = z.to_sparse_csr()
    col = zc.col_indices()
    if z.device.type not in row_gram_devices() or not _fewer_by_columns(col, zc.shape):
        return kernel_gathered(zc)
    acc = torch.zeros(zc.shape[0], zc.shape[0], dtype=F64, device=z.device)
    row_gram_(acc, zc.crow_indices(), zc.col_indices(), zc.values(), zc.shape[1])
    return acc


def _fewer_by_columns(col: Tensor, shape) -> bool:
    """Whether the row-by-column kernel (``Σ_c nnz(c)² / 2`` multiply-adds, scattered) needs
    at least 4× fewer multiply-adds than the gathered sums (``nnz · R``, contiguous): 11-18×
    fewer for a GNN's first layer on raw features (3-6.7× faster), 2× for hidden features
    with nearly full columns (there the two took the same time within 20 %)."""
    counts = torch.bincount(col, minlength=shape[1]).to(F64)
    return 2.0 * float(counts.square().sum()) < col.shape[0] * shape[0]


def kernel_gathered(z: Tensor) -> Tensor:
    """``Z Zᵀ`` of sparse rows by gathered sums (sparse rows times the dense ``Zᵀ``, any
    device): ``embedding_bag`` sums, for row ``i``, ``Z[i, c] Zᵀ[c, :]`` over the entries of
    row ``i`` in the same order as ``torch.sparse.mm`` of the CSR rows (the same numbers, bit
    for bit); ``nnz(Z) · R`` multiply-adds."""
    zc = z.to_sparse_csr()
    crow, col, val = zc.crow_indices(), zc.col_indices(), zc.values()
    rows = torch.repeat_interleave(torch.arange(zc.shape[0], device=z.device),
                                   crow[1:] - crow[:-1], output_size=val.shape[0])
    dense_t = val.new_zeros(zc.shape[1], zc.shape[0])
    dense_t[col, rows] = val  # Zᵀ by one scatter (CSR's to_dense and a transpose: 2x more)
    return torch.nn.functional.embedding_bag(col, dense_t, crow[:-1], mode="sum",
                                             per_sample_weights=val)


def trace_of(z: Tensor) -> float:
    """``tr(ZᵀZ)`` = the squared Frobenius norm of ``Z``."""
    vals = z if z.layout == torch.strided else z.coalesce().values() if (
        z.layout == torch.sparse_coo) else z.values()
    return float((vals * vals).sum())


def _check(lams: Sequence[float], route: str) -> None:
    if route not in ROUTES:
        raise ValueError(f"route={route!r} is not valid; choose one of {', '.join(ROUTES)}")
    if any(not lam > 0 for lam in lams):
        raise ValueError("the ridge path needs every ridge > 0 (the Gram or kernel is "
                         "singular when directions carry no data); give ridges > 0")


def _spd_path(m: Tensor, rhs: Tensor, prior_rhs: Tensor | None, lams: Sequence[float],
              route: str) -> list[Tensor]:
    """``(M + λI)⁻¹ (rhs + λ prior_rhs)`` for every ``λ``."""
    if route == "eigen":
        w, v = torch.linalg.eigh(m)
        rv = v.T @ rhs
        pv = None if prior_rhs is None else v.T @ prior_rhs
        return [v @ ((rv if pv is None else rv + lam * pv) / (w + lam)[:, None])
                for lam in lams]
    eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    return [solve_spd({"path": (m + lam * eye, rhs if prior_rhs is None
                                else rhs + lam * prior_rhs)}, rescue=True)["path"].x
            for lam in lams]


def dual_path(z: Tensor, y: Tensor | None, prior: Tensor | None, lams: Sequence[float], *,
              route: str = "cholesky", resid: Tensor | None = None) -> list[Tensor]:
    """``Θ(λ)`` for every ``λ`` of ``lams`` from the rows ``Z [R, dim]`` and targets ``Y [R,
    out]`` (``A = ZᵀZ``, ``B = ZᵀY``), with the prior ``Θ₀`` (None: zero); exact.
    ``resid``: ``Y − ZΘ₀`` when the caller has it already (then ``y`` is not read and
    ``ZΘ₀`` not formed)."""
    _check(lams, route)
    if resid is None and y is None:
        raise ValueError("dual_path needs the targets y or the residuals resid = y - Z prior")
    if z.layout != torch.strided:
        with warnings.catch_warnings():  # torch's notice that sparse CSR support is beta
            warnings.filterwarnings("ignore", message=r"Sparse CSR tensor support")
            zc = z.to_sparse_csr()
            zt = z.t().coalesce().to_sparse_csr()
    else:
        zc, zt = z, z.T
    if resid is None:
        resid = y if prior is None else y - _mm(zc, prior)
    coefs = _spd_path(kernel(zc), resid, None, lams, route)
    steps = _mm(zt, torch.cat(coefs, 1)).split(resid.shape[1], 1)  # one product for all λ
    return [s if prior is None else prior + s for s in steps]


def primal_path(a: Tensor, b: Tensor, prior: Tensor | None, lams: Sequence[float], *,
                route: str = "cholesky") -> list[Tensor]:
    """``Θ(λ)`` for every ``λ`` of ``lams`` from the Gram ``A [dim, dim]`` and ``B [dim,
    out]`` (prior ``Θ₀``, None: zero); exact."""
    _check(lams, route)
    keep = a.diagonal() != 0
    if not bool(keep.all()):  # directions without data: Θ₀ there, the rest decouples
        idx = keep.nonzero().flatten()
        sub = primal_path(a[idx][:, idx], b[idx], None if prior is None else prior[idx],
                          lams, route=route)
        outs = []
        for s in sub:
            full = torch.zeros_like(b) if prior is None else prior.clone()
            full[idx] = s
            outs.append(full)
        return outs
    return _spd_path(a, b, prior, lams, route)
