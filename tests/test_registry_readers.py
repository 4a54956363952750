"""The reader registry: formats registered from outside are detected, read and listed."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import numpy as np
import pytest

import gffmerge.data.readers
from gffmerge.data import (
    FORMATS,
    READERS,
    FrameSet,
    detect_format,
    get_reader,
    load_dataset,
    read,
    read_npz,
    register_reader,
    shipped,
)
from gffmerge.data.readers import registry as reader_registry

BUILT_IN = ("npz", "md17", "rmd17", "deepmd", "ase")

TOY_MODULE = '''
"""A made-up text format: per frame a line "energy <E>", then "<Z> <x> <y> <z>" lines."""
import numpy as np

from gffmerge.data import FrameSet, register_reader


@register_reader("toy", suffixes=(".toy",))
def read_toy(path, *, name=None, units=None):
    frames = [block.split("\\n") for block in open(path).read().strip().split("\\n\\n")]
    energy = [float(lines[0].split()[1]) for lines in frames]
    rows = [np.array([line.split() for line in lines[1:]], dtype=float) for lines in frames]
    return FrameSet(name=name or "toy:" + str(path).rsplit("/", 1)[-1],
                    z=[r[:, 0].astype(int) for r in rows], pos=[r[:, 1:] for r in rows],
                    energy=np.array(energy), source=str(path), units_note="toy: eV, Å")
'''


@pytest.fixture
def registry():
    """The registry as it was before the test, restored after it."""
    before = dict(reader_registry._READERS)
    yield READERS
    reader_registry._READERS.clear()
    reader_registry._READERS.update(before)


@pytest.fixture
def toy_module(tmp_path, monkeypatch, registry):
    """Import a temporary module that registers the "toy" format."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_reader_plugin.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("toy_reader_plugin")
    yield module
    sys.modules.pop("toy_reader_plugin", None)


def write_toy(path, n_frames: int) -> None:
    blocks = []
    for f in range(n_frames):
        atoms = "\n".join(f"{z} {0.9 * i + 0.01 * f} 0.0 {0.1 * i}" for i, z in
                          enumerate([8, 1, 1][: 2 + f % 2]))
        blocks.append(f"energy {-10.0 - f}\n{atoms}")
    path.write_text("\n\n".join(blocks) + "\n")


def test_built_in_formats_are_listed_in_detection_order():
    assert tuple(FORMATS)[:5] == BUILT_IN and FORMATS[:5] == BUILT_IN
    assert FORMATS == tuple(READERS) and list(FORMATS) == list(READERS)
    assert "deepmd" in FORMATS and repr(FORMATS) == repr(tuple(READERS))
    assert get_reader("extxyz") is READERS["ase"] and READERS["npz"].read is read_npz
    for module in pkgutil.iter_modules(gffmerge.data.readers.__path__):
        assert f"gffmerge.data.readers.{module.name}" in sys.modules, module.name


def test_reader_from_a_temporary_module_is_detected_read_and_listed(tmp_path, toy_module):
    assert FORMATS[-1] == "toy" and "toy" in FORMATS and READERS["toy"].read is toy_module.read_toy
    path = tmp_path / "water.toy"
    write_toy(path, 5)
    assert detect_format(path) == "toy"
    fs = read(path)
    assert isinstance(fs, FrameSet) and len(fs) == 5 and fs.name == "toy:water.toy"
    np.testing.assert_array_equal(fs.energy, -10.0 - np.arange(5))
    assert [len(z) for z in fs.z] == [2, 3, 2, 3, 2]
    assert read(path, format="toy", name="w").name == "w"

    ds = load_dataset([path, shipped("rmd17/ethanol")], max_frames=None)
    assert ds.system_names == ("toy:water.toy", "ethanol") and len(ds) == 5 + 2000
    toy = ds.for_system(0)
    assert sorted(toy.frame_indices.tolist()) == [0, 1, 2, 3, 4]
    energies = sorted(e for _, e, _ in toy.structures())
    assert energies == [-14.0, -13.0, -12.0, -11.0, -10.0]
    batch = toy.collate([0, 1], cutoff=2.0)
    assert batch.num_graphs == 2 and batch.energy.dtype.is_floating_point

    with pytest.raises(ValueError, match=r"unknown format 'toy2'; expected 'auto' or one of "
                                         r"\['npz', .*'toy'\] \(or 'extxyz'\)"):
        read(path, format="toy2")


