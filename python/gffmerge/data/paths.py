"""Where the shipped data lives: ``data_dir()`` and ``shipped(name)``."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "GFFMERGE_DATA"

# python/gffmerge/data/paths.py -> parents[3] is the repository root.
_REPO_DATA = Path(__file__).resolve().parents[3] / "data"


def _has_npz(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*/*.npz"))


def data_dir() -> Path:
    """The folder holding the shipped ``<family>/<system>.npz`` files.

    Looked up in this order: ``$GFFMERGE_DATA`` if set; the repository's ``data/`` next to
    the package source (``python/gffmerge/../../data``); ``./data`` in the working directory.
    A folder counts only if it holds at least one ``*/*.npz``.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"${ENV_VAR} is set to {env!r}, which is not a directory; point it at the "
                "folder that holds lips20/ and rmd17/, or unset it"
            )
        return path
    looked = [_REPO_DATA, Path.cwd() / "data"]
    for candidate in looked:
        if _has_npz(candidate):
            return candidate
    tried = ", ".join(str(p) for p in looked)
    raise FileNotFoundError(
        f"no gffmerge data folder found: ${ENV_VAR} is not set and none of [{tried}] "
        f"holds */*.npz files; set ${ENV_VAR} to the repository's data/ folder"
    )


def available(root: str | os.PathLike | None = None) -> list[str]:
    """Names ``"<family>/<system>"`` of every ``.npz`` under ``root`` (default ``data_dir()``)."""
    base = Path(root) if root is not None else data_dir()
    return sorted(p.relative_to(base).with_suffix("").as_posix() for p in base.glob("*/*.npz"))


def shipped(name: str, root: str | os.PathLike | None = None) -> Path:
    """Path of a shipped system, e.g. ``shipped("lips20/beta-Li3PS4")`` (``.npz`` optional)."""
    base = Path(root) if root is not None else data_dir()
    stem = name[:-4] if name.endswith(".npz") else name
    if Path(stem).is_absolute() or ".." in Path(stem).parts:
        raise FileNotFoundError(f"{name!r} is a path, not a shipped name like 'lips20/Li'")
    path = base / f"{stem}.npz"
    if path.is_file():
        return path
    names = available(base)
    raise FileNotFoundError(
        f"no shipped system {name!r} in {base}; available: {', '.join(names) or '(none)'}"
    )
