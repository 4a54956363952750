"""One factorisation per system, every ridge: ``(A + λI) Θ = B + λ Θ₀`` for several ``λ``.

A validation choice of the ridge solves the same system for several ``λ``. Three exact
routes, each factorising once (float64):

* **dual** (rows given, fewer rows than columns): with ``A = ZᵀZ`` and ``B = ZᵀY``
  (``Z [R, dim]`` the weighted input rows, sparse or dense, ``Y`` the targets),
  ``Θ(λ) = Θ₀ + Zᵀ (ZZᵀ + λI)⁻¹ (Y − ZΘ₀)``; one eigen-decomposition of the ``R × R`` kernel
  ``ZZᵀ`` serves every ``λ``. A GNN's first layer measured on a source's own labelled nodes
  has ~100 rows and 1 400-7 400 columns;
* **eigen** (``dim`` ≤ :data:`EIGH_MAX`): ``A = V diag(w) Vᵀ``,
  ``Θ(λ) = V diag(1/(w + λ)) Vᵀ (B + λΘ₀)``;
* **cholesky** (larger systems): one Cholesky per ``λ`` (one at a time: one matrix of
  that size in memory). An eigen-decomposition costs about nine Choleskys of the same
  size, so for a few ridges separate factorisations are cheaper there.

Directions without data (zero rows of ``A``) get ``Θ₀`` in every route, as in
:func:`~gffmerge.solver.solve_systems`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .cholesky import solve_spd

EIGH_MAX = 1024
"""Largest primal system solved by one eigen-decomposition for all ridges."""

F64 = torch.float64


def _mm(z: Tensor, m: Tensor) -> Tensor:
    return torch.sparse.mm(z, m) if z.layout != torch.strided else z @ m


def _t(z: Tensor) -> Tensor:
    return z.t() if z.layout == torch.strided else z.t().to_sparse_csr()


def kernel(z: Tensor) -> Tensor:
    """``Z Zᵀ`` as a dense float64 matrix (sparse product for a sparse ``Z``)."""
    if z.layout == torch.strided:
        return z @ z.T
    zc = z.to_sparse_csr()
    prod = torch.sparse.mm(zc, zc.t().to_sparse_csr())
    return prod.to_dense()


def trace_of(z: Tensor) -> float:
    """``tr(ZᵀZ)`` = the squared Frobenius norm of ``Z``."""
    vals = z if z.layout == torch.strided else z.coalesce().values() if (
        z.layout == torch.sparse_coo) else z.values()
    return float((vals * vals).sum())


def dual_path(z: Tensor, y: Tensor, prior: Tensor | None, lams: Sequence[float]
              ) -> list[Tensor]:
    """``Θ(λ)`` for every ``λ`` of ``lams`` from the rows ``Z [R, dim]`` and targets ``Y [R,
    out]`` (``A = ZᵀZ``, ``B = ZᵀY``), with the prior ``Θ₀`` (None: zero); exact."""
    if any(lam <= 0 for lam in lams):
        raise ValueError("the dual ridge path needs every ridge > 0 (ZZᵀ is singular when "
                         "rows outnumber their rank); give ridges > 0")
    e, u = torch.linalg.eigh(kernel(z))
    resid = y if prior is None else y - _mm(z, prior)
    proj = u.T @ resid
    zt = _t(z)
    out = []
    for lam in lams:
        coef = u @ (proj / (e + lam)[:, None])
        theta = _mm(zt, coef)
        out.append(theta if prior is None else prior + theta)
    return out


def primal_path(a: Tensor, b: Tensor, prior: Tensor | None, lams: Sequence[float], *,
                route: str = "auto") -> list[Tensor]:
    """``Θ(λ)`` for every ``λ`` of ``lams`` from the Gram ``A [dim, dim]`` and ``B [dim, out]``
    (prior ``Θ₀``, None: zero): one eigen-decomposition (``route="eigen"``), or one
    Cholesky per ``λ`` (``"cholesky"``); ``"auto"``: eigen up to
    :data:`EIGH_MAX`."""
    dim = a.shape[0]
    if route == "auto":
        route = "eigen" if dim <= EIGH_MAX else "cholesky"
    keep = a.diagonal() != 0
    if not bool(keep.all()):  # directions without data: Θ₀ there, the rest decouples
        idx = keep.nonzero().flatten()
        sub = primal_path(a[idx][:, idx], b[idx], None if prior is None else prior[idx],
                          lams, route=route)
        fill = torch.zeros_like(b) if prior is None else prior.clone()
        outs = []
        for s in sub:
            full = fill.clone()
            full[idx] = s
            outs.append(full)
        return outs
    if route == "eigen":
        w, v = torch.linalg.eigh(a)
        bv = v.T @ b
        pv = None if prior is None else v.T @ prior
        return [v @ ((bv if pv is None else bv + lam * pv) / (w + lam)[:, None])
                for lam in lams]
    if route != "cholesky":
        raise ValueError(f"route={route!r} is not valid; choose auto, eigen or cholesky")
    eye = torch.eye(dim, dtype=a.dtype, device=a.device)
    return [solve_spd({"path": (a + lam * eye, b if prior is None else b + lam * prior)},
                      rescue=True)["path"].x for lam in lams]
