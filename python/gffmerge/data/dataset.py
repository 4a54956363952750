"""Frames of one or more systems, split by the hash protocol, batched as ``AtomsBatch``."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .batch import AtomsBatch
from .loader import BatchLoader
from .neighbors import neighbor_list
from .paths import data_dir, shipped
from .readers import FrameSet, read
from .split import DEFAULT_MAX_FRAMES, DEFAULT_SEED, SPLITS, assign_splits, sample_frames

_SPLIT_CODE = {name: code for code, name in enumerate(SPLITS)}


class _NeighborCache:
    """Neighbour lists per (system id, frame index, cutoff), stored compactly.

    Sender/receiver are kept as int32 and shifts as int8 when they fit, so a LiPS20 frame of
    128 atoms with ~50 neighbours per atom costs about 70 KiB.
    """

    def __init__(self) -> None:
        self.lists: dict[tuple[int, int, float], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, key: tuple[int, int, float], compute) -> tuple[np.ndarray, np.ndarray]:
        hit = self.lists.get(key)
        if hit is None:
            edge_index, shift = compute()
            small = shift.size == 0 or np.abs(shift).max() <= np.iinfo(np.int8).max
            hit = (edge_index.astype(np.int32), shift.astype(np.int8 if small else np.int32))
            self.lists[key] = hit
        return hit

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes + s.nbytes for e, s in self.lists.values())


class AtomsDataset:
    """Frames drawn from one or more ``FrameSet`` systems, each with a fixed split.

    Frame ``k`` of system ``s`` has the key ``f"{s.name}:{k}"``, where ``k`` is the index in
    the system's source file, and the split of ``split.assign_splits`` for that key. With
    ``max_frames`` set, each system is first sampled by ``split.sample_frames``. Views made by
    ``split``, ``take``, ``subset`` and ``for_system`` share the systems, the system ids
    (indices into ``system_names``) and the neighbour-list cache of the dataset they come from.
    """

    def __init__(self, systems: Sequence[FrameSet], *, max_frames: int | None = None,
                 seed: int = DEFAULT_SEED) -> None:
        systems = tuple(systems)
        names = [s.name for s in systems]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"system names must be unique (they key the split), got "
                             f"duplicates {duplicates}")
        system_ids, frames, splits = [], [], []
        for sid, fs in enumerate(systems):
            chosen = sample_frames(len(fs), max_frames, seed)
            system_ids.append(np.full(len(chosen), sid, dtype=np.int64))
            frames.append(chosen)
            splits.append(np.array([_SPLIT_CODE[s] for s in assign_splits(fs.name, chosen, seed)],
                                   dtype=np.int8))
        self.systems: tuple[FrameSet, ...] = systems
        self.system_names: tuple[str, ...] = tuple(names)
        self.seed = seed
        self.max_frames = max_frames
        self._system = np.concatenate(system_ids) if systems else np.zeros(0, np.int64)
        self._frame = np.concatenate(frames) if systems else np.zeros(0, np.int64)
        self._split = np.concatenate(splits) if systems else np.zeros(0, np.int8)
        self._cache = _NeighborCache()

    def _view(self, positions: np.ndarray) -> AtomsDataset:
        view = object.__new__(AtomsDataset)
        view.__dict__.update(self.__dict__)
        view._system = self._system[positions]
        view._frame = self._frame[positions]
        view._split = self._split[positions]
        return view

    # ----- size and per-frame metadata -------------------------------------------------------
    def __len__(self) -> int:
        return len(self._frame)

    @property
    def system_ids(self) -> np.ndarray:
        """[len] int64 index into ``system_names`` of each frame."""
        return self._system.copy()

    @property
    def frame_indices(self) -> np.ndarray:
        """[len] int64 index of each frame in its system's source file."""
        return self._frame.copy()

    @property
    def split_names(self) -> np.ndarray:
        """[len] split name of each frame."""
        return np.array(SPLITS, dtype="<U5")[self._split]

    @property
    def frame_keys(self) -> tuple[str, ...]:
        return tuple(f"{self.system_names[s]}:{k}" for s, k in zip(self._system, self._frame,
                                                                   strict=True))

    def atom_counts(self) -> np.ndarray:
        """[len] int64 atoms per frame."""
        out = np.empty(len(self), dtype=np.int64)
        for sid, fs in enumerate(self.systems):
            mask = self._system == sid
            out[mask] = fs.atom_counts[self._frame[mask]]
        return out

    @property
    def has_energy(self) -> bool:
        return all(self.systems[s].energy is not None for s in np.unique(self._system))

    @property
    def has_forces(self) -> bool:
        return all(self.systems[s].forces is not None for s in np.unique(self._system))

    def elements(self) -> dict[int, str]:
        """Atomic numbers in this dataset's frames, each with the first system holding it."""
        found: dict[int, str] = {}
        for sid in np.unique(self._system):
            fs = self.systems[int(sid)]
            if isinstance(fs.z, np.ndarray):
                zs = np.unique(fs.z)
            else:
                frames = self._frame[self._system == sid]
                zs = np.unique(np.concatenate([fs.z[int(k)] for k in frames]))
            for z in zs.tolist():
                found.setdefault(int(z), fs.name)
        return dict(sorted(found.items()))

    def check_elements(self, model) -> None:
        """Raise :class:`~gffmerge.errors.DataError` when a frame holds an element ``model``
        has no embedding for (Z outside ``0..model.max_z``), naming it and the model's
        elements (those with a reference energy, else the embedding range)."""
        from ..errors import DataError

        max_z = getattr(model, "max_z", None)
        if max_z is None:
            return
        bad = {z: system for z, system in self.elements().items() if not 0 <= z <= max_z}
        if bad:
            z, system = next(iter(bad.items()))
            refs = getattr(model, "atomic_energies", None)
            known = ([int(i) for i in torch.nonzero(refs).flatten().tolist()]
                     if isinstance(refs, torch.Tensor) else [])
            has = (f"the elements it was trained on are Z = {', '.join(map(str, known))}"
                   if known else f"it embeds Z = 0..{max_z}")
            raise DataError(
                f"system '{system}' holds element Z = {z}, which {type(model).__name__} has no "
                f"embedding for ({has}); use a model that covers Z = "
                f"{', '.join(map(str, bad))} or leave those systems out")

    def structures(self) -> Iterator[tuple[np.ndarray, float | None, np.ndarray | None]]:
        """``(z [n] int64, energy eV or None, forces [n, 3] eV/Å or None)`` per frame.

        No neighbour lists are built, so this is the cheap way to fit per-element reference
        energies or label statistics.
        """
        for sid, k in zip(self._system.tolist(), self._frame.tolist(), strict=True):
            fs = self.systems[sid]
            energy = None if fs.energy is None else float(fs.energy[k])
            yield fs.z_of(k), energy, fs.forces_of(k)

    # ----- views ------------------------------------------------------------------------------
    def split(self, name: str) -> AtomsDataset:
        """The frames of split ``"train"``, ``"val"`` or ``"test"``."""
        if name not in _SPLIT_CODE:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        return self._view(np.flatnonzero(self._split == _SPLIT_CODE[name]))

    def take(self, positions: Sequence[int] | np.ndarray) -> AtomsDataset:
        """The frames at ``positions`` (indices into this dataset, in the order given)."""
        idx = np.asarray(positions, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"positions out of range for a dataset of {len(self)} frames")
        return self._view(idx)

    def subset(self, n: int, seed: int | None = None) -> AtomsDataset:
        """The first ``n`` frames, or with ``seed`` a random ``n`` (kept in dataset order)."""
        n = min(int(n), len(self))
        if seed is None:
            return self._view(np.arange(n))
        chosen = np.random.default_rng(seed).choice(len(self), size=n, replace=False)
        return self._view(np.sort(chosen))

    def for_system(self, system: str | int) -> AtomsDataset:
        """The frames of one system, by name or id; system ids stay those of this dataset."""
        sid = self.system_names.index(system) if isinstance(system, str) else int(system)
        return self._view(np.flatnonzero(self._system == sid))

    # ----- neighbour lists and batches --------------------------------------------------------
    def neighbors(self, position: int, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
        """Cached (edge_index [2, E] int32, cell_shift [E, 3] int8/int32) of one frame."""
        sid, k = int(self._system[position]), int(self._frame[position])
        fs = self.systems[sid]

        def compute():
            return neighbor_list(fs.pos[k], fs.cell_of(k), fs.pbc, cutoff)

        return self._cache.get((sid, k, float(cutoff)), compute)

    @property
    def neighbor_cache_bytes(self) -> int:
        """Memory held by cached neighbour lists (shared with all views)."""
        return self._cache.nbytes

    def clear_neighbor_cache(self) -> None:
        self._cache.lists.clear()

    def batches(self, batch_size: int, cutoff: float, *, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, dtype: torch.dtype = torch.float32) -> BatchLoader:
        """An iterable of ``AtomsBatch`` with ``len()`` = number of batches.

        ``shuffle`` permutes frames with ``numpy.random.default_rng(seed)`` (the same order on
        every pass; change ``seed`` per epoch for a new one). Positions, forces, cells and shifts
        are cast to ``dtype``; energies stay float64.
        """
        return BatchLoader(self, batch_size, cutoff, shuffle=shuffle, seed=seed,
                           drop_last=drop_last, dtype=dtype)

    def batches_for(self, model, batch_size: int, **kwargs) -> BatchLoader:
        """:meth:`batches` at ``model.cutoff`` in the dtype of ``model``'s parameters; data
        with an element the model has no embedding for is refused (:meth:`check_elements`)."""
        self.check_elements(model)
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        return self.batches(batch_size, model.cutoff, dtype=dtype, **kwargs)

    def collate(self, positions: Sequence[int], cutoff: float,
                dtype: torch.dtype = torch.float32) -> AtomsBatch:
        """One ``AtomsBatch`` of the frames at ``positions``."""
        zs, poss, forces, edges, shifts, cells, pbcs, natoms = [], [], [], [], [], [], [], []
        energies = []
        with_energy, with_forces = True, True
        offset = 0
        for position in positions:
            sid, k = int(self._system[position]), int(self._frame[position])
            fs = self.systems[sid]
            n = len(fs.pos[k])
            zs.append(fs.z_of(k))
            poss.append(fs.pos[k])
            edge_index, shift = self.neighbors(position, cutoff)
            edges.append(edge_index.astype(np.int64) + offset)
            shifts.append(shift)
            cell = fs.cell_of(k)
            cells.append(np.zeros((3, 3)) if cell is None else cell)
            pbcs.append(fs.pbc)
            natoms.append(n)
            with_energy = with_energy and fs.energy is not None
            with_forces = with_forces and fs.forces is not None
            if with_energy:
                energies.append(fs.energy[k])
            if with_forces:
                forces.append(fs.forces[k])
            offset += n
        idx = np.asarray(positions, dtype=np.int64)
        natoms_t = torch.tensor(natoms, dtype=torch.int64)
        return AtomsBatch(
            z=torch.from_numpy(np.concatenate(zs).astype(np.int64)),
            pos=torch.from_numpy(np.concatenate(poss)).to(dtype),
            batch=torch.repeat_interleave(torch.arange(len(natoms)), natoms_t),
            edge_index=torch.from_numpy(np.concatenate(edges, axis=1)),
            cell_shift=torch.from_numpy(np.concatenate(shifts)).to(dtype),
            cell=torch.from_numpy(np.stack(cells)).to(dtype),
            pbc=torch.from_numpy(np.stack(pbcs)),
            natoms=natoms_t,
            energy=torch.tensor(energies, dtype=torch.float64) if with_energy else None,
            forces=torch.from_numpy(np.concatenate(forces)).to(dtype) if with_forces else None,
            system=torch.from_numpy(self._system[idx].copy()),
            system_names=self.system_names,
            frame_keys=tuple(f"{self.system_names[self._system[p]]}:{self._frame[p]}"
                             for p in idx),
        )

    # ----- description ------------------------------------------------------------------------
    def split_counts(self) -> dict[str, int]:
        return {name: int((self._split == code).sum()) for name, code in _SPLIT_CODE.items()}

    def describe(self) -> str:
        """Short multi-line summary: systems, frames, atoms, pbc and frames per split."""

        def counts(mask) -> str:
            return " / ".join(f"{name} {int((self._split[mask] == code).sum())}"
                              for name, code in _SPLIT_CODE.items())

        everything = np.ones(len(self), dtype=bool)
        lines = [f"{len(self)} frames from {len(np.unique(self._system))} system(s) "
                 f"({counts(everything)}); sampling max_frames={self.max_frames}, "
                 f"seed {self.seed}"]
        for sid, fs in enumerate(self.systems):
            mask = self._system == sid
            if not mask.any():
                continue
            atoms = np.unique(fs.atom_counts[self._frame[mask]])
            atoms_text = str(atoms[0]) if len(atoms) == 1 else f"{atoms.min()}-{atoms.max()}"
            kind = "periodic" if fs.periodic else "molecule"
            lines.append(f"  {fs.name}: {int(mask.sum())} of {len(fs)} frames, {atoms_text} "
                         f"atoms, {kind} ({counts(mask)})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"AtomsDataset(\n{self.describe()}\n)"


def _resolve(item, root: str | os.PathLike | None) -> FrameSet:
    if isinstance(item, FrameSet):
        return item
    name = str(item)
    if isinstance(item, Path) or Path(name).is_absolute():
        return read(item)
    base = Path(root) if root is not None else None
    if base is not None and (base / name).exists() and not name.endswith(".npz"):
        return read(base / name, name=name)
    try:
        return read(shipped(name, base if base is not None else data_dir()),
                    name=name.removesuffix(".npz"))
    except FileNotFoundError as err:
        if Path(name).exists():
            return read(name)
        raise FileNotFoundError(f"{err} (and {name!r} is not an existing path)") from err


def load_dataset(systems: str | FrameSet | Sequence[str | os.PathLike | FrameSet], *,
                 root: str | os.PathLike | None = None,
                 max_frames: int | None = DEFAULT_MAX_FRAMES,
                 seed: int = DEFAULT_SEED) -> AtomsDataset:
    """Combined dataset of shipped systems, files or ``FrameSet``s, protocol applied per system.

    A relative string names a shipped system (``"lips20/beta-Li3PS4"``, under ``root`` or
    ``data_dir()``), and that name becomes the system name; failing that, an existing path.
    A ``Path`` or an absolute string is read with ``read`` (system name = file stem). ``root``
    may also hold DeePMD folders or other files addressed by relative name. Example::

        ds = load_dataset(["lips20/beta-Li3PS4", "lips20/gamma-Li3PS4"])
        train = ds.split("train")
    """
    if isinstance(systems, (str, FrameSet, Path)):
        systems = [systems]
    return AtomsDataset([_resolve(s, root) for s in systems], max_frames=max_frames, seed=seed)
