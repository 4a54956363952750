"""The reader registry: ``@register_reader`` fills it; ``detect_format`` and ``read`` use it.

A format is a function ``read_x(path, *, name=None, units=None, ...) -> FrameSet`` registered
with how to recognise its files::

    @register_reader("toy", suffixes=(".toy",))
    def read_toy(path, *, name=None, units=None) -> FrameSet: ...

Detection (``format="auto"``) tries, in registration order, the readers of the path's kind
(file or folder) that claim it: by suffix, then by their ``detect`` test when they have one.
When no reader claims it, the ``fallback`` reader (ASE) takes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from .frameset import FrameSet

ReadFn = Callable[..., FrameSet]
F = TypeVar("F", bound=ReadFn)


@dataclass(frozen=True)
class Reader:
    """A registered format.

    ``suffixes``: lower-case file suffixes it claims (``(".npz",)``); empty: any suffix, so it
    needs a ``detect`` test (or ``fallback``) to take part in detection. ``detect(path)``:
    True when the file or folder is in this format. ``expects``: what ``detect`` looks for,
    said when nothing matches; ``describe(path)``: what the path holds instead, for the same
    message. ``folder``: the format is a folder, not a file. ``fallback``: takes every file
    that no other reader claims. ``aliases``: other names accepted by ``read(format=...)``.
    """

    name: str
    read: ReadFn
    suffixes: tuple[str, ...] = ()
    detect: Callable[[Path], bool] | None = None
    expects: str = ""
    describe: Callable[[Path], str] | None = None
    folder: bool = False
    fallback: bool = False
    aliases: tuple[str, ...] = ()

    def claims(self, path: Path) -> bool:
        """Whether detection should try this reader's ``detect`` on ``path``."""
        if self.fallback or self.folder != path.is_dir():
            return False
        if self.suffixes:
            return path.suffix.lower() in self.suffixes
        return self.detect is not None


_READERS: dict[str, Reader] = {}

READERS: MappingProxyType[str, Reader] = MappingProxyType(_READERS)
"""Read-only, live view ``name -> Reader`` of the registered formats, in registration order."""


class _FormatNames(Sequence[str]):
    """The registered format names as a tuple-like sequence that follows new registrations."""

    def __getitem__(self, index):
        return tuple(_READERS)[index]

    def __len__(self) -> int:
        return len(_READERS)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(_READERS))

    def __eq__(self, other) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(tuple(self))


FORMATS: Sequence[str] = _FormatNames()
"""Names of the registered formats (``"npz", "md17", "rmd17", "deepmd", "ase"``, ...)."""


def register_reader(name: str, *, suffixes: Sequence[str] = (),
                    detect: Callable[[Path], bool] | None = None, expects: str = "",
                    describe: Callable[[Path], str] | None = None, folder: bool = False,
                    fallback: bool = False, aliases: Sequence[str] = ()) -> Callable[[F], F]:
    """Decorator: register ``fn(path, **kwargs) -> FrameSet`` as format ``name``.

    See :class:`Reader` for the arguments. A name or alias already taken by another
    function is an error; registering the same function again (a module reloaded) replaces it.
    """
    suffixes = tuple(s.lower() if s.startswith(".") else f".{s.lower()}" for s in suffixes)
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a reader needs a non-empty name other than 'auto', got {name!r}")
    if fallback and folder:
        raise ValueError(f"reader {name!r}: a fallback reader reads files, not folders")

    def deco(fn: F) -> F:
        reader = Reader(name, fn, suffixes, detect, expects, describe, folder, fallback,
                        tuple(aliases))
        for taken in (name, *reader.aliases):
            owner = _owner(taken)
            if owner is not None and _qualified(owner.read) != _qualified(fn):
                raise ValueError(f"format name {taken!r} of {_qualified(fn)} is already used "
                                 f"by reader {owner.name!r} ({_qualified(owner.read)})")
        other = next((r for r in _READERS.values() if r.fallback and r.name != name), None)
        if fallback and other is not None:
            raise ValueError(f"reader {name!r} cannot be the fallback: {other.name!r} already is")
        _READERS[name] = reader
        return fn
    return deco


def get_reader(format: str) -> Reader:
    """The reader registered as ``format`` or under that alias."""
    reader = _owner(format)
    if reader is None:
        aliases = [a for r in _READERS.values() for a in r.aliases]
        extra = f" (or {', '.join(repr(a) for a in aliases)})" if aliases else ""
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of "
                         f"{list(FORMATS)}{extra}")
    return reader


def require_path(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """``path`` as a ``Path``; an error naming the fix unless it exists and is of that kind."""
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


def detect_format(path: str | os.PathLike) -> str:
    """The name of the registered format of ``path`` (see the module docstring for how)."""
    p = require_path(path, folder=Path(path).is_dir())
    candidates = [r for r in _READERS.values() if r.claims(p)]
    for reader in candidates:
        if reader.detect is None or reader.detect(p):
            return reader.name
    if p.is_dir():
        folders = [r for r in _READERS.values() if r.folder and r.expects]
        why = ", and ".join(f"without {r.expects}, so not a {r.name} system" for r in folders)
        raise ValueError(f"unknown format: {p} is a folder {why or 'and no reader reads folders'}"
                         "; pass the system folder itself or a file")
    if candidates:
        found = next((r.describe(p) for r in candidates if r.describe is not None), None)
        layouts = "; ".join(f"{r.name}: {r.expects}" for r in candidates)
        raise ValueError(f"unknown {p.suffix.lstrip('.')} layout in {p}"
                         + (f": {found}" if found else "")
                         + f"; expected one of ({layouts}); pass format= to force a layout")
    fallback = next((r for r in _READERS.values() if r.fallback), None)
    if fallback is None:
        raise ValueError(f"unknown format: no registered reader claims {p}; pass format= one "
                         f"of {list(FORMATS)}")
    return fallback.name


def read(path: str | os.PathLike, format: str = "auto", **kwargs) -> FrameSet:
    """Read ``path`` into a ``FrameSet`` (eV, eV/Å, Å).

    ``format``: ``"auto"`` (default) or one of ``FORMATS`` (``"extxyz"`` is an alias of
    ``"ase"``). ``kwargs`` go to the reader: ``name``, ``units`` (``"eV"`` or ``"kcal/mol"``,
    overriding the format's default), and for ASE ``energy_key``, ``forces_key``, ``index``,
    ``ase_format``; for DeePMD ``type_map``. ``units_note`` of the result says what was assumed.
    """
    reader = get_reader(detect_format(path) if format == "auto" else format)
    return reader.read(path, **kwargs)


def _owner(name: str) -> Reader | None:
    if name in _READERS:
        return _READERS[name]
    return next((r for r in _READERS.values() if name in r.aliases), None)


def _qualified(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
