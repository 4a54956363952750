"""The merge-method registry: a decorator, a name → method table, typed options."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import UnknownMethodError
from ..report import MergeResult
from ..stats import Stats

MethodFn = Callable[[Sequence[nn.Module], "Stats | None", typing.Any], MergeResult]


@dataclass(frozen=True)
class OptionInfo:
    """One typed option of a method, for help texts and the CLI."""

    name: str
    type: str
    default: typing.Any
    choices: tuple = ()
    help: str = ""


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method."""

    name: str
    description: str
    reference: str
    options_type: type
    needs_stats: bool
    fn: MethodFn

    def options(self, **values) -> typing.Any:
        """Validated options; unknown names are an error that lists the valid ones."""
        valid = {f.name for f in dataclasses.fields(self.options_type)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise TypeError(f"method '{self.name}' has no option(s) {', '.join(unknown)}; "
                            f"its options are: {', '.join(sorted(valid)) or '(none)'}")
        return self.options_type(**values)

    def option_infos(self) -> list[OptionInfo]:
        hints = typing.get_type_hints(self.options_type)
        docs = getattr(self.options_type, "__option_help__", {})
        out = []
        for f in dataclasses.fields(self.options_type):
            hint = hints[f.name]
            choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
            tname = "str" if choices else getattr(hint, "__name__", str(hint))
            out.append(OptionInfo(f.name, tname, f.default, choices, docs.get(f.name, "")))
        return out

    def __call__(self, models: Sequence[nn.Module], stats: Stats | None = None, **options):
        """Merge ``models`` (with ``stats`` if the method needs them)."""
        opts = self.options(**options)
        if self.needs_stats and stats is None:
            raise ValueError(f"method '{self.name}' needs statistics: measure the models on "
                             "their data first (gffmerge.measure / gffmerge.merge)")
        return self.fn(models, stats, opts)


_REGISTRY: dict[str, MergeMethod] = {}


def register(name: str, *, description: str, reference: str, options: type,
             needs_stats: bool = True) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn(models, stats, options) -> MergeResult`` under ``name``."""
    if not dataclasses.is_dataclass(options):
        raise TypeError("options must be a dataclass type")

    def deco(fn: MethodFn) -> MethodFn:
        if name in _REGISTRY:
            raise ValueError(f"a merge method named '{name}' is already registered")
        _REGISTRY[name] = MergeMethod(name, description, reference, options, needs_stats, fn)
        return fn
    return deco


def get(name: str) -> MergeMethod:
    """The method registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnknownMethodError(
            f"unknown merge method '{name}'{hint}; available: "
            f"{', '.join(sorted(_REGISTRY))}") from None


def available() -> list[str]:
    """Names of all registered methods."""
    return sorted(_REGISTRY)
