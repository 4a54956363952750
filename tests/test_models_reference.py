"""Reference-energy and scale/shift fits (gffmerge.models.reference)."""

from __future__ import annotations

import math

import pytest
import torch

from gffmerge.data.batch import AtomsBatch
from gffmerge.models import fit_reference_energies, fit_scale_shift

TRUE = {1: -13.6, 6: -1030.4, 8: -2041.9, 16: -280.25}


def synthetic(n: int, seed: int, noise: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        counts = torch.randint(0, 6, (len(TRUE),), generator=gen)
        counts[0] += 1
        z = torch.repeat_interleave(torch.tensor(list(TRUE)), counts)
        energy = sum(TRUE[int(a)] for a in z) + noise * float(torch.randn(1, generator=gen))
        out.append((z, energy))
    return out


def test_recovers_known_energies():
    fit = fit_reference_energies(synthetic(40, seed=0))
    assert fit.elements == tuple(sorted(TRUE)) and fit.rank == 4 and not fit.rank_deficient
    for z, e in TRUE.items():
        assert math.isclose(float(fit.atomic_energies[z]), e, abs_tol=1e-8)
    mask = torch.ones(119, dtype=torch.bool)
    mask[list(TRUE)] = False
    assert fit.atomic_energies[mask].abs().max() == 0  # unseen elements untouched
    assert fit.rms_residual_ev_per_atom < 1e-9
    assert fit.atomic_energies.dtype == torch.float64


def test_noisy_fit_is_close_and_initial_is_irrelevant_at_full_rank():
    data = synthetic(200, seed=1, noise=0.05)
    fit = fit_reference_energies(data)
    initial = torch.full((119,), 123.0, dtype=torch.float64)
    fit2 = fit_reference_energies(data, initial=initial)
    torch.testing.assert_close(fit2.atomic_energies[list(TRUE)],
                               fit.atomic_energies[list(TRUE)], rtol=0, atol=1e-8)
    assert fit2.atomic_energies[2] == 123.0  # absent element keeps its initial value
    for z, e in TRUE.items():
        assert abs(float(fit.atomic_energies[z]) - e) < 0.05


def lips_like(formula: dict[int, int], frames: int, per_atom: dict[int, float], seed: int):
    gen = torch.Generator().manual_seed(seed)
    z = torch.repeat_interleave(torch.tensor(list(formula)), torch.tensor(list(formula.values())))
    base = sum(per_atom[int(a)] for a in z)
    return [(z, base + 0.5 * float(torch.randn(1, generator=gen))) for _ in range(frames)]


def test_rank_deficient_single_stoichiometry():
    # beta-Li3PS4 (Li24P8S32) and gamma-Li3PS4 (Li48P16S64): proportional compositions.
    per_atom = {3: -190.0, 15: -180.0, 16: -280.0}
    data = (lips_like({3: 24, 15: 8, 16: 32}, 30, per_atom, 0)
            + lips_like({3: 48, 15: 16, 16: 64}, 30, per_atom, 1))
    fit = fit_reference_energies(data)
    assert fit.rank == 1 and fit.rank_deficient and fit.elements == (3, 15, 16)
    # Min-norm: the solution lies along the composition direction (3, 1, 4)...
    sol = fit.atomic_energies[[3, 15, 16]]
    direction = torch.tensor([3.0, 1.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(sol / sol.norm(), -direction / direction.norm())
    # ...and still reproduces the mean energy of the composition.
    mean_per_atom = sum(e for _, e in data) / sum(len(z) for z, _ in data)
    assert abs(float(sol @ direction) / 8 - mean_per_atom) < 1e-2
    assert fit.rms_residual_ev_per_atom < 0.05


def test_rank_deficient_keeps_initial_values_in_unseen_directions():
    per_atom = {3: -190.0, 15: -180.0, 16: -280.0}
    data = lips_like({3: 24, 15: 8, 16: 32}, 20, per_atom, 2)
    initial = torch.zeros(119, dtype=torch.float64)
    initial[[3, 15, 16]] = torch.tensor([-191.0, -179.0, -279.0], dtype=torch.float64)
    fit = fit_reference_energies(data, initial=initial)
    delta = fit.atomic_energies - initial
    direction = torch.zeros(119, dtype=torch.float64)
    direction[[3, 15, 16]] = torch.tensor([3.0, 1.0, 4.0], dtype=torch.float64)
    # The correction is purely along the composition; orthogonal components unchanged.
    orth = delta - (delta @ direction) / (direction @ direction) * direction
    assert orth.abs().max() < 1e-10
    counts = torch.tensor([24.0, 8.0, 32.0], dtype=torch.float64)
    mean_energy = sum(e for _, e in data) / len(data)
    assert abs(float(fit.atomic_energies[[3, 15, 16]] @ counts) - mean_energy) < 1e-8


def test_accepts_batches_and_objects():
    data = synthetic(12, seed=3)
    z = torch.cat([zz for zz, _ in data])
    natoms = torch.tensor([len(zz) for zz, _ in data])
    batch = AtomsBatch(
        z=z, pos=torch.zeros(len(z), 3), batch=torch.repeat_interleave(torch.arange(12), natoms),
        edge_index=torch.zeros(2, 0, dtype=torch.int64), cell_shift=torch.zeros(0, 3),
        cell=torch.zeros(12, 3, 3), pbc=torch.zeros(12, 3, dtype=torch.bool), natoms=natoms,
        energy=torch.tensor([e for _, e in data], dtype=torch.float64))

    class Frame:
        def __init__(self, z, energy):
            self.z, self.energy = z, energy

    a = fit_reference_energies(data).atomic_energies
    torch.testing.assert_close(fit_reference_energies([batch]).atomic_energies, a)
    torch.testing.assert_close(
        fit_reference_energies([Frame(z.numpy(), e) for z, e in data]).atomic_energies, a)


def test_errors():
    with pytest.raises(ValueError, match="no structures"):
        fit_reference_energies([])
    with pytest.raises(ValueError, match="without energy"):
        fit_reference_energies([(torch.tensor([1]), None, None)])
    with pytest.raises(ValueError, match="max_z"):
        fit_reference_energies([(torch.tensor([200]), -1.0)])
    with pytest.raises(ValueError, match="initial"):
        fit_reference_energies(synthetic(3, 0), initial=torch.zeros(5))


def test_scale_shift():
    ref = torch.zeros(119, dtype=torch.float64)
    ref[1] = -10.0
    z = torch.tensor([1, 1])
    forces = torch.tensor([[1.0, -1.0, 2.0], [0.0, 2.0, -2.0]])
    fit = fit_scale_shift([(z, -19.0, forces), (z, -21.0, forces)], ref)
    assert fit.source == "forces"
    assert math.isclose(fit.scale, math.sqrt(14 / 6))
    assert math.isclose(fit.shift, 0.0, abs_tol=1e-12)
    energy_only = fit_scale_shift([(z, -19.0), (z, -22.0)], ref)
    assert energy_only.source == "energy"
    assert math.isclose(energy_only.shift, -0.25)
    assert math.isclose(energy_only.scale, 1.5 / math.sqrt(2))
    assert fit_scale_shift([(z, -20.0)], ref).source == "default"
