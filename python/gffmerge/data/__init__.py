"""Data layer: shipped files, readers, the sampling/split protocol, neighbour lists, batches.

Typical use::

    from gffmerge.data import load_dataset
    ds = load_dataset(["lips20/beta-Li3PS4", "lips20/gamma-Li3PS4"])
    for batch in ds.split("train").batches(8, cutoff=5.0, shuffle=True, seed=epoch):
        ...  # batch is an AtomsBatch
"""

from .batch import AtomsBatch
from .dataset import AtomsDataset, BatchLoader, load_dataset
from .neighbors import neighbor_list
from .paths import available, data_dir, shipped
from .readers import (
    FORMATS,
    KCAL_PER_MOL_IN_EV,
    READERS,
    FrameSet,
    Reader,
    detect_format,
    get_reader,
    read,
    read_ase,
    read_deepmd,
    read_md17,
    read_npz,
    read_rmd17,
    register_reader,
)
from .split import SPLITS, assign_splits, sample_frames, split_fraction, split_of

__all__ = [
    "FORMATS",
    "KCAL_PER_MOL_IN_EV",
    "SPLITS",
    "AtomsBatch",
    "AtomsDataset",
    "BatchLoader",
    "READERS",
    "FrameSet",
    "Reader",
    "assign_splits",
    "available",
    "data_dir",
    "detect_format",
    "get_reader",
    "load_dataset",
    "neighbor_list",
    "read",
    "read_ase",
    "read_deepmd",
    "read_md17",
    "read_npz",
    "read_rmd17",
    "register_reader",
    "sample_frames",
    "shipped",
    "split_fraction",
    "split_of",
]
