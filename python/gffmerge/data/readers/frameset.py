"""``FrameSet``: the frames of one system as every reader returns them (eV, eV/Å, Å)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Array = np.ndarray


@dataclass
class FrameSet:
    """Frames of one system, with energies and forces in eV and eV/Å.

    ``F`` frames. When every frame has the same number of atoms ``N``, ``pos`` and ``forces``
    are single arrays ``[F, N, 3]``; otherwise they are lists of ``[N_f, 3]`` arrays. ``z`` is
    one ``[N]`` int64 array when all frames share the composition, else a list of ``[N_f]``.
    ``cell`` is ``[F, 3, 3]`` (rows are lattice vectors, Å) or ``None`` when no direction is
    periodic; ``pbc`` is ``[3]`` bool and the same for all frames. The constructor normalises
    these layouts and raises ``ValueError`` for inconsistent shapes or non-finite values.
    """

    name: str
    z: Array | list[Array]
    pos: Array | list[Array]
    energy: Array | None = None
    forces: Array | list[Array] | None = None
    cell: Array | None = None
    pbc: Array = field(default_factory=lambda: np.zeros(3, dtype=bool))
    units_note: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or self.name
        self.pos = _per_frame(self.pos, "pos", where)
        n_frames = len(self.pos)
        counts = np.array([len(p) for p in self.pos], dtype=np.int64)
        self.z = _normalise_z(self.z, n_frames, counts, where)
        if self.forces is not None:
            self.forces = _per_frame(self.forces, "forces", where)
            _check_same_layout(self.forces, self.pos, "forces", where)
        if self.energy is not None:
            energy = np.asarray(self.energy, dtype=np.float64)
            if energy.ndim == 2 and energy.shape[1] == 1:
                energy = energy[:, 0]
            if energy.shape != (n_frames,):
                raise ValueError(
                    f"{where}: energy has shape {energy.shape}, expected ({n_frames},) "
                    f"(one value per frame, pos has {n_frames} frames)"
                )
            self.energy = energy
        pbc = np.asarray(self.pbc, dtype=bool)
        pbc = np.broadcast_to(pbc, (3,)).copy() if pbc.ndim == 0 else pbc
        if pbc.shape != (3,):
            raise ValueError(f"{where}: pbc has shape {pbc.shape}, expected (3,)")
        self.pbc = pbc
        if not pbc.any():
            self.cell = None  # a dummy box of a molecule carries no information
        elif self.cell is None:
            raise ValueError(f"{where}: pbc={pbc.tolist()} but no cell was given")
        else:
            cell = np.asarray(self.cell)
            if cell.shape == (3, 3):
                cell = np.broadcast_to(cell, (n_frames, 3, 3))
            elif cell.shape == (n_frames, 9):
                cell = cell.reshape(n_frames, 3, 3)
            if cell.shape != (n_frames, 3, 3):
                raise ValueError(
                    f"{where}: cell has shape {cell.shape}, expected (3, 3) or "
                    f"({n_frames}, 3, 3) to match pos with {n_frames} frames"
                )
            self.cell = cell
        self._check_finite(where)

    def _check_finite(self, where: str) -> None:
        checks = {"pos": self.pos, "energy": self.energy, "forces": self.forces,
                  "cell": self.cell}
        for label, values in checks.items():
            if values is None:
                continue
            if isinstance(values, list):
                bad = np.array([not np.isfinite(v).all() for v in values], dtype=bool)
            else:
                bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
            if bad.any():
                frames = np.flatnonzero(bad)
                shown = ", ".join(str(i) for i in frames[:10])
                more = f" and {len(frames) - 10} more" if len(frames) > 10 else ""
                raise ValueError(
                    f"{where}: {label} contains NaN or Inf in {len(frames)} frame(s): "
                    f"[{shown}{more}]; remove those frames or fix the labels"
                )

    def __len__(self) -> int:
        return len(self.pos)

    @property
    def n_frames(self) -> int:
        return len(self.pos)

    @property
    def uniform(self) -> bool:
        """True when all frames have the same atom count (``pos`` is one array)."""
        return isinstance(self.pos, np.ndarray)

    @property
    def periodic(self) -> bool:
        return bool(self.pbc.any())

    @property
    def atom_counts(self) -> Array:
        """[F] int64 number of atoms per frame."""
        if isinstance(self.pos, np.ndarray):
            return np.full(len(self.pos), self.pos.shape[1], dtype=np.int64)
        return np.array([len(p) for p in self.pos], dtype=np.int64)

    def z_of(self, i: int) -> Array:
        return self.z if isinstance(self.z, np.ndarray) else self.z[i]

    def cell_of(self, i: int) -> Array | None:
        return None if self.cell is None else self.cell[i]

    def forces_of(self, i: int) -> Array | None:
        return None if self.forces is None else self.forces[i]

    def __repr__(self) -> str:
        counts = self.atom_counts
        atoms = (f"{counts[0]} atoms" if len(counts) and (counts == counts[0]).all()
                 else f"{counts.min(initial=0)}-{counts.max(initial=0)} atoms")
        labels = "+".join(k for k in ("energy", "forces") if getattr(self, k) is not None)
        return (f"FrameSet({self.name!r}, {len(self)} frames, {atoms}, "
                f"pbc={self.pbc.tolist()}, labels={labels or 'none'})")


def _per_frame(values, label: str, where: str) -> Array | list[Array]:
    """[F, N, 3] array when all frames have N atoms, else a list of [N_f, 3] arrays."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        if values.ndim != 3 or values.shape[2] != 3:
            raise ValueError(f"{where}: {label} has shape {values.shape}, expected "
                             "(frames, atoms, 3)")
        return values
    frames = [np.asarray(v) for v in values]
    for i, v in enumerate(frames):
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"{where}: {label} of frame {i} has shape {v.shape}, "
                             "expected (atoms, 3)")
    if frames and all(len(v) == len(frames[0]) for v in frames):
        return np.stack(frames)
    return frames


