"""DeePMD system folders (``type.raw``, ``type_map.raw``, ``set.*/*.npy``), eV, eV/Å, Å."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .frameset import Array, FrameSet
from .registry import register_reader, require_path
from .units import label_scale, scaled


def _is_deepmd(path: Path) -> bool:
    return (path / "type.raw").is_file()


@register_reader("deepmd", folder=True, detect=_is_deepmd, expects="type.raw")
def read_deepmd(path: str | os.PathLike, *, name: str | None = None,
                type_map: Sequence[str] | None = None, units: str | None = None) -> FrameSet:
    """A DeePMD system folder; all ``set.*`` folders are concatenated in sorted order.

    Element symbols come from ``type_map.raw`` (or ``type_map``). A ``nopbc`` file marks a
    non-periodic system; otherwise ``box.npy`` ([F, 9], rows = lattice vectors) is required.
    """
    from ase.data import atomic_numbers

    p = require_path(path, folder=True)
    if not (p / "type.raw").is_file():
        raise ValueError(f"{p} is not a DeePMD system folder: no type.raw (expected type.raw, "
                         "type_map.raw and set.*/coord.npy)")
    types = np.loadtxt(p / "type.raw", dtype=np.int64, ndmin=1).reshape(-1)
    if type_map is None:
        if not (p / "type_map.raw").is_file():
            raise ValueError(f"{p}: no type_map.raw; pass type_map=['Li', 'P', ...] to name "
                             "the element of each type index")
        type_map = (p / "type_map.raw").read_text().split()
    unknown = [s for s in type_map if s not in atomic_numbers]
    if unknown:
        raise ValueError(f"{p}: type map {list(type_map)} has unknown element symbol(s) {unknown}")
    if types.size and types.max() >= len(type_map):
        raise ValueError(f"{p}: type.raw uses type {types.max()} but the type map "
                         f"{list(type_map)} has only {len(type_map)} entries")
    z = np.array([atomic_numbers[type_map[t]] for t in types], dtype=np.int64)
    sets = sorted(d for d in p.glob("set.*") if d.is_dir())
    if not sets:
        raise ValueError(f"{p}: no set.* folders (expected set.000/coord.npy ...)")
    periodic = not (p / "nopbc").exists()
    n_atoms = len(z)
    pos, energy, forces, box = [], [], [], []
    for s in sets:
        if not (s / "coord.npy").is_file():
            raise ValueError(f"{s}: missing coord.npy; found {sorted(f.name for f in s.iterdir())}")
        coord = _set_array(s, "coord.npy", None, 3 * n_atoms)
        n = len(coord)
        pos.append(coord.reshape(n, n_atoms, 3))
        for fname, out, width in (("energy.npy", energy, 1), ("force.npy", forces, 3 * n_atoms),
                                  ("box.npy", box, 9)):
            if (s / fname).is_file():
                out.append(_set_array(s, fname, n, width))
    for label, got in (("energy.npy", energy), ("force.npy", forces)):
        if got and len(got) != len(sets):
            raise ValueError(f"{p}: {label} is present in only {len(got)} of {len(sets)} sets")
    if periodic and len(box) != len(sets):
        raise ValueError(f"{p}: box.npy missing in {len(sets) - len(box)} set(s); add it, or "
                         "create an empty 'nopbc' file for a non-periodic system")
    factor, note = label_scale(units, "eV")
    return FrameSet(
        name=name or p.name, z=z, pos=np.concatenate(pos),
        energy=scaled(np.concatenate(energy)[:, 0], factor) if energy else None,
        forces=(scaled(np.concatenate(forces).reshape(-1, n_atoms, 3), factor)
                if forces else None),
        cell=np.concatenate(box).reshape(-1, 3, 3) if periodic else None,
        pbc=np.full(3, periodic), source=str(p),
        units_note=f"DeePMD folder ({len(sets)} set(s), type map {list(type_map)}): "
                   f"positions and box Å; {note}",
    )


def _set_array(folder: Path, fname: str, n_frames: int | None, width: int) -> Array:
    """``folder/fname`` as [n_frames, width] (DeePMD stores one flattened row per frame)."""
    arr = np.load(folder / fname)
    rows = len(arr) if (n_frames is None and arr.ndim >= 1) else n_frames
    if arr.ndim == 0 or arr.size != rows * width or len(arr) != rows:
        want = f"({'frames' if n_frames is None else n_frames}, {width})"
        raise ValueError(f"{folder / fname} has shape {arr.shape}, expected {want}"
                         + ("" if n_frames is None else f" to match the {n_frames} frames "
                            "of coord.npy"))
    return arr.reshape(rows, width)

