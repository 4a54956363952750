"""User-facing failures; each message says what was wrong and how to fix it."""


class GffmergeError(Exception):
    """Base class of every gffmerge error."""


class ArchitectureMismatchError(GffmergeError, ValueError):
    """Source models (or stats and models) do not share parameter names and shapes."""


class NonFiniteActivationError(GffmergeError, ValueError):
    """A hooked layer received NaN or Inf inputs while measuring."""


class EmptyDataError(GffmergeError, ValueError):
    """A model was measured on no data at all."""


class SingularGramError(GffmergeError, ValueError):
    """A normal-equation matrix could not be factorised."""


class StatsMismatchError(GffmergeError, ValueError):
    """Statistics do not belong to the models or to each other."""


class UnknownMethodError(GffmergeError, KeyError):
    """No merge method is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StatsFormatError(GffmergeError, ValueError):
    """A stats file is missing, corrupt, or of an unsupported format version."""


class DegenerateSolutionError(GffmergeError, ValueError):
    """A solve met NaN/Inf statistics, produced NaN/Inf weights, or its ridge flattened a
    layer to ~0; nothing is written."""


class ConfigError(GffmergeError, ValueError):
    """A configuration file (YAML) or option is malformed, or has an unknown key."""


class OutputPathError(GffmergeError, ValueError):
    """An output path cannot be written (missing folder, a directory, no permission)."""


class DataError(GffmergeError, ValueError):
    """Data that the model cannot be run or trained on (unknown elements, no forces)."""


def closest(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``name``, or ``""``."""
    import difflib

    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def describe_os_error(exc: OSError, action: str = "") -> str:
    """One line for an ``OSError``: what failed on which path, and what to do about it."""
    import errno

    path = exc.filename if exc.filename is not None else ""
    what = f"cannot {action} '{path}'" if action else f"'{path}'" if path else "file error"
    reason = exc.strerror or str(exc)
    fix = {errno.ENOENT: "check the path (its folder must exist)",
           errno.EACCES: "choose a location you may write to, or change its permissions",
           errno.EPERM: "choose a location you may write to, or change its permissions",
           errno.EROFS: "the file system is read-only; choose another location",
           errno.EISDIR: "it is a directory; give a file name",
           errno.ENOTDIR: "a part of the path is a file, not a folder",
           errno.ENOSPC: "the disk is full; free space or choose another location",
           errno.EDQUOT: "the disk quota is exceeded; free space or choose another location",
           }.get(exc.errno, "check the path and its permissions")
    return f"{what}: {reason}; {fix}"
