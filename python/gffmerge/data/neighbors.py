"""Radius-graph neighbour lists (vesin), in the ``AtomsBatch`` edge convention."""

from __future__ import annotations

import numpy as np


def neighbor_list(pos, cell, pbc, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs closer than ``cutoff`` Å, both directions, as (edge_index, cell_shift).

    ``pos`` [N, 3] Å; ``cell`` [3, 3] rows are lattice vectors (``None`` or anything when no
    direction is periodic); ``pbc`` a bool or [3] bools, mixed pbc allowed with a full-rank cell.
    Returns ``edge_index`` [2, E] int64 with row 0 the sender ``j`` and row 1 the receiver ``i``,
    and ``cell_shift`` [E, 3] int64 such that

        vec = pos[j] - pos[i] + cell_shift @ cell,   |vec| < cutoff.

    Periodic images are enumerated as far as the cutoff needs, so a cutoff larger than half the
    cell gives several edges between the same pair (and edges from an atom to its own images).
    No edge joins an atom to itself with zero shift. Edges are grouped by receiver.
    Computed in float64 whatever the input dtype.
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    points = np.ascontiguousarray(pos, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"pos has shape {points.shape}, expected (atoms, 3)")
    periodic = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if periodic.any():
        if cell is None:
            raise ValueError(f"pbc={periodic.tolist()} needs a cell, got None")
        box = np.ascontiguousarray(cell, dtype=np.float64)
        if box.shape != (3, 3):
            raise ValueError(f"cell has shape {box.shape}, expected (3, 3)")
        if abs(np.linalg.det(box)) < 1e-12:
            raise ValueError("cell is singular (zero volume); periodic and mixed pbc need three "
                             f"independent lattice vectors, got {box.tolist()}")
    else:
        box = np.zeros((3, 3), dtype=np.float64)
    if len(points) == 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    import vesin  # imported here: vesin pulls in ASE when it is installed

    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True, sorted=True)
    periodic_arg = bool(periodic[0]) if (periodic == periodic[0]).all() else periodic.tolist()
    i, j, shift = calculator.compute(points, box, periodic_arg, quantities="ijS")
    edge_index = np.stack([j.astype(np.int64), i.astype(np.int64)])
    return edge_index, shift.astype(np.int64).reshape(-1, 3)
