"""Fitting per-element reference energies and the per-atom scale/shift.

Total DFT energies are dominated by a per-element constant (LiPS20: -180 to -280
eV/atom), so a model learns only the residual ``E - sum_i E_ref[z_i]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gffmerge.data.batch import AtomsBatch

from .base import MAX_Z


@dataclass(frozen=True)
class ReferenceFit:
    """Result of :func:`fit_reference_energies`."""

    atomic_energies: Tensor  # [max_z + 1] float64, eV, indexed by Z
    elements: tuple[int, ...]  # the Z that occur in the data
    rank: int  # rank of the composition matrix
    num_structures: int
    rms_residual_ev_per_atom: float  # RMS of (E - sum E_ref) / n_atoms

    @property
    def rank_deficient(self) -> bool:
        return self.rank < len(self.elements)


@dataclass(frozen=True)
class ScaleShiftFit:
    """Result of :func:`fit_scale_shift`."""

    scale: float  # eV (per unit of model output)
    shift: float  # eV/atom
    source: str  # what the scale came from: "forces", "energy" or "default"


def _structures(samples: Iterable[Any]):
    """Yield ``(z [n] int64, energy float, forces [n, 3] or None)`` per structure.

    Accepts :class:`AtomsBatch` (several graphs), tuples ``(z, energy[, forces])``
    (e.g. ``AtomsDataset.structures()``), or objects with ``z`` and ``energy`` (and
    optionally ``forces``) attributes.
    """
    for s in samples:
        if isinstance(s, AtomsBatch):
            if s.energy is None:
                raise ValueError("an AtomsBatch without energy cannot be used for the fit")
            starts = torch.cumsum(s.natoms, 0) - s.natoms
            for g in range(s.num_graphs):
                lo, hi = int(starts[g]), int(starts[g] + s.natoms[g])
                forces = s.forces[lo:hi] if s.forces is not None else None
                yield s.z[lo:hi], float(s.energy[g]), forces
            continue
        if isinstance(s, tuple | list):
            z, energy, forces = s[0], s[1], (s[2] if len(s) > 2 else None)
        else:
            z, energy, forces = s.z, s.energy, getattr(s, "forces", None)
        if energy is None:
            raise ValueError("a structure without energy cannot be used for the fit")
        forces = None if forces is None else torch.as_tensor(forces)
        yield torch.as_tensor(z, dtype=torch.int64).reshape(-1), float(energy), forces


def fit_reference_energies(samples: Iterable[Any], *, max_z: int = MAX_Z,
                           initial: Tensor | None = None) -> ReferenceFit:
    """Least-squares per-element energies: ``E_s ≈ sum_Z count_s(Z) E_ref[Z]``.

    ``samples`` is an iterable of :class:`AtomsBatch`, ``(z, energy)`` pairs or
    objects with ``z`` and ``energy`` (total, eV).

    Rank-deficient compositions (one stoichiometry, or several proportional ones,
    as in every single LiPS20 system) have no unique answer. The fit returns
    ``initial + delta`` with ``delta`` the **minimum-norm** least-squares correction
    (SVD, ``gelsd``): directions the data cannot see keep their ``initial`` values
    (zeros by default, giving the plain min-norm solution), while the fitted
    energies still reproduce every composition the data contains. With a
    full-rank composition matrix the result is the unique least-squares solution
    and does not depend on ``initial``. Elements absent from the data keep
    ``initial`` exactly.
    """
    base = (torch.zeros(max_z + 1, dtype=torch.float64) if initial is None
            else torch.as_tensor(initial, dtype=torch.float64).clone())
    if base.shape != (max_z + 1,):
        raise ValueError(f"initial must have shape [{max_z + 1}], got {tuple(base.shape)}")
    counts, energies = [], []
    for z, energy, _ in _structures(samples):
        if z.numel() and int(z.max()) > max_z:
            raise ValueError(f"atomic number {int(z.max())} exceeds max_z={max_z}")
        counts.append(torch.bincount(z, minlength=max_z + 1).to(torch.float64))
        energies.append(energy)
    if not counts:
        raise ValueError("no structures to fit reference energies on")
    a_full = torch.stack(counts)
    y = torch.tensor(energies, dtype=torch.float64)
    present = (a_full > 0).any(0).nonzero().flatten()
    a = a_full[:, present]
    target = y - a @ base[present]
    sol = torch.linalg.lstsq(a, target.unsqueeze(-1), driver="gelsd")
    base[present] += sol.solution.squeeze(-1)
    n_atoms = a_full.sum(1)
    residual = (y - a_full @ base) / n_atoms
    return ReferenceFit(
        atomic_energies=base,
        elements=tuple(int(z) for z in present),
        rank=int(sol.rank),
        num_structures=len(energies),
        rms_residual_ev_per_atom=float(residual.square().mean().sqrt()),
    )


def fit_scale_shift(samples: Iterable[Any], atomic_energies: Tensor) -> ScaleShiftFit:
    """``shift`` = mean per-atom residual energy, ``scale`` = RMS force component.

    The residual is ``(E - sum E_ref[z]) / n_atoms``. The scale falls back to the
    standard deviation of that residual when no forces are given, and to 1 when
    neither is informative. Using the force RMS as the energy scale (as nequip does)
    makes unit-variance model outputs give forces of the right magnitude.
    """
    ref = torch.as_tensor(atomic_energies, dtype=torch.float64)
    residuals, sq_force, n_force = [], 0.0, 0
    for z, energy, forces in _structures(samples):
        residuals.append((energy - float(ref[z].sum())) / max(z.numel(), 1))
        if forces is not None:
            f = forces.to(torch.float64)
            sq_force += float(f.square().sum())
            n_force += f.numel()
    if not residuals:
        raise ValueError("no structures to fit scale and shift on")
    r = torch.tensor(residuals, dtype=torch.float64)
    shift = float(r.mean())
    if n_force and sq_force > 0:
        return ScaleShiftFit(scale=math.sqrt(sq_force / n_force), shift=shift, source="forces")
    std = float(r.std()) if r.numel() > 1 else 0.0
    if std > 0:
        return ScaleShiftFit(scale=std, shift=shift, source="energy")
    return ScaleShiftFit(scale=1.0, shift=shift, source="default")
