"""Batched Cholesky solves of symmetric positive-definite systems, with recorded rescue steps."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SingularGramError

# Jitter tried after a failed factorisation, relative to the mean diagonal entry.
JITTER_STEPS = (1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4)


@dataclass
class SpdSolution:
    """Solution of one system plus how it was obtained."""

    x: Tensor
    jitter: float = 0.0  # absolute diagonal jitter that made Cholesky succeed
    fallback: str = ""  # "eigh" when even the largest jitter failed


def _mean_diag(m: Tensor) -> float:
    d = m.diagonal().abs().mean().item()
    return d if d > 0 else 1.0


def _rescue(m: Tensor, rhs: Tensor) -> SpdSolution:
    eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    scale = _mean_diag(m)
    for rel in JITTER_STEPS:
        jit = rel * scale
        chol, info = torch.linalg.cholesky_ex(m + jit * eye)
        if int(info) == 0:
            return SpdSolution(torch.cholesky_solve(rhs, chol), jitter=jit)
    w, v = torch.linalg.eigh(m)
    floor = w.abs().max().clamp_min(torch.finfo(m.dtype).tiny) * m.shape[0] * 1e-15
    inv = torch.where(w > floor, 1.0 / w, torch.zeros_like(w))
    return SpdSolution(v @ (inv[:, None] * (v.T @ rhs)), fallback="eigh")


def solve_spd(systems: dict[str, tuple[Tensor, Tensor]], *,
              rescue: bool = True) -> dict[str, SpdSolution]:
    """Solve ``M X = R`` for each named ``(M, R)`` by Cholesky, batching same-size ``M``.

    A system whose factorisation fails raises :class:`SingularGramError` unless
    ``rescue`` is set, in which case growing diagonal jitter is tried and, as a last
    resort, a pseudo-inverse solve from an eigen-decomposition; the result records which.
    """
    groups: dict[tuple[int, torch.device], list[str]] = defaultdict(list)
    for name, (m, _) in systems.items():
        groups[(m.shape[0], m.device)].append(name)
    out: dict[str, SpdSolution] = {}
    for names in groups.values():
        chol, info = torch.linalg.cholesky_ex(torch.stack([systems[n][0] for n in names]))
        info = info.tolist()
        failed = [n for n, i in zip(names, info) if i != 0]
        if failed and not rescue:
            raise SingularGramError(
                f"the regularised Gram of layer(s) {', '.join(failed[:5])} is not positive "
                "definite (Cholesky failed): some input directions carry no data. Use a "
                "ridge > 0 (e.g. ridge=1e-6, or ridge_mode='relative'), or prior='mean'")
        for j, name in enumerate(names):
            m, rhs = systems[name]
            if info[j] == 0:
                out[name] = SpdSolution(torch.cholesky_solve(rhs, chol[j]))
            else:
                out[name] = _rescue(m, rhs)
    return out


def condition_numbers(matrices: dict[str, Tensor]) -> dict[str, float]:
    """cond₂ of each symmetric matrix from its eigenvalues (``inf`` when singular)."""
    groups: dict[tuple[int, torch.device], list[str]] = defaultdict(list)
    for name, m in matrices.items():
        groups[(m.shape[0], m.device)].append(name)
    out = {}
    for names in groups.values():
        w = torch.linalg.eigvalsh(torch.stack([matrices[n] for n in names])).abs()
        big, small = w.max(dim=-1).values, w.min(dim=-1).values
        for n, b, s in zip(names, big.tolist(), small.tolist()):
            out[n] = b / s if s > 0 else float("inf")
    return out
