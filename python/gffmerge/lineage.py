"""Which pre-trained model a fine-tuned checkpoint came from, read from its metadata.

:func:`gffmerge.train.train` records the checkpoint a run started from as ``init`` (the
path as given then). Methods built on task vectors (``θ_k − θ₀``) are meaningless unless
every source was fine-tuned from the base ``θ₀`` they are given, so the CLI checks it here;
the architecture itself is checked by the methods.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import GffmergeError
from .provenance import file_sha256


class BaseMismatchError(GffmergeError, ValueError):
    """A source checkpoint was fine-tuned from another model than the given base."""


def _resolve(init: str, source: Path) -> Path | None:
    """``init`` as recorded, else relative to the source checkpoint's folder or any of its
    parents (a path recorded relative to a repository root); None if not found."""
    candidate = Path(init)
    if candidate.is_file():
        return candidate
    if candidate.is_absolute():
        return None
    for folder in source.resolve().parents:
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def same_file(a: Path, b: Path) -> bool:
    """The same file, or two files with the same bytes (a copied foundation)."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        return False
    return a.stat().st_size == b.stat().st_size and file_sha256(a) == file_sha256(b)


def check_shared_base(base: str | os.PathLike,
                      sources: Sequence[tuple[str | os.PathLike, Mapping[str, Any]]], *,
                      flag: str = "--base") -> None:
    """Raise :class:`BaseMismatchError` (one line) unless every source ``(path, metadata)``
    that records an ``init`` checkpoint was fine-tuned from ``base``.

    A recorded ``init`` that exists here must be ``base`` or a byte-identical copy; one
    that cannot be found must at least have ``base``'s file name. Sources without an
    ``init`` (merged or foreign checkpoints) are not checked.
    """
    base = Path(base)
    for path, meta in sources:
        init = meta.get("init") if isinstance(meta, Mapping) else None
        if not init:
            continue
        found = _resolve(str(init), Path(path))
        if found is None:
            if Path(str(init)).name != base.name:
                raise BaseMismatchError(
                    f"{path} was fine-tuned from {init} (not found here), not from {base}: "
                    f"pass that foundation as {flag}")
        elif not same_file(found, base):
            raise BaseMismatchError(f"{path} was fine-tuned from {found}, not from {base}: "
                                    f"pass {flag} {found}")


def recorded_base(sources: Sequence[tuple[str | os.PathLike, Mapping[str, Any]]]
                  ) -> Path | None:
    """The checkpoint every source ``(path, metadata)`` records as its ``init`` and that is
    found here (the same file, or byte-identical copies of it, for all of them); None when
    a source records none, one cannot be found, or they disagree."""
    found: Path | None = None
    for path, meta in sources:
        init = meta.get("init") if isinstance(meta, Mapping) else None
        if not init:
            return None
        where = _resolve(str(init), Path(path))
        if where is None:
            return None
        if found is None:
            found = where
        elif not same_file(found, where):
            return None
    return found
