"""The merge-method registry: a decorator, a name → method table, typed options, needs.

A method is ``fn(models, stats, options) -> MergeResult``; a method that needs a base model
or gradients (:class:`Needs`) also takes them as keyword arguments, ``base=`` (the common
pre-trained model) and ``gradients=`` (one ``{parameter name: diagonal Fisher}`` mapping per
source), and only those it needs: :meth:`MergeMethod.invoke` passes them.

Every module of the ``gffmerge.methods`` package, and every entry point of the group
``gffmerge.methods`` (third-party packages), is imported on the first lookup or listing;
importing a module runs its :func:`register` decorators.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..discover import import_submodules
from ..errors import UnknownMethodError
from ..report import MergeResult
from ..stats import Stats

MethodFn = Callable[..., MergeResult]
ENTRY_POINT_GROUP = "gffmerge.methods"
# Needs field -> the keyword argument that hands that input to a method's function
INPUT_KEYWORDS = {"base_model": "base", "gradients": "gradients"}


@dataclass(frozen=True)
class Needs:
    """What a method needs besides the source models.

    - ``stats``: per-layer statistics of each source on its own data (:func:`gffmerge.measure`);
    - ``cross``: those statistics with cross sums ``Σ x̃ yᵀ`` (``measure(cross=True)``);
    - ``base_model``: the common pre-trained model the sources were fine-tuned from;
    - ``base_optional``: the method uses that model when it is given (``base=`` is passed
      to it, None when absent);
    - ``gradients``: gradients (e.g. Fisher information) of each source on its data;
    - ``labelled_data``: data with reference labels (energies, forces), not only inputs;
    - ``data``: each source's own batches, handed to the method (as ``data=``, with the
      optional ``val_data=``, each source's validation dataset) because it runs the models
      itself (e.g. the progressive merge, whose inputs come from the partly merged model).
    """

    stats: bool = True
    cross: bool = False
    base_model: bool = False
    base_optional: bool = False
    gradients: bool = False
    labelled_data: bool = False
    data: bool = False

    def __post_init__(self):
        if self.cross and not self.stats:
            raise ValueError("Needs(cross=True) implies statistics: set stats=True too")

    def names(self) -> list[str]:
        """The names of the needed inputs, e.g. ``["stats", "cross"]``."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]

    def beyond(self, *provided: str) -> list[str]:
        """The needed inputs not among ``provided`` (names as in :meth:`names`)."""
        return [n for n in self.names() if n not in provided]


NeedsSpec = Needs | Callable[[typing.Any], Needs]


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
    """A registered merge method.

    ``needs`` is a :class:`Needs`, or a function of the method's options returning one
    (e.g. cross sums only with ``target="cross"``); :meth:`needs_for` resolves it.
    """

    name: str
    description: str
    reference: str
    options_type: type
    needs: NeedsSpec
    fn: MethodFn

    def needs_for(self, options: typing.Any = None) -> Needs:
        """What the method needs with ``options`` (default: its default options)."""
        if isinstance(self.needs, Needs):
            return self.needs
        needs = self.needs(self.options_type() if options is None else options)
        if not isinstance(needs, Needs):
            raise TypeError(f"method '{self.name}': its needs function returned "
                            f"{type(needs).__name__}, not a gffmerge.methods.Needs")
        return needs

    @property
    def needs_stats(self) -> bool:
        """Whether the method needs statistics with its default options (compatibility)."""
        return self.needs_for().stats

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
            tname = "str" if choices else _type_name(hint)
            out.append(OptionInfo(f.name, tname, f.default, choices, docs.get(f.name, "")))
        return out

    def invoke(self, models: Sequence[nn.Module], stats: Stats | None, options: typing.Any,
               *, base: nn.Module | None = None,
               gradients: Sequence[typing.Mapping[str, typing.Any]] | None = None,
               data: Sequence[typing.Any] | None = None,
               val_data: Sequence[typing.Any] | None = None,
               progress: bool = True) -> MergeResult:
        """Run the method with validated ``options``, handing it ``base``, ``gradients`` and
        (for methods that need the data) ``data``, ``val_data`` and ``progress`` as keyword
        arguments if (and only if) its needs name them; a missing one is an error.
        """
        needs = self.needs_for(options)
        if needs.stats and stats is None:
            raise ValueError(f"method '{self.name}' needs statistics: measure the models on "
                             "their data first (gffmerge.measure / gffmerge.merge)")
        given = {"base": base, "gradients": gradients}
        inputs = {}
        for need, keyword in INPUT_KEYWORDS.items():
            if getattr(needs, need):
                if given[keyword] is None:
                    raise ValueError(f"method '{self.name}' needs {need}: pass {keyword}= "
                                     f"({_INPUT_HINTS[keyword]})")
                inputs[keyword] = given[keyword]
        if needs.base_optional and not needs.base_model:
            inputs["base"] = base
        if needs.data:
            if data is None or len(data) != len(models):
                got = "no data" if data is None else f"{len(data)} data sources"
                raise ValueError(f"method '{self.name}' runs each model on its own data: pass "
                                 f"data=[one batch iterable per model] ({len(models)} models, "
                                 f"{got})")
            inputs.update(data=data, val_data=val_data, progress=progress)
        return self.fn(models, stats, options, **inputs)

    def __call__(self, models: Sequence[nn.Module], stats: Stats | None = None, *,
                 base: nn.Module | None = None,
                 gradients: Sequence[typing.Mapping[str, typing.Any]] | None = None,
                 data: Sequence[typing.Any] | None = None,
                 val_data: Sequence[typing.Any] | None = None, **options):
        """Merge ``models`` (with ``stats``, ``base``, ``gradients`` or ``data`` if the method
        needs them); ``options`` are the method's options."""
        return self.invoke(models, stats, self.options(**options), base=base,
                           gradients=gradients, data=data, val_data=val_data)


