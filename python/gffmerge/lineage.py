"""Which pre-trained model a fine-tuned checkpoint came from, read from its metadata.

:func:`gffmerge.train.train` records the checkpoint a run started from as ``init`` (the
path as given then) with its SHA-256 (``init_sha256``) and that of the foundation at the
root of its ``init`` chain (``foundation_sha256``); merges and repairs carry the latter
on. Methods built on task vectors (``θ_k − θ₀``) are meaningless unless every source was
fine-tuned from the base ``θ₀`` they are given, and no merge of fine-tunes of two
different foundations means anything (their hidden features are not aligned), so the CLI
checks both here; the architecture itself is checked by the methods.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import read_metadata
from .errors import GffmergeError
from .provenance import file_sha256


class BaseMismatchError(GffmergeError, ValueError):
    """A source checkpoint was fine-tuned from another model than the given base."""


class FoundationMismatchError(GffmergeError, ValueError):
    """Source checkpoints were fine-tuned from different foundations."""


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


_DERIVED = ("merged", "merge-alternative")
_MAX_CHAIN = 32


def foundation_sha256(path: str | os.PathLike, meta: Mapping[str, Any], *,
                      _depth: int = 0) -> str | None:
    """SHA-256 of the foundation the checkpoint ``(path, meta)`` descends from: the one
    it records; else, when it records an ``init`` found here, that checkpoint's own
    foundation (:func:`foundation_of_start`). None when nothing says: trained from scratch
    itself, merged or repaired without the record, or its ``init`` not found here."""
    if not isinstance(meta, Mapping):
        return None
    recorded = meta.get("foundation_sha256")
    if isinstance(recorded, str) and recorded:
        return recorded
    init = meta.get("init")
    found = _resolve(str(init), Path(path)) if init else None
    return None if found is None else foundation_of_start(found, _depth=_depth + 1)


def foundation_of_start(start: str | os.PathLike, *, _depth: int = 0) -> str | None:
    """SHA-256 of the foundation a model trained from the checkpoint ``start`` descends
    from: ``start``'s own foundation, or ``start`` itself when that was trained from
    scratch; what :func:`gffmerge.train.train` records as ``foundation_sha256``. None when
    that is not known (a merge without the record, a chain lost or looping)."""
    if _depth > _MAX_CHAIN:
        return None
    try:
        meta = read_metadata(start)
    except (OSError, ValueError):
        return None
    if meta.get("init") or meta.get("foundation_sha256"):
        return foundation_sha256(start, meta, _depth=_depth)
    derived = meta.get("role") in _DERIVED or "repaired_from" in meta
    return None if derived else file_sha256(start)


def check_same_foundation(sources: Sequence[tuple[str | os.PathLike, Mapping[str, Any]]],
                          *, flag: str = "--allow-different-foundations") -> str | None:
    """The foundation's SHA-256 when every source ``(path, metadata)`` has the same known
    one (what a merge of them records), else None; raise :class:`FoundationMismatchError`
    (one line) when two sources demonstrably descend from different foundations (their
    :func:`foundation_sha256` are known and differ). Sources whose foundation is unknown
    (trained from scratch, as GNNMerge merges them, or their records lost) are not
    checked."""
    groups: dict[str, list[str]] = {}
    unknown = False
    for path, meta in sources:
        sha = foundation_sha256(path, meta)
        if sha is None:
            unknown = True
        else:
            groups.setdefault(sha, []).append(str(path))
    if len(groups) < 2:
        return None if unknown or not groups else next(iter(groups))
    parts = "; ".join(f"{', '.join(paths)} from foundation {sha[:12]}"
                      for sha, paths in groups.items())
    raise FoundationMismatchError(
        f"the sources were fine-tuned from {len(groups)} different foundations ({parts}), "
        "so their hidden features do not correspond and a merge of them is meaningless: "
        f"merge fine-tunes of one foundation, or pass {flag} to merge them anyway")
