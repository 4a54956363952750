"""Read labelled atomic structures into a ``FrameSet``, converting labels to eV and eV/Å.

Supported inputs:

* ``"npz"``: gffmerge's own layout (``z, pos, energy, forces[, cell, pbc]``; see
  ``data/README.md``), eV, eV/Å, Å.
* ``"md17"``: original MD17/sGDML npz (``R, z, E, F``), kcal/mol and kcal/mol/Å.
* ``"rmd17"``: revised MD17 npz (``nuclear_charges, coords, energies, forces``), kcal/mol.
* ``"deepmd"``: a DeePMD system folder (``type.raw``, ``type_map.raw``, ``set.*/coord.npy``,
  ``energy.npy``, ``force.npy``, ``box.npy``), eV, eV/Å, Å. This is LiPS20's native format.
* ``"ase"``: extxyz and anything else ``ase.io.read`` understands, eV unless told otherwise.

Every reader says in ``FrameSet.units_note`` what units it assumed and what it converted.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KCAL_PER_MOL_IN_EV = 0.0433641
"""1 kcal/mol in eV (the factor used for the shipped rMD17 files and the MD17 readers)."""

FORMATS = ("npz", "md17", "rmd17", "deepmd", "ase")
UNITS = ("eV", "kcal/mol")

_LAYOUTS = {
    # format: (required keys, optional keys)
    "npz": (("z", "pos"), ("energy", "forces", "cell", "pbc")),
    "md17": (("R", "z"), ("E", "F")),
    "rmd17": (("nuclear_charges", "coords"), ("energies", "forces")),
}

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


def _label_scale(units: str | None, default: str) -> tuple[float, str]:
    """Factor turning energies (and forces per Å) in ``units`` into eV; and a note."""
    units = default if units is None else units
    if units == "eV":
        return 1.0, "energy eV, forces eV/Å (not rescaled)"
    if units == "kcal/mol":
        return KCAL_PER_MOL_IN_EV, (
            f"energy kcal/mol -> eV and forces kcal/mol/Å -> eV/Å "
            f"(x KCAL_PER_MOL_IN_EV = {KCAL_PER_MOL_IN_EV})")
    raise ValueError(f"unknown units {units!r}; expected one of {list(UNITS)}")


def _scaled(values, factor: float):
    if values is None or factor == 1.0:
        return values
    if isinstance(values, list):
        return [v * factor for v in values]
    return values * factor


def _require_path(path: str | os.PathLike, *, folder: bool = False) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if folder and not p.is_dir():
        raise ValueError(f"{p} is a file; a DeePMD system is a folder holding type.raw "
                         "and set.*/coord.npy")
    if not folder and p.is_dir():
        raise ValueError(f"{p} is a folder; pass a file (or format='deepmd' for a DeePMD "
                         "system folder)")
    return p


def _load_npz(path: Path, keys_only: bool = False) -> dict[str, Array | None]:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz (zip) archive; write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: (None if keys_only else npz[k]) for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable .npz archive without pickles: {err}") from err


def _npz_keys(path: Path, data: dict, fmt: str) -> None:
    required, optional = _LAYOUTS[fmt]
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(
            f"{path}: missing key(s) {missing} for the {fmt!r} layout; found keys "
            f"{sorted(data)}; expected {list(required)} plus optional {list(optional)}"
        )


def read_npz(path: str | os.PathLike, *, name: str | None = None,
             units: str | None = None) -> FrameSet:
    """gffmerge's npz layout (``z, pos, energy, forces[, cell, pbc]``), eV unless ``units``."""
    p = _require_path(path)
    data = _load_npz(p)
    _npz_keys(p, data, "npz")
    factor, note = _label_scale(units, "eV")
    pbc = data.get("pbc", np.zeros(3, dtype=bool))
    return FrameSet(
        name=name or p.stem, z=data["z"], pos=data["pos"],
        energy=_scaled(data.get("energy"), factor), forces=_scaled(data.get("forces"), factor),
        cell=data.get("cell"), pbc=pbc, source=str(p),
        units_note=f"gffmerge npz: positions Å; {note}",
    )


def read_md17(path: str | os.PathLike, *, name: str | None = None,
              units: str | None = None) -> FrameSet:
    """Original MD17 / sGDML npz (``R, z, E, F``); labels kcal/mol unless ``units``."""
    p = _require_path(path)
    data = _load_npz(p)
    _npz_keys(p, data, "md17")
    factor, note = _label_scale(units, "kcal/mol")
    return FrameSet(
        name=name or p.stem, z=data["z"], pos=data["R"],
        energy=_scaled(data.get("E"), factor), forces=_scaled(data.get("F"), factor),
        source=str(p), units_note=f"MD17 npz (R, z, E, F): positions Å; {note}",
    )


