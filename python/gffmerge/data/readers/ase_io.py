"""Anything ``ase.io.read`` reads (extxyz, traj, ...): the fallback for unclaimed files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .frameset import FrameSet
from .registry import FORMATS, register_reader, require_path
from .units import label_scale, scaled


def _calc_results(atoms) -> dict:
    calc = getattr(atoms, "calc", None)
    return dict(getattr(calc, "results", {}) or {}) if calc is not None else {}


def _find_label(atoms, key: str | None, kind: str):
    """(value, where) for ``kind`` in {"energy", "forces"}, or (None, None)."""
    store = atoms.info if kind == "energy" else atoms.arrays
    results = _calc_results(atoms)
    if key is not None:
        candidates = [(store, key, f"{'info' if kind == 'energy' else 'arrays'}[{key!r}]"),
                      (results, key, f"calculator {key!r}")]
    else:
        ref = "REF_energy" if kind == "energy" else "REF_forces"
        place = "info" if kind == "energy" else "arrays"
        candidates = [(store, ref, f"{place}[{ref!r}]"), (results, kind, f"calculator {kind!r}"),
                      (store, kind, f"{place}[{kind!r}]")]
    for source, k, where in candidates:
        if k in source and source[k] is not None:
            return source[k], where
    return None, None


def _collect(frames, key: str | None, kind: str, path: Path):
    found = [_find_label(a, key, kind) for a in frames]
    have = [v is not None for v, _ in found]
    if not any(have):
        if key is not None:
            raise ValueError(f"{path}: no frame has the {kind} key {key!r}; "
                             f"frame 0 has info keys {sorted(frames[0].info)} and arrays "
                             f"{sorted(frames[0].arrays)}")
        return None, f"no {kind} labels"
    if not all(have):
        missing = [i for i, h in enumerate(have) if not h][:10]
        raise ValueError(f"{path}: {kind} label missing in {have.count(False)} of "
                         f"{len(frames)} frames (first: {missing}); pass {kind}_key=... or "
                         "fix the file")
    sources = sorted({w for _, w in found})
    values = [np.asarray(v, dtype=np.float64) for v, _ in found]
    if kind == "energy":
        not_scalar = [i for i, v in enumerate(values) if v.size != 1][:10]
        if not_scalar:
            raise ValueError(f"{path}: energy label is not a scalar in frame(s) {not_scalar}")
        values = np.array([v.reshape(-1)[0] for v in values], dtype=np.float64)
    return values, f"{kind} from {' / '.join(sources)}"


@register_reader("ase", fallback=True, aliases=("extxyz",),
                 expects="anything ase.io.read reads")
def read_ase(path: str | os.PathLike, *, name: str | None = None,
             energy_key: str | None = None, forces_key: str | None = None,
             units: str | None = None, index: str | int | slice = ":",
             ase_format: str | None = None) -> FrameSet:
    """Anything ``ase.io.read(path, index=":")`` reads (extxyz, traj, ...).

    Energy is taken from ``info[energy_key]`` if given, else ``info["REF_energy"]``, else the
    attached calculator's ``energy``, else ``info["energy"]``; forces likewise from
    ``arrays[forces_key]``, ``arrays["REF_forces"]``, the calculator, ``arrays["forces"]``.
    Labels are assumed eV and eV/Å unless ``units="kcal/mol"``.
    """
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    p = require_path(path)
    try:
        frames = ase.io.read(p, index=index, format=ase_format)
    except UnknownFileTypeError as err:
        raise ValueError(f"unknown format: ASE cannot tell the file type of {p} ({err}); pass "
                         f"format= one of {list(FORMATS)} (and ase_format= for ASE)") from err
    except Exception as err:
        raise ValueError(f"ASE could not read {p}: {type(err).__name__}: {err}") from err
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise ValueError(f"{p}: no frames (index={index!r})")
    pbcs = np.array([a.pbc for a in frames], dtype=bool)
    if not (pbcs == pbcs[0]).all():
        bad = int(np.flatnonzero((pbcs != pbcs[0]).any(axis=1))[0])
        raise ValueError(f"{p}: pbc differs between frames (frame 0 {pbcs[0].tolist()}, "
                         f"frame {bad} {pbcs[bad].tolist()}); split the file by pbc")
    energy, e_note = _collect(frames, energy_key, "energy", p)
    forces, f_note = _collect(frames, forces_key, "forces", p)
    factor, note = label_scale(units, "eV")
    unit_hint = "" if units else " (assumed; pass units='kcal/mol' to convert)"
    return FrameSet(
        name=name or p.stem,
        z=[a.numbers for a in frames], pos=[a.positions for a in frames],
        energy=scaled(energy, factor), forces=scaled(forces, factor),
        cell=np.array([a.cell.array for a in frames]) if pbcs[0].any() else None,
        pbc=pbcs[0], source=str(p),
        units_note=f"ASE ({ase_format or 'auto'}): {e_note}; {f_note}; positions Å; "
                   f"{note}{unit_hint}",
    )

