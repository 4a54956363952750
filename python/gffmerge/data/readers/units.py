"""Label units: the factor that turns a format's energies and forces into eV and eV/Å."""

from __future__ import annotations

KCAL_PER_MOL_IN_EV = 0.0433641
"""1 kcal/mol in eV (the factor used for the shipped rMD17 files and the MD17 readers)."""

UNITS = ("eV", "kcal/mol")


def label_scale(units: str | None, default: str) -> tuple[float, str]:
    """Factor turning energies (and forces per Å) in ``units`` into eV; and a note."""
    units = default if units is None else units
    if units == "eV":
        return 1.0, "energy eV, forces eV/Å (not rescaled)"
    if units == "kcal/mol":
        return KCAL_PER_MOL_IN_EV, (
            f"energy kcal/mol -> eV and forces kcal/mol/Å -> eV/Å "
            f"(x KCAL_PER_MOL_IN_EV = {KCAL_PER_MOL_IN_EV})")
    raise ValueError(f"unknown units {units!r}; expected one of {list(UNITS)}")


def scaled(values, factor: float):
    if values is None or factor == 1.0:
        return values
    if isinstance(values, list):
        return [v * factor for v in values]
    return values * factor