def read_rmd17(path: str | os.PathLike, *, name: str | None = None,
               units: str | None = None) -> FrameSet:
    """rMD17 npz (``nuclear_charges, coords, energies, forces``); kcal/mol unless ``units``."""
    p = _require_path(path)
    data = _load_npz(p)
    _npz_keys(p, data, "rmd17")
    factor, note = _label_scale(units, "kcal/mol")
    return FrameSet(
        name=name or p.stem, z=data["nuclear_charges"], pos=data["coords"],
        energy=_scaled(data.get("energies"), factor),
        forces=_scaled(data.get("forces"), factor), source=str(p),
        units_note=f"rMD17 npz (nuclear_charges, coords, energies, forces): positions Å; {note}",
    )


def read_deepmd(path: str | os.PathLike, *, name: str | None = None,
                type_map: Sequence[str] | None = None, units: str | None = None) -> FrameSet:
    """A DeePMD system folder; all ``set.*`` folders are concatenated in sorted order.

    Element symbols come from ``type_map.raw`` (or ``type_map``). A ``nopbc`` file marks a
    non-periodic system; otherwise ``box.npy`` ([F, 9], rows = lattice vectors) is required.
    """
    from ase.data import atomic_numbers

    p = _require_path(path, folder=True)
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
    factor, note = _label_scale(units, "eV")
    return FrameSet(
        name=name or p.name, z=z, pos=np.concatenate(pos),
        energy=_scaled(np.concatenate(energy)[:, 0], factor) if energy else None,
        forces=(_scaled(np.concatenate(forces).reshape(-1, n_atoms, 3), factor)
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

    p = _require_path(path)
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
    factor, note = _label_scale(units, "eV")
    unit_hint = "" if units else " (assumed; pass units='kcal/mol' to convert)"
    return FrameSet(
        name=name or p.stem,
        z=[a.numbers for a in frames], pos=[a.positions for a in frames],
        energy=_scaled(energy, factor), forces=_scaled(forces, factor),
        cell=np.array([a.cell.array for a in frames]) if pbcs[0].any() else None,
        pbc=pbcs[0], source=str(p),
        units_note=f"ASE ({ase_format or 'auto'}): {e_note}; {f_note}; positions Å; "
                   f"{note}{unit_hint}",
    )


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of ``path``: npz keys, a folder with ``type.raw``, or ASE otherwise."""
    p = _require_path(path, folder=Path(path).is_dir())
    if p.is_dir():
        if (p / "type.raw").is_file():
            return "deepmd"
        raise ValueError(f"unknown format: {p} is a folder without type.raw, so it is not a "
                         "DeePMD system; pass the system folder itself or a file")
    if p.suffix == ".npz":
        keys = set(_load_npz(p, keys_only=True))
        for fmt in ("npz", "md17", "rmd17"):
            if set(_LAYOUTS[fmt][0]) <= keys:
                return fmt
        layouts = "; ".join(f"{f}: {list(r)}" for f, (r, _) in _LAYOUTS.items())
        raise ValueError(f"unknown npz layout in {p}: found keys {sorted(keys)}; expected the "
                         f"keys of one of ({layouts}); pass format= to force a layout")
    return "ase"


_READERS = {"npz": read_npz, "md17": read_md17, "rmd17": read_rmd17, "deepmd": read_deepmd,
            "ase": read_ase}


def read(path: str | os.PathLike, format: str = "auto", **kwargs) -> FrameSet:
    """Read ``path`` into a ``FrameSet`` (eV, eV/Å, Å).

    ``format``: ``"auto"`` (default) or one of ``FORMATS`` (``"extxyz"`` is an alias of
    ``"ase"``). ``kwargs`` go to the reader: ``name``, ``units`` (``"eV"`` or ``"kcal/mol"``,
    overriding the format's default), and for ASE ``energy_key``, ``forces_key``, ``index``,
    ``ase_format``; for DeePMD ``type_map``. ``units_note`` of the result says what was assumed.
    """
    fmt = "ase" if format == "extxyz" else format
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in _READERS:
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of "
                         f"{list(FORMATS)} (or 'extxyz')")
    return _READERS[fmt](path, **kwargs)
