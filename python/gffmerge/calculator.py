"""An ASE calculator over a gffmerge force field: energy, forces and, where defined, stress.

Typical use::

    from gffmerge.calculator import GffmergeCalculator
    atoms.calc = GffmergeCalculator.from_checkpoint("checkpoints/lips20/painn_beta-Li3PS4.pt")
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(1000)

ASE is an optional dependency (``pip install 'gffmerge[ase]'``); ``import gffmerge`` never
imports it, only this module does.

Neighbour list. The list is built at ``model.cutoff + skin`` and reused until some atom has
moved more than ``skin / 2`` from where it was at the last build (then no pair closer than the
cutoff can be missing from the list), or the atomic numbers, cell or pbc change. Pairs between
the cutoff and ``cutoff + skin`` contribute nothing: every model multiplies each edge's
messages (and GNS its force-head terms) by a cosine cutoff that is exactly zero there.

Stress. For conservative models (SchNet, PaiNN) on fully periodic systems the stress is
``(1 / V) dE/d(eps)``: positions and cell are deformed by ``(1 + eps)`` with a symmetric
strain ``eps`` inside the forward, and autograd gives forces and stress in one backward pass.
ASE's sign convention: positive stress is tensile (the cell would like to shrink).

Embedding switch. A model wrapped in :class:`~gffmerge.models.embedding_switch.EmbeddingSwitch`
embeds atoms with the table of one system; ``system=`` (a name such as ``"rmd17/ethanol"``,
its unique short form ``"ethanol"``, or a table index) says which, and every structure this
calculator sees is labelled with it. :meth:`GffmergeCalculator.set_system` changes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch

try:
    from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
    from ase.stress import full_3x3_to_voigt_6_stress
except ImportError as err:
    raise ImportError(
        f"gffmerge.calculator needs ASE, an optional dependency ({err}); install it with: "
        "pip install 'gffmerge[ase]'") from err

from gffmerge.checkpoint import load_checkpoint
from gffmerge.data.batch import AtomsBatch
from gffmerge.data.neighbors import neighbor_list
from gffmerge.models.base import ForceField
from gffmerge.models.embedding_switch import EmbeddingSwitch

DEFAULT_SKIN = 0.4  # Å


@dataclass
class _VerletList:
    """A neighbour list at ``cutoff + skin`` and the structure it was built for."""

    numbers: np.ndarray  # [N] int
    pos: np.ndarray  # [N, 3] float64, Å, positions at the build
    cell: np.ndarray  # [3, 3] float64
    pbc: np.ndarray  # [3] bool
    edge_index: torch.Tensor  # [2, E] int64 (sender, receiver), on the model's device
    cell_shift: torch.Tensor  # [E, 3] in the model's dtype

    def valid_for(self, numbers: np.ndarray, pos: np.ndarray, cell: np.ndarray,
                  pbc: np.ndarray, skin: float, dtype: torch.dtype,
                  device: torch.device) -> bool:
        if not (np.array_equal(numbers, self.numbers) and np.array_equal(pbc, self.pbc)
                and np.array_equal(cell, self.cell) and self.cell_shift.dtype == dtype
                and self.cell_shift.device == device):
            return False
        moved = np.sqrt(((pos - self.pos) ** 2).sum(axis=1)).max(initial=0.0)
        return bool(moved <= 0.5 * skin)


class GffmergeCalculator(Calculator):
    """ASE calculator for a gffmerge :class:`~gffmerge.models.base.ForceField`.

    Results: ``energy`` and ``free_energy`` (total energy, eV, the model's float64 value),
    ``forces`` ([N, 3] eV/Å, float64 numpy) and, for conservative models on fully periodic
    systems, ``stress`` (Voigt order xx, yy, zz, yz, xz, xy, eV/Å³). Positions, cell and
    shifts are cast to the model's parameter dtype (a float32 model sees float32 positions).

    ``model``: the force field; it is moved to ``device`` when one is given (in place, as
    ``nn.Module.to`` does), else it is used where it is. ``skin`` (Å, >= 0): Verlet skin of the
    neighbour list, see the module docstring; 0 rebuilds the list whenever anything moved.
    ``system`` (name or index): the embedding table of a switched model, see the module
    docstring; required for such a model unless it was built with ``unknown="merged"``,
    and an error for any other model.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: ForceField, *, device: str | torch.device | None = None,
                 skin: float = DEFAULT_SKIN, system: str | int | None = None, **kwargs):
        if not isinstance(model, ForceField):
            raise TypeError(f"GffmergeCalculator needs a gffmerge ForceField (SchNet, PaiNN, "
                            f"GNS), got {type(model).__name__}")
        if not skin >= 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        super().__init__(**kwargs)
        if device is not None:
            model.to(device)
        self.model = model
        self.skin = float(skin)
        self.metadata: dict = {}
        self.neighbor_list_builds = 0
        self._list: _VerletList | None = None
        self.system: str | None = None
        self.set_system(system)
        self.implemented_properties = (["energy", "free_energy", "forces", "stress"]
                                       if model.conservative
                                       else ["energy", "free_energy", "forces"])

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        skin: float = DEFAULT_SKIN, system: str | int | None = None,
                        **kwargs) -> GffmergeCalculator:
        """A calculator for the model in a gffmerge checkpoint (``metadata`` kept on it)."""
        model, metadata = load_checkpoint(path, map_location=device)
        calc = cls(model, device=device, skin=skin, system=system, **kwargs)
        calc.metadata = metadata
        return calc

    def set_system(self, system: str | int | None) -> None:
        """Use the embedding table of ``system`` (name or index) from now on.

        Stored results are discarded. ``None`` is allowed only for a switched model built
        with ``unknown="merged"`` (it then uses the merged table) or a model without a switch.
        """
        model = self.model
        if not isinstance(model, EmbeddingSwitch):
            if system is not None:
                raise ValueError(f"system={system!r} picks an embedding table, but this "
                                 f"{type(model).__name__} has no embedding switch; drop "
                                 "system= or load a switched checkpoint")
            self.system = None
        elif system is None:
            if model.unknown != "merged":
                raise ValueError(f"this model picks atom embeddings per system: pass "
                                 f"system= one of {list(model.systems)} (or an index)")
            self.system = None
        else:
            self.system = model.systems[model.system_index(system)]
        self.reset()

    @property
    def dtype(self) -> torch.dtype:
        """The model's parameter dtype: positions, cell and shifts are cast to it."""
        param = next(self.model.parameters(), None)
        return param.dtype if param is not None else torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    # -- ASE interface -------------------------------------------------------------

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name == "stress" and not self.model.conservative:
            raise PropertyNotImplementedError(self._no_stress_reason())
        return super().get_property(name, atoms, allow_calculation)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Energy and forces always; stress too when ``"stress"`` is asked for."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_stress = "stress" in properties
        if want_stress and not self.model.conservative:
            raise PropertyNotImplementedError(self._no_stress_reason())
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                f"stress is defined here only for fully periodic systems; these atoms have "
                f"pbc={atoms.pbc.tolist()}")
        batch = self._batch(atoms)
        if self.model.conservative:
            energy, forces, virial = self._conservative(batch, want_stress)
        else:
            with torch.no_grad():
                out = self.model(batch, compute_forces=True)
            energy, forces, virial = out["energy"], out["forces"], None
        energy_ev = float(energy.detach().sum().item())
        self.results = {
            "energy": energy_ev,
            "free_energy": energy_ev,
            "forces": forces.detach().to("cpu", torch.float64).numpy(),
        }
        if virial is not None:
            volume = abs(float(np.linalg.det(atoms.cell.array)))
            stress = virial.detach().to("cpu", torch.float64).numpy() / volume
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)

    # -- internals -----------------------------------------------------------------

    def _no_stress_reason(self) -> str:
        return (f"stress is not available for {type(self.model).__name__}: it predicts forces "
                "directly (a non-conservative force head), so there is no energy derivative "
                "consistent with its forces to take w.r.t. strain; use a conservative model "
                "(SchNet, PaiNN) for stress or variable-cell simulations")

    def _conservative(self, batch: AtomsBatch, want_stress: bool):
        """(energy [1] float64, forces [N, 3], dE/d(eps) [3, 3] or None) by one backward."""
        with torch.inference_mode(False), torch.enable_grad():
            pos = batch.pos.detach().clone().requires_grad_(True)
            inputs = [pos]
            if want_stress:
                strain = torch.zeros(3, 3, dtype=pos.dtype, device=pos.device,
                                     requires_grad=True)
                eye = torch.eye(3, dtype=pos.dtype, device=pos.device)
                deform = eye + 0.5 * (strain + strain.T)
                batch = replace(batch, pos=pos @ deform, cell=batch.cell @ deform)
                inputs.append(strain)
            else:
                batch = replace(batch, pos=pos)
            energy = self.model(batch, compute_forces=False)["energy"]
            grads = torch.autograd.grad(energy.sum(), inputs, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        return energy, -grads[0], (grads[1] if want_stress else None)

    def _neighbors(self, numbers: np.ndarray, pos: np.ndarray, cell: np.ndarray,
                   pbc: np.ndarray, dtype: torch.dtype, device: torch.device) -> _VerletList:
        """The Verlet list for this structure, rebuilt only when the old one may miss pairs."""
        if self._list is not None and self._list.valid_for(numbers, pos, cell, pbc, self.skin,
                                                           dtype, device):
            return self._list
        edge_index, shift = neighbor_list(pos, cell if pbc.any() else None, pbc,
                                          self.model.cutoff + self.skin)
        self._list = _VerletList(
            numbers=numbers.copy(), pos=pos.copy(), cell=cell.copy(), pbc=pbc.copy(),
            edge_index=torch.from_numpy(edge_index).to(device),
            cell_shift=torch.from_numpy(shift).to(device, dtype))
        self.neighbor_list_builds += 1
        return self._list

    def _batch(self, atoms) -> AtomsBatch:
        numbers = np.asarray(atoms.numbers)
        pos = np.asarray(atoms.positions, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        dev, dt = self.device, self.dtype
        nl = self._neighbors(numbers, pos, cell, pbc, dt, dev)
        n = len(numbers)
        return AtomsBatch(
            z=torch.as_tensor(numbers, dtype=torch.int64, device=dev),
            pos=torch.as_tensor(pos, device=dev).to(dt),
            batch=torch.zeros(n, dtype=torch.int64, device=dev),
            edge_index=nl.edge_index,
            cell_shift=nl.cell_shift,
            cell=torch.as_tensor(cell if pbc.any() else np.zeros((3, 3)), device=dev)
            .to(dt).unsqueeze(0),
            pbc=torch.as_tensor(pbc, device=dev).unsqueeze(0),
            natoms=torch.tensor([n], dtype=torch.int64, device=dev),
            system=(None if self.system is None
                    else torch.zeros(1, dtype=torch.int64, device=dev)),
            system_names=() if self.system is None else (self.system,),
        )