def test_registry_is_restored_after_a_test():
    assert "toy" not in FORMATS and tuple(FORMATS) == BUILT_IN


def test_content_detection_shares_a_suffix(tmp_path, registry):
    """Two readers claim .npz; each file goes to the first whose detect test accepts it."""
    seen = []

    def has_numbers(path):
        with np.load(path) as npz:
            return {"numbers", "positions"} <= set(npz.files)

    @register_reader("ase_npz", suffixes=["NPZ"], detect=has_numbers,
                     expects="keys ['numbers', 'positions']")
    def read_ase_npz(path, *, name=None, units=None):
        seen.append(path)
        with np.load(path) as npz:
            return FrameSet(name or "n", z=npz["numbers"], pos=npz["positions"])

    assert READERS["ase_npz"].suffixes == (".npz",)
    ours = tmp_path / "ours.npz"
    np.savez(ours, numbers=np.array([1, 1]), positions=np.zeros((3, 2, 3)))
    assert detect_format(ours) == "ase_npz" and len(read(ours)) == 3 and seen == [ours]
    theirs = tmp_path / "theirs.npz"
    np.savez(theirs, nuclear_charges=np.array([1, 1]), coords=np.zeros((3, 2, 3)))
    assert detect_format(theirs) == "rmd17" and detect_format(shipped("rmd17/benzene")) == "npz"
    odd = tmp_path / "odd.npz"
    np.savez(odd, energy=np.zeros(2), numbers=np.zeros(2))
    with pytest.raises(ValueError, match=r"unknown npz layout in .*odd.npz: found keys "
                                         r"\['energy', 'numbers'\]; expected one of \(npz: "
                                         r"keys \['z', 'pos'\]; .*ase_npz: keys \['numbers', "
                                         r"'positions'\]\); pass format="):
        detect_format(odd)


def test_folder_reader(tmp_path, registry):
    @register_reader("frames_dir", folder=True, detect=lambda p: (p / "frames.txt").is_file(),
                     expects="frames.txt")
    def read_frames_dir(path, *, name=None, units=None):
        pos = np.loadtxt(path / "frames.txt").reshape(-1, 1, 3)
        return FrameSet(name or path.name, z=np.array([1]), pos=pos)

    folder = tmp_path / "sys"
    folder.mkdir()
    (folder / "frames.txt").write_text("0 0 0\n1 1 1\n")
    assert detect_format(folder) == "frames_dir" and len(read(folder)) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"unknown format: .*empty is a folder without type.raw, "
                                         r"so not a deepmd system, and without frames.txt, so "
                                         r"not a frames_dir system"):
        read(tmp_path / "empty")


def test_register_reader_checks(registry):
    def another(path, **kwargs):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match=r"format name 'npz' of .*another is already used by "
                                         r"reader 'npz' \(gffmerge.data.readers.npz.read_npz\)"):
        register_reader("npz")(another)
    with pytest.raises(ValueError, match="'extxyz' .* already used by reader 'ase'"):
        register_reader("xyz_too", aliases=("extxyz",))(another)
    with pytest.raises(ValueError, match="cannot be the fallback: 'ase' already is"):
        register_reader("catch_all", fallback=True)(another)
    with pytest.raises(ValueError, match="other than 'auto'"):
        register_reader("auto")
    assert register_reader("npz", suffixes=(".npz",))(read_npz) is read_npz  # re-registration
    assert tuple(FORMATS) == BUILT_IN


def test_without_a_fallback_unclaimed_files_are_refused(tmp_path, registry):
    del reader_registry._READERS["ase"]
    path = tmp_path / "a.xyz"
    path.write_text("1\n\nH 0 0 0\n")
    with pytest.raises(ValueError, match=r"no registered reader claims .*a.xyz; pass format= "
                                         r"one of \['npz', 'md17', 'rmd17', 'deepmd'\]"):
        read(path)

