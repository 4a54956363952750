"""The graph batch every force-field model in gffmerge consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class AtomsBatch:
    """Several atomic structures packed into one disconnected graph.

    Edges follow the message-passing direction ``sender -> receiver``:
    ``edge_index[0]`` is the sender (neighbour ``j``), ``edge_index[1]`` the receiver
    (centre ``i``). The edge vector points from receiver to sender::

        vec_e = pos[sender] - pos[receiver] + cell_shift[e] @ cell[graph of receiver]

    so it is differentiable in ``pos`` (conservative forces) and in ``cell`` (stress).
    Non-periodic graphs carry a zero cell and zero shifts.

    Shapes: N atoms, E edges, G graphs.
    """

    z: Tensor  # [N] int64 atomic numbers
    pos: Tensor  # [N, 3] float, Å
    batch: Tensor  # [N] int64 graph index of each atom
    edge_index: Tensor  # [2, E] int64 (sender, receiver)
    cell_shift: Tensor  # [E, 3] float, integer multiples of the cell vectors
    cell: Tensor  # [G, 3, 3] float, rows are lattice vectors, Å (zeros if not periodic)
    pbc: Tensor  # [G, 3] bool
    natoms: Tensor  # [G] int64
    energy: Tensor | None = None  # [G] float64, total energy, eV
    forces: Tensor | None = None  # [N, 3] float, eV/Å
    system: Tensor | None = None  # [G] int64 index into ``system_names``
    system_names: tuple[str, ...] = ()
    frame_keys: tuple[str, ...] = ()  # "system:frame" per graph

    @property
    def num_graphs(self) -> int:
        return int(self.natoms.shape[0])

    @property
    def num_atoms(self) -> int:
        return int(self.z.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def edge_vectors(self) -> Tensor:
        """[E, 3] vectors from receiver to sender, including the periodic shift."""
        sender, receiver = self.edge_index
        shift = torch.einsum("ek,ekl->el", self.cell_shift, self.cell[self.batch[receiver]])
        return self.pos[sender] - self.pos[receiver] + shift

    def to(self, device=None, dtype: torch.dtype | None = None) -> AtomsBatch:
        """Move tensors to ``device``; floating tensors (not energy) also to ``dtype``."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                cast = dtype if (dtype is not None and v.is_floating_point()
                                 and f.name != "energy") else None
                v = v.to(device=device, dtype=cast)
            out[f.name] = v
        return replace(self, **out)
