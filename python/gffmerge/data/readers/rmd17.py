"""The revised MD17 npz layout: ``nuclear_charges, coords[, energies, forces]``, kcal/mol."""

from __future__ import annotations

import os

from .frameset import FrameSet
from .npzfile import check_keys, found_keys, has_keys, load_npz
from .registry import register_reader, require_path
from .units import label_scale, scaled

REQUIRED, OPTIONAL = ("nuclear_charges", "coords"), ("energies", "forces")


@register_reader("rmd17", suffixes=(".npz",), detect=has_keys(REQUIRED),
                 expects=f"keys {list(REQUIRED)}", describe=found_keys)
def read_rmd17(path: str | os.PathLike, *, name: str | None = None,
               units: str | None = None) -> FrameSet:
    """rMD17 npz (``nuclear_charges, coords, energies, forces``); kcal/mol unless ``units``."""
    p = require_path(path)
    data = load_npz(p)
    check_keys(p, data, "rmd17", REQUIRED, OPTIONAL)
    factor, note = label_scale(units, "kcal/mol")
    return FrameSet(
        name=name or p.stem, z=data["nuclear_charges"], pos=data["coords"],
        energy=scaled(data.get("energies"), factor),
        forces=scaled(data.get("forces"), factor), source=str(p),
        units_note=f"rMD17 npz (nuclear_charges, coords, energies, forces): positions Å; {note}",
    )
