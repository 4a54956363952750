"""Shared by the npz-based formats: load an archive, test and check its keys."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def load_npz(path: Path, keys_only: bool = False) -> dict[str, np.ndarray | None]:
    """The arrays of an npz archive (``None`` for each with ``keys_only``); no pickles."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz (zip) archive; write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: (None if keys_only else npz[k]) for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable .npz archive without pickles: {err}") from err


def has_keys(required: Sequence[str]) -> Callable[[Path], bool]:
    """A ``detect`` test: the archive holds every key in ``required``."""
    def detect(path: Path) -> bool:
        return set(required) <= set(load_npz(path, keys_only=True))
    return detect


def found_keys(path: Path) -> str:
    """A ``describe`` for detection errors: the keys the archive holds."""
    return f"found keys {sorted(load_npz(path, keys_only=True))}"


def check_keys(path: Path, data: dict, fmt: str, required: Sequence[str],
               optional: Sequence[str]) -> None:
    """ValueError naming the missing keys unless ``data`` has all ``required`` keys."""
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(
            f"{path}: missing key(s) {missing} for the {fmt!r} layout; found keys "
            f"{sorted(data)}; expected {list(required)} plus optional {list(optional)}"
        )
