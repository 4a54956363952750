"""Mergeable units that are not a plain ``nn.Linear``: linear groups and foreign Linears.

The collector measures, and the solver solves, one system per *unit*. An ``nn.Linear`` is a
unit. Two other kinds are described here, so that models built with other libraries (PyTorch
Geometric, :mod:`gffmerge.models.pyg`) are merged as they are:

* a **foreign Linear**: a module that computes ``x Wᵀ + b`` with ``weight``/``bias``
  parameters but is no ``nn.Linear`` (PyG's ``Linear``); it is measured on its first
  argument, like ``nn.Linear``.
* a **linear group**: several weight matrices whose outputs are *added*, plus at most one
  bias, e.g. GraphSAGE's ``lin_l(mean_N(h)) + lin_r(h) + b``. The group is one linear map of
  the joined input ``[x_1, …, x_m]``; solving its members separately would fit each to the
  whole output. Its input rows come from ``gram_parts`` on the arguments of the module that
  owns it (the convolution), its output is that module's output.

A group's unit name spells out its parameters, so the solver reads and writes them from a
state dict alone: ``"<module>[<w_1>+…+<w_m>|<bias>]"`` with keys relative to ``<module>``,
e.g. ``"convs.0[lin_l.weight+lin_r.weight|lin_l.bias]"`` (SAGE) or
``"conv1[lin.weight|bias]"`` (GCN: the Linear before propagation, the conv's bias after it).
The joint ``Θ = [W_1ᵀ; …; W_mᵀ; bᵀ]`` is split back by the members' widths
(:func:`unit_keys`).

Adapters (one function per library, :func:`register_adapter`) recognise modules and return
their units; :func:`linear_units` walks a model and returns every unit in module order.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..architecture import LinearInfo
from .parts import GramInput

_GROUP = re.compile(r"^(?P<module>[^\[\]]*)\[(?P<weights>[^\[\]|]+)(?:\|(?P<bias>[^\[\]|]*))?\]$")


def group_name(module: str, weights: Iterable[str], bias: str | None) -> str:
    """The unit name of a group owned by ``module`` with weight keys ``weights`` (in input
    column order) and the bias key ``bias`` (``None``: no bias), keys relative to ``module``."""
    body = "+".join(weights)
    return f"{module}[{body}|{bias}]" if bias else f"{module}[{body}]"


def unit_keys(name: str) -> tuple[list[str], str | None]:
    """State-dict keys of a unit: its weight keys (one for a Linear, one per member for a
    group, in input column order) and its bias key (``None`` for a group without bias)."""
    m = _GROUP.match(name)
    if m is None:
        prefix = f"{name}." if name else ""
        return [f"{prefix}weight"], f"{prefix}bias"
    prefix = f"{m['module']}." if m["module"] else ""
    weights = [prefix + w for w in m["weights"].split("+")]
    return weights, (prefix + m["bias"]) if m["bias"] else None


def is_group(name: str) -> bool:
    return _GROUP.match(name) is not None


class LinearView:
    """What the collector hooks for a unit that is not an ``nn.Linear``: the shape of the
    unit and a forward hook on the module whose call it measures."""

    def __init__(self, module: nn.Module, in_features: int, out_features: int):
        self.module = module
        self.in_features = int(in_features)
        self.out_features = int(out_features)

    def register_forward_hook(self, hook: Callable, *, with_kwargs: bool = False):
        return self.module.register_forward_hook(hook, with_kwargs=with_kwargs)


class GroupView(LinearView):
    """A linear group: ``parts(*args, **kwargs)`` describes the joined input rows of one call
    of ``module`` (a :class:`~gffmerge.models.parts.StructuredInput` for the collector);
    :meth:`dense_input` is the explicit ``[R, in_features]`` matrix (the dense reference).

    Optional: ``input_key(*args, **kwargs)`` returns ``(tag, tensors)`` such that two calls
    with equal tags on the same, unchanged tensors have the same input rows whatever the
    module's weights (e.g. a graph convolution on the raw features: the rows depend on the
    features, the graph and the conv's settings only), or None; the collector may then
    share one Gram between models (``measure(shared=...)``). ``output_rows(output)``
    selects the output rows that match the input rows (when ``parts`` measures a subset).
    """

    def __init__(self, module: nn.Module, in_features: int, out_features: int,
                 parts: Callable[..., GramInput], *,
                 input_key: Callable[..., tuple | None] | None = None,
                 output_rows: Callable[[Tensor], Tensor] | None = None):
        super().__init__(module, in_features, out_features)
        self._parts = parts
        self._input_key = input_key
        self._output_rows = output_rows

    def gram_parts(self, *args: Any, **kwargs: Any) -> GramInput:
        return self._parts(*args, **kwargs)

    def dense_input(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._parts(*args, **kwargs).materialize()

    def input_key(self, *args: Any, **kwargs: Any) -> tuple | None:
        return None if self._input_key is None else self._input_key(*args, **kwargs)

    def output_rows(self, output: Tensor) -> Tensor:
        return output if self._output_rows is None else self._output_rows(output)


@dataclass(frozen=True)
class Unit:
    """One mergeable unit: its shape (``info``), what the collector hooks (``view``: the
    ``nn.Linear`` itself or a :class:`LinearView`)."""

    info: LinearInfo
    view: Any


Adapter = Callable[[str, nn.Module], "tuple[list[Unit], bool] | None"]
"""``adapter(name, module)`` → ``None`` (not recognised) or ``(units, claims_children)``:
the units of ``module`` and whether its submodules are covered by them (not walked)."""

_ADAPTERS: list[Adapter] = []
# modules imported on first use when their library is loaded (the library: the adapter)
_LAZY = {"torch_geometric": "gffmerge.models.pyg"}


def register_adapter(adapter: Adapter) -> Adapter:
    """Add ``adapter`` (see :data:`Adapter`) to the ones :func:`linear_units` asks first."""
    if adapter not in _ADAPTERS:
        _ADAPTERS.append(adapter)
    return adapter


def _load_adapters() -> None:
    import importlib

    for library, module in _LAZY.items():
        if sys.modules.get(library) is not None and module not in sys.modules:
            importlib.import_module(module)


def _units_of(name: str, module: nn.Module) -> tuple[list[Unit], bool] | None:
    for adapter in _ADAPTERS:
        found = adapter(name, module)
        if found is not None:
            return found
    if isinstance(module, nn.Linear):
        info = LinearInfo(name, module.in_features, module.out_features, module.bias is not None)
        return [Unit(info, module)], True
    return None


def linear_units(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, Unit]:
    """Every mergeable unit of ``model`` by name, in module order: each ``nn.Linear`` (as
    :func:`~gffmerge.architecture.linear_layers` finds them), and the foreign Linears and
    linear groups that registered adapters recognise (PyTorch Geometric's, when it is
    imported). ``layers`` selects names or fnmatch patterns; one matching nothing is an
    error."""
    _load_adapters()
    found: dict[str, Unit] = {}
    covered: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(c + ".") for c in covered):
            continue
        res = _units_of(name, module)
        if res is None:
            continue
        units, claims = res
        for u in units:
            found[u.info.name] = u
        if claims and name:
            covered.append(name)
    if layers is None:
        return found
    patterns = list(layers)
    for p in patterns:
        if not any(n == p or fnmatch.fnmatchcase(n, p) for n in found):
            names = list(found)
            sample = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise ValueError(f"layer selection '{p}' matches no linear layer of the model; "
                             f"linear layers are: {sample}")
    return {n: u for n, u in found.items()
            if any(n == p or fnmatch.fnmatchcase(n, p) for p in patterns)}
