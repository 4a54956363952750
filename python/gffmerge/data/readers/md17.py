"""The original MD17 / sGDML npz layout: ``R, z[, E, F]`` in kcal/mol and kcal/mol/Å."""

from __future__ import annotations

import os

from .frameset import FrameSet
from .npzfile import check_keys, found_keys, has_keys, load_npz
from .registry import register_reader, require_path
from .units import label_scale, scaled

REQUIRED, OPTIONAL = ("R", "z"), ("E", "F")


@register_reader("md17", suffixes=(".npz",), detect=has_keys(REQUIRED),
                 expects=f"keys {list(REQUIRED)}", describe=found_keys)
def read_md17(path: str | os.PathLike, *, name: str | None = None,
              units: str | None = None) -> FrameSet:
    """Original MD17 / sGDML npz (``R, z, E, F``); labels kcal/mol unless ``units``."""
    p = require_path(path)
    data = load_npz(p)
    check_keys(p, data, "md17", REQUIRED, OPTIONAL)
    factor, note = label_scale(units, "kcal/mol")
    return FrameSet(
        name=name or p.stem, z=data["z"], pos=data["R"],
        energy=scaled(data.get("E"), factor), forces=scaled(data.get("F"), factor),
        source=str(p), units_note=f"MD17 npz (R, z, E, F): positions Å; {note}",
    )