_INPUT_HINTS = {
    "base": "the pre-trained model the sources were fine-tuned from; CLI: --base CKPT",
    "gradients": "one diagonal Fisher per source, gffmerge.collect.fisher.diagonal_fisher",
}


_REGISTRY: dict[str, MergeMethod] = {}
# entry points already loaded (or failed), so each is tried once; None: nothing scanned yet
_PLUGINS: set[str] | None = None


def register(name: str, *, description: str, reference: str, options: type,
             needs: NeedsSpec | None = None,
             needs_stats: bool | None = None) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn(models, stats, options) -> MergeResult`` under ``name``.

    ``options`` is a dataclass type (its fields are the method's typed options, an
    optional ``__option_help__`` dict documents them); ``needs`` a :class:`Needs` or a
    function of the options returning one (default ``Needs()``: statistics).
    ``needs_stats=False`` is the older spelling of ``needs=Needs(stats=False)``.
    """
    if not dataclasses.is_dataclass(options):
        raise TypeError("options must be a dataclass type")
    if needs is not None and needs_stats is not None:
        raise TypeError("pass needs= or the older needs_stats=, not both")
    if needs is None:
        needs = Needs(stats=needs_stats is not False)
    if not (isinstance(needs, Needs) or callable(needs)):
        raise TypeError("needs must be a Needs or a function of the options returning one")

    def deco(fn: MethodFn) -> MethodFn:
        if name in _REGISTRY:
            raise ValueError(f"a merge method named '{name}' is already registered")
        _REGISTRY[name] = MergeMethod(name, description, reference, options, needs, fn)
        return fn
    return deco


def _discover() -> None:
    """Import the package's own method modules (once) and any entry point not tried yet."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = set()
        package = importlib.import_module(__package__)
        import_submodules(__package__, package.__path__, skip=("registry",))
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _PLUGINS:
            continue
        _PLUGINS.add(key)
        try:
            ep.load()  # importing the plugin's module runs its @register
        except Exception as exc:  # a broken plugin must not break gffmerge
            warnings.warn(f"merge-method plugin '{ep.name}' ({ep.value}) failed to load and "
                          f"is skipped: {type(exc).__name__}: {exc}", stacklevel=3)


# What `gffmerge.merge()` and `gffmerge merge` run without a method: the best configuration
# measured in benchmarks/results/merge_quality.md (progressive inputs, tangent rows for
# conservative models, ridge and β chosen on validation data).
DEFAULT_METHOD = "progressive"


def get(name: str) -> MergeMethod:
    """The method registered as ``name``."""
    if _PLUGINS is None or name not in _REGISTRY:
        _discover()
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
    """Names of all registered methods (built-in and from installed plugins)."""
    _discover()
    return sorted(_REGISTRY)


def _type_name(hint) -> str:
    """An option's type as a user reads it: ``float | 'auto'``, ``int | None``,
    ``list of float``."""
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) in (tuple, list) and args:  # tuple[float, ...]: a YAML list
        return f"list of {_type_name(args[0])}"
    return getattr(hint, "__name__", str(hint))
