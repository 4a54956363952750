"""Readers, shipped files and the data-folder resolver."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from gffmerge.data import (
    KCAL_PER_MOL_IN_EV,
    FrameSet,
    available,
    data_dir,
    detect_format,
    read,
    shipped,
)

LIPS20 = {"beta-Li3PS4": 64, "gamma-Li3PS4": 128, "Li3P": 64, "Li4P2S6": 96, "Li7PS6": 56,
          "Li2PS3-hex": 96, "Li2PS3-orth": 96, "Li48P16S61": 125, "Li": 54, "P": 48, "S": 32,
          "P2S5": 28, "P4S3": 56}
RMD17 = {"azobenzene": 24, "benzene": 12, "ethanol": 9, "malonaldehyde": 9, "naphthalene": 18,
         "paracetamol": 20, "salicylic_acid": 16}


# ----- shipped data ---------------------------------------------------------------------------
def test_available_lists_all_shipped_systems():
    names = available()
    assert names == sorted([f"lips20/{n}" for n in LIPS20] + [f"rmd17/{n}" for n in RMD17])


def test_shipped_bytes_match_checksums():
    root = data_dir()
    lines = (root / "SHA256SUMS").read_text().split("\n")
    sums = dict(reversed(line.split()) for line in lines if line.strip())
    assert len(sums) == 20
    for rel, digest in sums.items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, rel


@pytest.mark.parametrize("system,atoms", sorted(LIPS20.items()))
def test_shipped_lips20(system, atoms):
    fs = read(shipped(f"lips20/{system}"))
    assert fs.name == system
    assert fs.pos.shape == (1000, atoms, 3) and fs.pos.dtype == np.float32
    assert fs.forces.shape == (1000, atoms, 3) and fs.forces.dtype == np.float32
    assert fs.energy.shape == (1000,) and fs.energy.dtype == np.float64
    assert fs.z.shape == (atoms,) and fs.z.dtype == np.int64
    assert set(fs.z.tolist()) <= {3, 15, 16}
    assert fs.pbc.tolist() == [True, True, True]
    assert fs.cell.shape == (1000, 3, 3) and abs(np.linalg.det(fs.cell[0])) > 100
    # eV totals of a plane-wave code: -170 to -290 eV per atom
    assert -290 < fs.energy.mean() / atoms < -170
    assert "eV" in fs.units_note and "not rescaled" in fs.units_note


@pytest.mark.parametrize("system,atoms", sorted(RMD17.items()))
def test_shipped_rmd17(system, atoms):
    fs = read(shipped(f"rmd17/{system}"))
    assert fs.pos.shape == (2000, atoms, 3) and fs.energy.shape == (2000,)
    assert fs.cell is None and not fs.periodic
    assert fs.uniform and len(fs) == 2000
    # already converted to eV: ethanol is about -4210 eV in total
    assert -900 < fs.energy.mean() / atoms < -400
    np.testing.assert_allclose(fs.forces.sum(axis=1), 0.0, atol=1e-4)


def test_data_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "fam").mkdir()
    np.savez(tmp_path / "fam" / "x.npz", z=np.array([1]), pos=np.zeros((1, 1, 3)))
    monkeypatch.setenv("GFFMERGE_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    assert available() == ["fam/x"]
    assert shipped("fam/x") == tmp_path / "fam" / "x.npz"
    monkeypatch.setenv("GFFMERGE_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="GFFMERGE_DATA.*not a directory"):
        data_dir()


def test_data_dir_default_is_repo_data(monkeypatch):
    monkeypatch.delenv("GFFMERGE_DATA", raising=False)
    assert data_dir() == Path(__file__).resolve().parents[1] / "data"


def test_shipped_unknown_name_lists_available():
    with pytest.raises(FileNotFoundError, match=r"no shipped system 'lips20/nope'.*beta-Li3PS4"):
        shipped("lips20/nope")


# ----- small files in every format ------------------------------------------------------------
def _frames(rng, n_frames=4, n_atoms=5):
    pos = rng.normal(size=(n_frames, n_atoms, 3)) * 2.0
    energy = rng.normal(size=n_frames) * 10 - 100
    forces = rng.normal(size=(n_frames, n_atoms, 3))
    return pos, energy, forces


def test_read_our_npz_periodic(tmp_path):
    rng = np.random.default_rng(0)
    pos, energy, forces = _frames(rng)
    cell = np.diag([5.0, 6.0, 7.0]).astype(np.float32)
    path = tmp_path / "sys.npz"
    np.savez(path, z=np.array([1, 6, 6, 8, 1]), pos=pos.astype(np.float32), energy=energy,
             forces=forces.astype(np.float32), cell=cell, pbc=np.array([True] * 3))
    assert detect_format(path) == "npz"
    fs = read(path)
    assert fs.name == "sys" and fs.uniform
    np.testing.assert_array_equal(fs.energy, energy)
    np.testing.assert_array_equal(fs.pos, pos.astype(np.float32))
    assert fs.cell.shape == (4, 3, 3)
    np.testing.assert_array_equal(fs.cell_of(2), cell)
    assert fs.pbc.tolist() == [True, True, True]


def test_read_our_npz_unlabelled_molecule(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, z=np.array([8, 1, 1]), pos=np.zeros((2, 3, 3)))
    fs = read(path, name="water")
    assert fs.name == "water" and fs.energy is None and fs.forces is None and fs.cell is None


def test_read_md17_converts_kcal_per_mol(tmp_path):
    rng = np.random.default_rng(1)
    pos, energy, forces = _frames(rng)
    path = tmp_path / "md17_ethanol.npz"
    # sGDML files store E as [F, 1]
    np.savez(path, R=pos, z=np.array([6, 6, 8, 1, 1]), E=energy[:, None], F=forces,
             name="ethanol", theory="PBE+TS")
    assert detect_format(path) == "md17"
    fs = read(path)
    np.testing.assert_allclose(fs.energy, energy * 0.0433641, rtol=1e-15)
    np.testing.assert_allclose(fs.forces, forces * 0.0433641, rtol=1e-15)
    np.testing.assert_array_equal(fs.pos, pos)
    assert KCAL_PER_MOL_IN_EV == 0.0433641
    assert "kcal/mol -> eV" in fs.units_note and "0.0433641" in fs.units_note
    # the default can be overridden when a file is already in eV
    fs_ev = read(path, units="eV")
    np.testing.assert_array_equal(fs_ev.energy, energy)


def test_read_rmd17(tmp_path):
    rng = np.random.default_rng(2)
    pos, energy, forces = _frames(rng)
    path = tmp_path / "rmd17_x.npz"
    np.savez(path, nuclear_charges=np.array([6, 6, 8, 1, 1]), coords=pos, energies=energy,
             forces=forces, old_energies=energy, old_indices=np.arange(4))
    assert detect_format(path) == "rmd17"
    fs = read(path)
    np.testing.assert_allclose(fs.energy, energy * KCAL_PER_MOL_IN_EV)
    np.testing.assert_allclose(fs.forces, forces * KCAL_PER_MOL_IN_EV)
    assert fs.z.tolist() == [6, 6, 8, 1, 1]
    assert "rMD17" in fs.units_note


def _write_deepmd(folder: Path, rng, sets=(3, 2), n_atoms=4, nopbc=False):
    folder.mkdir()
    (folder / "type.raw").write_text("\n".join(["0", "1", "2", "2"][:n_atoms]) + "\n")
    (folder / "type_map.raw").write_text("Li\nP\nS\n")
    if nopbc:
        (folder / "nopbc").write_text("")
    expected = []
    for k, n in enumerate(sets):
        s = folder / f"set.{k:03d}"
        s.mkdir()
        pos, energy, forces = _frames(rng, n, n_atoms)
        box = np.tile((np.diag([8.0, 9.0, 10.0]) + np.triu(np.ones((3, 3)), 1)).reshape(9),
                      (n, 1))
        np.save(s / "coord.npy", pos.reshape(n, -1))
        np.save(s / "energy.npy", energy)
        np.save(s / "force.npy", forces.reshape(n, -1))
        if not nopbc:
            np.save(s / "box.npy", box)
        expected.append((pos, energy, forces, box))
    return expected


def test_read_deepmd_folder(tmp_path):
    expected = _write_deepmd(tmp_path / "Li2P1S1", np.random.default_rng(3))
    assert detect_format(tmp_path / "Li2P1S1") == "deepmd"
    fs = read(tmp_path / "Li2P1S1")
    assert fs.name == "Li2P1S1" and len(fs) == 5
    assert fs.z.tolist() == [3, 15, 16, 16]
    np.testing.assert_array_equal(fs.pos, np.concatenate([e[0] for e in expected]))
    np.testing.assert_array_equal(fs.energy, np.concatenate([e[1] for e in expected]))
    np.testing.assert_array_equal(fs.forces, np.concatenate([e[2] for e in expected]))
    np.testing.assert_array_equal(fs.cell[0], expected[0][3][0].reshape(3, 3))
    assert fs.cell[0, 0, 1] == 1.0  # rows are lattice vectors, kept as stored
    assert fs.pbc.all() and "DeePMD" in fs.units_note and "not rescaled" in fs.units_note


def test_read_deepmd_nopbc_and_type_map_argument(tmp_path):
    _write_deepmd(tmp_path / "mol", np.random.default_rng(4), sets=(2,), nopbc=True)
    (tmp_path / "mol" / "type_map.raw").unlink()
    with pytest.raises(ValueError, match="no type_map.raw; pass type_map"):
        read(tmp_path / "mol")
    fs = read(tmp_path / "mol", type_map=["H", "C", "O"])
    assert fs.z.tolist() == [1, 6, 8, 8] and fs.cell is None and not fs.periodic


def test_read_extxyz_ref_labels_and_calculator(tmp_path):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    rng = np.random.default_rng(5)
    frames, energies, forces = [], [], []
    for n in (3, 4, 3):  # variable atom count
        a = Atoms(numbers=[8] + [1] * (n - 1), positions=rng.normal(size=(n, 3)),
                  cell=[[6, 0, 0], [1, 6, 0], [0, 0, 6]], pbc=True)
        e, f = float(rng.normal()), rng.normal(size=(n, 3))
        a.info["REF_energy"] = e
        a.arrays["REF_forces"] = f
        frames.append(a)
        energies.append(e)
        forces.append(f)
    frames[1].calc = SinglePointCalculator(frames[1], energy=123.0, forces=np.zeros((4, 3)))
    path = tmp_path / "mixed.extxyz"
    write(path, frames, format="extxyz")
    assert detect_format(path) == "ase"
    fs = read(path)
    assert not fs.uniform and [len(p) for p in fs.pos] == [3, 4, 3]
    assert isinstance(fs.z, list) and fs.z[1].tolist() == [8, 1, 1, 1]
    np.testing.assert_allclose(fs.energy, energies)  # REF_ wins over the calculator
    for got, want in zip(fs.forces, forces, strict=True):
        np.testing.assert_allclose(got, want)
    assert fs.cell.shape == (3, 3, 3) and fs.cell[0, 1, 0] == 1.0
    assert "REF_energy" in fs.units_note and "assumed" in fs.units_note


def test_read_extxyz_calculator_keys_and_kcal(tmp_path):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    rng = np.random.default_rng(6)
    frames = []
    for _ in range(3):
        a = Atoms("CO", positions=rng.normal(size=(2, 3)))
        a.calc = SinglePointCalculator(a, energy=float(rng.normal()),
                                       forces=rng.normal(size=(2, 3)))
        a.info["dft_e"] = float(rng.normal())
        a.arrays["dft_f"] = rng.normal(size=(2, 3))
        frames.append(a)
    path = tmp_path / "co.xyz"
    write(path, frames)
    back = [a.calc.results["energy"] for a in frames]
    fs = read(path)
    np.testing.assert_allclose(fs.energy, back)
    assert fs.uniform and fs.pos.shape == (3, 2, 3) and fs.cell is None
    fs_kcal = read(path, units="kcal/mol")
    np.testing.assert_allclose(fs_kcal.energy, np.array(back) * KCAL_PER_MOL_IN_EV)
    np.testing.assert_allclose(fs_kcal.forces, fs.forces * KCAL_PER_MOL_IN_EV)
    fs_key = read(path, format="extxyz", energy_key="dft_e", forces_key="dft_f")
    np.testing.assert_allclose(fs_key.energy, [a.info["dft_e"] for a in frames], atol=1e-7)
    np.testing.assert_allclose(fs_key.forces, np.stack([a.arrays["dft_f"] for a in frames]),
                               atol=1e-7)
    with pytest.raises(ValueError, match="no frame has the energy key 'nope'"):
        read(path, energy_key="nope")


# ----- bad input ------------------------------------------------------------------------------
def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read("/definitely/not/here.npz")


def test_missing_keys_lists_found_and_expected(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, z=np.array([1, 1]), energy=np.zeros(2))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['pos'\].*found keys "
                                         r"\['energy', 'z'\].*expected \['z', 'pos'\]"):
        read(path, format="npz")
    with pytest.raises(ValueError, match=r"unknown npz layout.*found keys \['energy', 'z'\]"):
        read(path)


def test_shape_mismatch_names_both_shapes(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, z=np.array([1, 1]), pos=np.zeros((3, 2, 3)), forces=np.zeros((3, 5, 3)))
    with pytest.raises(ValueError, match=r"forces has shape \(3, 5, 3\) but pos has shape "
                                         r"\(3, 2, 3\)"):
        read(path)
    np.savez(path, z=np.array([1, 1]), pos=np.zeros((3, 2, 3)), energy=np.zeros(4))
    with pytest.raises(ValueError, match=r"energy has shape \(4,\), expected \(3,\)"):
        read(path)
    np.savez(path, z=np.array([1, 1, 1]), pos=np.zeros((3, 2, 3)))
    with pytest.raises(ValueError, match=r"z has shape \(3,\) but pos of frame 0 has 2 atoms"):
        read(path)


def test_nan_labels_name_the_frames(tmp_path):
    energy = np.zeros(6)
    energy[[1, 4]] = [np.nan, np.inf]
    path = tmp_path / "nan.npz"
    np.savez(path, z=np.array([1]), pos=np.zeros((6, 1, 3)), energy=energy)
    with pytest.raises(ValueError, match=r"energy contains NaN or Inf in 2 frame\(s\): \[1, 4\]"):
        read(path)
    forces = np.zeros((6, 1, 3))
    forces[5, 0, 2] = np.nan
    np.savez(path, z=np.array([1]), pos=np.zeros((6, 1, 3)), forces=forces)
    with pytest.raises(ValueError, match=r"forces contains NaN or Inf in 1 frame\(s\): \[5\]"):
        read(path)


def test_unknown_format(tmp_path):
    path = tmp_path / "thing.foo"
    path.write_text("not a structure")
    with pytest.raises(ValueError, match="unknown format"):
        read(path)
    with pytest.raises(ValueError, match=r"unknown format 'xyz2'.*'deepmd'"):
        read(path, format="xyz2")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="unknown format.*without type.raw"):
        read(tmp_path / "folder")
    with pytest.raises(ValueError, match="unknown units 'hartree'"):
        read(shipped("rmd17/benzene"), units="hartree")


def test_deepmd_shape_mismatch(tmp_path):
    _write_deepmd(tmp_path / "d", np.random.default_rng(7), sets=(3,))
    np.save(tmp_path / "d" / "set.000" / "force.npy", np.zeros((2, 12)))
    with pytest.raises(ValueError, match=r"force.npy has shape \(2, 12\), expected \(3, 12\)"):
        read(tmp_path / "d")


def test_frameset_normalises_layouts():
    z = np.array([[1, 8], [1, 8]])
    fs = FrameSet("x", z=z, pos=[np.zeros((2, 3)), np.ones((2, 3))], energy=np.zeros((2, 1)),
                  cell=np.eye(3) * 4, pbc=True)
    assert fs.uniform and fs.pos.shape == (2, 2, 3) and fs.z.tolist() == [1, 8]
    assert fs.energy.shape == (2,) and fs.cell.shape == (2, 3, 3) and fs.pbc.all()
    assert "2 frames" in repr(fs)
    with pytest.raises(ValueError, match="no cell was given"):
        FrameSet("y", z=np.array([1]), pos=np.zeros((1, 1, 3)), pbc=[True, True, False])


def test_not_an_npz(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_text("plain text")
    with pytest.raises(ValueError, match=r"not an \.npz \(zip\) archive"):
        read(path)
