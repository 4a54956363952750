"""The common base of gffmerge force fields: energy assembly, forces, references.

A model predicts a dimensionless per-atom energy ``e_i``; the base turns it into a
total energy in eV::

    E = sum_i (scale * e_i + shift + E_ref[z_i])

``atomic_energies`` (``E_ref``, indexed by Z), ``scale`` and ``shift`` are float64
buffers in the state dict. They stay float64 when the model is cast with ``.float()``
or ``.to(dtype)``, and the total is assembled in float64, so the large reference part
of LiPS-like energies (-180 to -280 eV/atom, ~-3e4 eV per cell) loses no precision.
``energy`` is therefore always float64; ``forces`` have the model's dtype.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gffmerge.data.batch import AtomsBatch

MAX_Z = 118

# Buffers that keep float64 whatever dtype the rest of the model is cast to.
_FLOAT64_BUFFERS = ("atomic_energies", "scale", "shift")


class ForceField(nn.Module):
    """Base class of the gffmerge force fields.

    Subclasses set ``name`` and ``conservative``, store their constructor kwargs in
    ``self.config`` and implement :meth:`atomwise`. Conservative models get
    ``forces = -dE/dpos`` by autograd; the others return direct forces from
    :meth:`atomwise`, multiplied by ``scale``.
    """

    name: ClassVar[str] = ""
    conservative: ClassVar[bool] = True

    def __init__(self, cutoff: float, max_z: int = MAX_Z):
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive (Å), got {cutoff}")
        self.cutoff = float(cutoff)
        self.max_z = int(max_z)
        self.config: dict[str, Any] = {}
        self.register_buffer("atomic_energies", torch.zeros(self.max_z + 1, dtype=torch.float64))
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("shift", torch.zeros((), dtype=torch.float64))

    # -- to implement --------------------------------------------------------------

    def atomwise(self, batch: AtomsBatch, direct_forces: bool) -> tuple[Tensor, Tensor | None]:
        """Per-atom outputs before scaling: ``(e [N], direct forces [N, 3] or None)``.

        ``direct_forces`` is only ever True for non-conservative models.
        """
        raise NotImplementedError

    # -- public API ----------------------------------------------------------------

    def forward(self, batch: AtomsBatch, compute_forces: bool = True) -> dict[str, Tensor]:
        """Energies and forces of every graph in ``batch``.

        Returns ``{"energy": [G] float64 eV, "forces": [N, 3] eV/Å}`` (no ``forces``
        when ``compute_forces`` is False). Conservative forces are ``-dE/dpos`` with
        ``create_graph=self.training``, so a force loss can be backpropagated while
        training; they are computed under an enabled grad mode even inside
        ``torch.no_grad()``, but cannot be inside ``torch.inference_mode()``.
        """
        if not (self.conservative and compute_forces):
            e_atom, forces = self.atomwise(batch, direct_forces=compute_forces)
            out = {"energy": self._total_energy(batch, e_atom)}
            if compute_forces:
                out["forces"] = forces * self.scale.to(forces.dtype)
            return out
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} computes forces as -dE/dpos, which needs autograd; "
                "call it with compute_forces=False (or measure_forward) under "
                "torch.inference_mode()")
        with torch.enable_grad():
            pos = batch.pos
            if not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
                batch = replace(batch, pos=pos)
            e_atom, _ = self.atomwise(batch, direct_forces=False)
            energy = self._total_energy(batch, e_atom)
            if energy.requires_grad:
                (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training,
                                              allow_unused=True)
            else:
                grad = None
        forces = -grad if grad is not None else torch.zeros_like(pos)
        return {"energy": energy, "forces": forces}

    def measure_forward(self, batch: AtomsBatch) -> dict[str, Tensor]:
        """The forward the Gram collector runs (without autograd, under ``torch.no_grad()``).

        Every ``nn.Linear`` that contributes to the prediction sees its inputs: energy
        only for conservative models (forces would need a backward pass), the
        full forward including the direct force head otherwise.
        """
        return self(batch, compute_forces=not self.conservative)

    def set_energy_normalisation(self, atomic_energies: Tensor | None = None,
                                 scale: float | None = None,
                                 shift: float | None = None) -> None:
        """Overwrite ``E_ref`` ([max_z + 1] eV), ``scale`` (eV) and/or ``shift`` (eV/atom)."""
        with torch.no_grad():
            if atomic_energies is not None:
                atomic_energies = torch.as_tensor(atomic_energies, dtype=torch.float64)
                if atomic_energies.shape != self.atomic_energies.shape:
                    raise ValueError(f"atomic_energies must have shape "
                                     f"{tuple(self.atomic_energies.shape)} (indexed by Z), "
                                     f"got {tuple(atomic_energies.shape)}")
                self.atomic_energies.copy_(atomic_energies)
            if scale is not None:
                self.scale.fill_(float(scale))
            if shift is not None:
                self.shift.fill_(float(shift))

    # -- internals -----------------------------------------------------------------

    def _total_energy(self, batch: AtomsBatch, e_atom: Tensor) -> Tensor:
        """[N] per-atom model output -> [G] float64 total energy in eV."""
        n_graphs = batch.num_graphs
        e_graph = e_atom.new_zeros(n_graphs).index_add_(0, batch.batch, e_atom)
        ref = self.atomic_energies.index_select(0, batch.z)
        ref_graph = ref.new_zeros(n_graphs).index_add_(0, batch.batch, ref)
        return (self.scale * e_graph.to(torch.float64)
                + self.shift * batch.natoms.to(torch.float64) + ref_graph)

    def _apply(self, fn, recurse=True):
        # Keep the energy buffers float64 through .float()/.half()/.to(dtype); a device
        # move still applies, from the untouched float64 originals.
        originals = {name: getattr(self, name) for name in _FLOAT64_BUFFERS}
        super()._apply(fn, recurse)
        for name, orig in originals.items():
            new = getattr(self, name)
            if new.dtype != torch.float64:
                setattr(self, name, orig.to(device=new.device))
        return self
