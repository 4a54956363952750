"""Read labelled atomic structures into a ``FrameSet``, converting labels to eV and eV/Å.

Formats, one module each, registered with ``@register_reader`` (see ``registry.py``):

* ``"npz"``: gffmerge's own layout (``z, pos, energy, forces[, cell, pbc]``; see
  ``data/README.md``), eV, eV/Å, Å.
* ``"md17"``: original MD17/sGDML npz (``R, z, E, F``), kcal/mol and kcal/mol/Å.
* ``"rmd17"``: revised MD17 npz (``nuclear_charges, coords, energies, forces``), kcal/mol.
* ``"deepmd"``: a DeePMD system folder (``type.raw``, ``type_map.raw``, ``set.*/coord.npy``,
  ``energy.npy``, ``force.npy``, ``box.npy``), eV, eV/Å, Å. This is LiPS20's native format.
* ``"ase"``: extxyz and anything else ``ase.io.read`` understands, eV unless told otherwise.

Every reader says in ``FrameSet.units_note`` what units it assumed and what it converted.

Importing this package imports the built-in formats below, in detection order, and then
every other module in this folder: adding a format is one new file here whose reader
function is decorated with ``@register_reader``. ``FORMATS``, ``detect_format`` and ``read``
follow the registry, including readers registered later from other packages.
"""


# The built-in formats, imported (so registered) in detection order.
# isort: off
from . import npz, md17, rmd17, deepmd, ase_io  # noqa: F401
# isort: on
from ...discover import import_submodules
from .ase_io import read_ase
from .deepmd import read_deepmd
from .frameset import Array, FrameSet
from .md17 import read_md17
from .npz import read_npz
from .registry import (
    FORMATS,
    READERS,
    Reader,
    detect_format,
    get_reader,
    read,
    register_reader,
)
from .rmd17 import read_rmd17
from .units import KCAL_PER_MOL_IN_EV, UNITS

__all__ = [
    "FORMATS",
    "KCAL_PER_MOL_IN_EV",
    "READERS",
    "UNITS",
    "Array",
    "FrameSet",
    "Reader",
    "detect_format",
    "get_reader",
    "read",
    "read_ase",
    "read_deepmd",
    "read_md17",
    "read_npz",
    "read_rmd17",
    "register_reader",
]

# Every other module in this folder, so that each format file's @register_reader has run.
import_submodules(__name__, __path__)
