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