def _check_same_layout(values, pos, label: str, where: str) -> None:
    if isinstance(pos, np.ndarray) and isinstance(values, np.ndarray):
        if values.shape != pos.shape:
            raise ValueError(f"{where}: {label} has shape {values.shape} but pos has shape "
                             f"{pos.shape}; they must match")
        return
    if len(values) != len(pos):
        raise ValueError(f"{where}: {label} has {len(values)} frames but pos has {len(pos)}")
    for i, (v, p) in enumerate(zip(values, pos, strict=True)):
        if v.shape != p.shape:
            raise ValueError(f"{where}: {label} of frame {i} has shape {v.shape} but pos "
                             f"has shape {p.shape}; they must match")


def _normalise_z(z, n_frames: int, counts: Array, where: str) -> Array | list[Array]:
    if isinstance(z, np.ndarray) and z.dtype != object and z.ndim == 1:
        rows = None
        shared = z.astype(np.int64)
    else:
        rows = [np.asarray(r).astype(np.int64).reshape(-1) for r in z]
        if len(rows) != n_frames:
            raise ValueError(f"{where}: z has {len(rows)} frames but pos has {n_frames}")
        same = all(len(r) == len(rows[0]) and (r == rows[0]).all() for r in rows)
        shared = rows[0] if (rows and same) else None
    if shared is not None:
        if n_frames and (counts != len(shared)).any():
            bad = int(np.flatnonzero(counts != len(shared))[0])
            raise ValueError(f"{where}: z has shape {shared.shape} but pos of frame {bad} "
                             f"has {counts[bad]} atoms; they must match")
        return shared
    for i, (r, n) in enumerate(zip(rows, counts, strict=True)):
        if len(r) != n:
            raise ValueError(f"{where}: z of frame {i} has {len(r)} atoms but pos has {n}")
    return rows

