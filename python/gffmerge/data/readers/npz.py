"""gffmerge's own npz layout: ``z, pos[, energy, forces, cell, pbc]`` in eV, eV/Å, Å."""

from __future__ import annotations

import os

import numpy as np

from .frameset import FrameSet
from .npzfile import check_keys, found_keys, has_keys, load_npz
from .registry import register_reader, require_path
from .units import label_scale, scaled

REQUIRED, OPTIONAL = ("z", "pos"), ("energy", "forces", "cell", "pbc")


@register_reader("npz", suffixes=(".npz",), detect=has_keys(REQUIRED),
                 expects=f"keys {list(REQUIRED)}", describe=found_keys)
def read_npz(path: str | os.PathLike, *, name: str | None = None,
             units: str | None = None) -> FrameSet:
    """gffmerge's npz layout (``z, pos, energy, forces[, cell, pbc]``), eV unless ``units``."""
    p = require_path(path)
    data = load_npz(p)
    check_keys(p, data, "npz", REQUIRED, OPTIONAL)
    factor, note = label_scale(units, "eV")
    pbc = data.get("pbc", np.zeros(3, dtype=bool))
    return FrameSet(
        name=name or p.stem, z=data["z"], pos=data["pos"],
        energy=scaled(data.get("energy"), factor), forces=scaled(data.get("forces"), factor),
        cell=data.get("cell"), pbc=pbc, source=str(p),
        units_note=f"gffmerge npz: positions Å; {note}",
    )
