"""Batched Cholesky solves of symmetric positive-definite systems, with recorded rescue steps."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from gffmerge_ext import cholesky_solve_

from ..errors import DegenerateSolutionError, SingularGramError
from .assemble import LayerSystem

# Jitter tried after a failed factorisation, relative to the mean diagonal entry.
JITTER_STEPS = (1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4)
# cond₂ above which an unregularised system is treated as singular.
SINGULAR_COND = 1e15


@dataclass
class SpdSolution:
    """Solution of one system plus how it was obtained."""

    x: Tensor
    jitter: float = 0.0  # absolute diagonal jitter that made Cholesky succeed
    fallback: str = ""  # "eigh" when even the largest jitter failed
    cond: float = math.nan  # cond₂ of the matrix, when computed (solve_systems)


def _eigh_solve(m: Tensor, rhs: Tensor) -> Tensor:
    """Pseudo-inverse solve: the last resort for a system no jitter step could factorise."""
    w, v = torch.linalg.eigh(m)
    floor = w.abs().max().clamp_min(torch.finfo(m.dtype).tiny) * m.shape[0] * 1e-15
    inv = torch.where(w > floor, 1.0 / w, torch.zeros_like(w))
    return v @ (inv[:, None] * (v.T @ rhs))


def solve_spd(systems: dict[str, tuple[Tensor, Tensor]], *, rescue: bool = True,
              backend: str = "auto") -> dict[str, SpdSolution]:
    """Solve ``M X = R`` for each named ``(M, R)`` by Cholesky, batching same-size ``M``.

    Systems with the same ``n`` (and device) go to one call of
    :func:`gffmerge_ext.cholesky_solve_` (float64; right-hand sides padded with zero columns
    to the widest ``k``), which on a GPU factorises, retries and solves without syncing; the
    host reads ``info`` once per group. A system whose factorisation fails raises
    :class:`SingularGramError` unless ``rescue`` is set, in which case growing diagonal jitter
    (``JITTER_STEPS`` times the mean ``|diag M|``) is tried and, as a last resort, a
    pseudo-inverse solve from an eigen-decomposition; the result records which.
    ``backend`` is passed to the op (``"torch"``: the pure-torch reference).
    """
    groups: dict[tuple[int, torch.device], list[str]] = defaultdict(list)
    for name, (m, _) in systems.items():
        groups[(m.shape[0], m.device)].append(name)
    out: dict[str, SpdSolution] = {}
    for (n, device), names in groups.items():
        rhss = [systems[name][1] for name in names]
        widths = [1 if r.dim() == 1 else r.shape[1] for r in rhss]
        A = torch.stack([systems[name][0] for name in names]).to(torch.float64).contiguous()
        B = torch.zeros(len(names), n, max(widths), dtype=torch.float64, device=device)
        for j, (r, k) in enumerate(zip(rhss, widths)):
            B[j, :, :k] = r.reshape(n, k)
        info = torch.empty(len(names), dtype=torch.int32, device=device)
        jitter = torch.empty(len(names), dtype=torch.float64, device=device)
        cholesky_solve_(A, B, info, jitter, JITTER_STEPS if rescue else (), backend=backend)
        # one device-to-host read per group (info is exact in float64)
        flat = torch.cat([info.to(torch.float64), jitter]).tolist()
        info_list, jitter_list = flat[:len(names)], flat[len(names):]
        failed = [name for name, i in zip(names, info_list) if i != 0]
        if failed and not rescue:
            raise SingularGramError(
                f"the regularised Gram of layer(s) {', '.join(failed[:5])} is not positive "
                "definite (Cholesky failed): some input directions carry no data. Use a "
                "ridge > 0 (e.g. ridge=1e-6, or ridge_mode='relative'), or prior='mean'")
        for j, name in enumerate(names):
            m, rhs = systems[name]
            if info_list[j] == 0:
                x = B[j, :, :widths[j]].to(rhs.dtype, memory_format=torch.contiguous_format,
                                          copy=True)
                out[name] = SpdSolution(x.reshape(rhs.shape), jitter=jitter_list[j])
            else:
                out[name] = SpdSolution(_eigh_solve(m, rhs), fallback="eigh")
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


def check_systems_finite(systems: Mapping[str, LayerSystem]) -> None:
    """Raise :class:`DegenerateSolutionError` naming the layers whose assembled system holds
    NaN/Inf (statistics or source weights that are not finite)."""
    bad = [name for name, s in systems.items()
           if not (bool(torch.isfinite(s.a).all()) and bool(torch.isfinite(s.b).all()))]
    if bad:
        raise DegenerateSolutionError(
            f"the statistics or source weights of layer(s) {', '.join(bad[:5])} hold NaN/Inf; "
            "re-measure the statistics (gffmerge measure) and check the source checkpoints")


def solve_systems(systems: Mapping[str, LayerSystem], *, jitter: bool = True,
                  condition: bool = True, backend: str = "auto") -> dict[str, SpdSolution]:
    """Solve every :class:`~gffmerge.solver.LayerSystem` ``(A + λI) Θ = B + λ Θ₀``.

    A system without ridge whose cond₂ exceeds ``SINGULAR_COND`` is an error naming the
    layers and the fix (it has input directions without data). With ``jitter`` (and every
    system regularised), failed factorisations are rescued as :func:`solve_spd` describes;
    with ``condition``, cond₂ of every matrix is recorded (otherwise only of those without
    ridge, which need it for the check above). A system with a ``known`` solution is not
    solved; one whose ``A`` has zero rows (directions without data, with a ridge) is
    solved on the other directions only (exact: they decouple).
    """
    check_systems_finite(systems)  # NaN/Inf: one clear error, not a failed eigen-solver
    known = {name: s.known for name, s in systems.items() if s.known is not None}
    active = {name: _active(s) for name, s in systems.items() if name not in known}
    matrices = {name: _reduce(s, active[name]) for name, s in systems.items()
                if name not in known}
    unregularised = [name for name, s in systems.items() if s.ridge == 0.0]
    wanted = list(systems) if condition else unregularised
    conds = condition_numbers({n: systems[n].matrix() for n in wanted}) if wanted else {}
    singular = [n for n in unregularised if conds[n] > SINGULAR_COND]
    if singular:
        raise SingularGramError(
            f"the Gram of layer(s) {', '.join(singular[:5])} is singular "
            f"(cond₂ = {conds[singular[0]]:.2e}) and ridge is 0: some input directions carry "
            "no data. Use a ridge > 0 (e.g. ridge=1e-6, or ridge_mode='relative' with "
            "ridge=1e-4) and/or prior='mean'")
    out = solve_spd(matrices, rescue=jitter and not unregularised, backend=backend)
    for name, sol in out.items():
        sol.cond = conds.get(name, math.nan)
        sol.x = _expand(systems[name], active[name], sol.x)
    for name, x in known.items():
        out[name] = SpdSolution(x.clone(), cond=conds.get(name, math.nan))
    return {name: out[name] for name in systems}


def _active(s: LayerSystem) -> Tensor | None:
    """The directions that carry data when some do not (zero diagonal of ``A``, so zero
    rows and columns: ``A`` is a sum of positive semi-definite Grams), else None. With a
    ridge, those rows of the solution decouple: ``λ Θ_i = B_i + λ Θ₀_i`` (``B_i = 0``)."""
    if s.ridge <= 0:
        return None
    keep = s.a.diagonal() != 0
    return None if bool(keep.all()) else keep.nonzero().flatten()


def _reduce(s: LayerSystem, idx: Tensor | None) -> tuple[Tensor, Tensor]:
    m, r = s.matrix(), s.rhs()
    if idx is None:
        return m, r
    return m[idx][:, idx], r[idx]


def _expand(s: LayerSystem, idx: Tensor | None, x: Tensor) -> Tensor:
    if idx is None:
        return x
    full = s.rhs() / s.ridge  # the decoupled rows; exact rows of the data directions below
    full[idx] = x
    return full
