"""Writing files so that a reader never sees half of one, and a failed command changes none.

:func:`write_atomically` writes one file to a temporary name beside it and renames it
into place. Inside :func:`all_or_nothing` (every CLI command runs in one) the rename is
held back until the block ends without an error: then every file written in it is put in
place; on any failure the temporaries are removed and existing files stay untouched.
:func:`check_output` checks a path before the long work that produces it starts.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import OutputPathError, describe_os_error


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Pending:
    """Temporaries written inside :func:`all_or_nothing`, in order, waiting for the rename."""

    def __init__(self) -> None:
        self.files: list[tuple[str, Path]] = []  # (temporary, final path)
        self.after: list[Callable[[], None]] = []  # run once every file is in place

    def add(self, tmp: str, path: Path) -> None:
        for k, (old_tmp, final) in enumerate(self.files):
            if final == path:  # written twice: the last write wins
                Path(old_tmp).unlink(missing_ok=True)
                self.files[k] = (tmp, path)
                return
        self.files.append((tmp, path))

    def commit(self) -> None:
        for k, (tmp, path) in enumerate(self.files):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                for rest, _ in self.files[k:]:
                    Path(rest).unlink(missing_ok=True)
                raise _os_error(exc, path) from exc
        self.files.clear()
        after, self.after = self.after, []
        for action in after:
            action()

    def discard(self) -> None:
        for tmp, _ in self.files:
            Path(tmp).unlink(missing_ok=True)
        self.files.clear()
        self.after.clear()


_PENDING: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar(
    "gffmerge_pending_outputs", default=None)


@contextlib.contextmanager
def all_or_nothing(*, keep_on_interrupt: bool = False) -> Iterator[None]:
    """Hold back the renames of :func:`write_atomically` until the block succeeds.

    On an exception every temporary is removed and no existing file changes; with
    ``keep_on_interrupt``, a ``KeyboardInterrupt`` still puts the files written so far in
    place (training saves its best model when stopped). Nested blocks join the outer one.
    """
    if _PENDING.get() is not None:
        yield
        return
    pending = _Pending()
    token = _PENDING.set(pending)
    try:
        yield
    except KeyboardInterrupt:
        if keep_on_interrupt:
            pending.commit()
        else:
            pending.discard()
        raise
    except BaseException:
        pending.discard()
        raise
    else:
        pending.commit()
    finally:
        pending.discard()
        _PENDING.reset(token)


def after_commit(action: Callable[[], None]) -> None:
    """Run ``action`` once the files written so far are in place: at the successful end of
    the enclosing :func:`all_or_nothing` block (never, if it fails), or now outside one.
    (Measuring removes its partial file this way only after the stats file is written.)"""
    pending = _PENDING.get()
    if pending is None:
        action()
    else:
        pending.after.append(action)


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise :class:`OutputPathError` unless ``path`` can be written as a file: its folder
    exists and is writable, and ``path`` is not a directory (nor a read-only file)."""
    path = Path(path)
    if str(path) in ("", "."):
        raise OutputPathError(f"{what} path is empty; give a file name")
    if path.is_dir():
        raise OutputPathError(f"{what} '{path}' is a directory; give a file name inside it, "
                              f"e.g. '{path / ('out' + (path.suffix or '.pt'))}'")
    parent = path.parent
    if not parent.exists():
        blocker = next((p for p in [parent, *parent.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise OutputPathError(f"{what} '{path}': '{blocker}' is a file, not a folder; "
                                  "choose another location")
        raise OutputPathError(f"{what} '{path}': folder '{parent}' does not exist; create it "
                              f"first (mkdir -p {parent}) or choose another location")
    if not parent.is_dir():
        raise OutputPathError(f"{what} '{path}': '{parent}' is a file, not a folder; choose "
                              "another location")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} '{path}': folder '{parent}' is not writable; choose a "
                              "location you may write to")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{what} '{path}' exists and is read-only; remove it or choose "
                              "another name")
    try:  # the real test (read-only file systems, special folders): create a file there
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{what} '{path}': cannot create a file in '{parent}' "
                              f"({exc.strerror or exc}); choose another location") from None
    return path


def _os_error(exc: OSError, path: Path) -> OutputPathError:
    """``exc`` as an :class:`OutputPathError` naming ``path`` (not its temporary)."""
    named = OSError(exc.errno, exc.strerror or str(exc), str(path))
    return OutputPathError(describe_os_error(named, "write"))


def write_atomically(path: str | os.PathLike, write: Callable[[str], None], *,
                     defer: bool = True) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it over
    ``path``; the file gets the usual permissions (0666 minus the umask), and an
    interrupted or failed write leaves ``path`` untouched and no temporary behind. Inside
    :func:`all_or_nothing` the rename waits until the block succeeds, unless ``defer`` is
    false (a file that must outlive a failed command, such as a partial measurement).

    A path that cannot be written raises :class:`OutputPathError` with one line."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _os_error(exc, path) from exc
    os.close(fd)
    pending = _PENDING.get() if defer else None
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if pending is not None:
            pending.add(tmp, path)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _os_error(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_atomically` for a text file (UTF-8)."""
    return write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
