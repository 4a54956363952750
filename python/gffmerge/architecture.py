"""What makes models mergeable: same parameter names and shapes, and which layers are linear."""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ArchitectureMismatchError


@dataclass(frozen=True)
class LinearInfo:
    """Shape metadata of one ``nn.Linear`` (or subclass) the merge can solve."""

    name: str
    in_features: int
    out_features: int
    has_bias: bool

    def to_dict(self) -> dict:
        return {"name": self.name, "in_features": self.in_features,
                "out_features": self.out_features, "has_bias": self.has_bias}


def _entries(model: nn.Module, state: dict | None = None
             ) -> list[tuple[str, tuple[int, ...], str]]:
    state = model.state_dict() if state is None else state
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]


def architecture_signature(model: nn.Module, state: dict | None = None) -> str:
    """Hash of the state-dict layout (names, shapes, dtypes), independent of values
    (``state``: ``model.state_dict()`` when the caller has it already)."""
    h = hashlib.sha256()
    for name, shape, dtype in _entries(model, state):
        h.update(f"{name}:{shape}:{dtype};".encode())
    for name, info in linear_layers(model).items():
        h.update(f"linear {name}:{info.in_features}:{info.out_features}:{info.has_bias};".encode())
    return h.hexdigest()[:16]


def fingerprint(model: nn.Module, signature: str | None = None,
                state: dict | None = None) -> str:
    """Hash of the state dict's layout *and* values: identifies the exact model measured.
    ``signature`` (:func:`architecture_signature`) and ``state`` (``model.state_dict()``)
    when the caller has them already."""
    state = model.state_dict() if state is None else state
    signature = architecture_signature(model, state) if signature is None else signature
    h = hashlib.sha256(signature.encode())
    for _, v in state.items():
        t = v.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def check_same_architecture(models: Sequence[nn.Module], *, max_listed: int = 5) -> None:
    """Raise :class:`ArchitectureMismatchError` listing the first differences between models."""
    if len(models) == 0:
        raise ArchitectureMismatchError("no models were given; pass at least one source model")
    ref = dict((k, (s, d)) for k, s, d in _entries(models[0]))
    for k, model in enumerate(models[1:], start=1):
        other = dict((n, (s, d)) for n, s, d in _entries(model))
        diffs = []
        for name in ref.keys() - other.keys():
            diffs.append(f"'{name}' is in model 0 but not in model {k}")
        for name in other.keys() - ref.keys():
            diffs.append(f"'{name}' is in model {k} but not in model 0")
        for name in ref.keys() & other.keys():
            if ref[name] != other[name]:
                (s0, d0), (s1, d1) = ref[name], other[name]
                diffs.append(f"'{name}' has shape {list(s0)} {d0} in model 0 "
                             f"but {list(s1)} {d1} in model {k}")
        if diffs:
            diffs.sort()
            shown = "\n  ".join(diffs[:max_listed])
            more = f"\n  ... and {len(diffs) - max_listed} more" if len(diffs) > max_listed else ""
            raise ArchitectureMismatchError(
                f"models 0 and {k} do not have the same architecture ({len(diffs)} "
                f"difference(s)):\n  {shown}{more}\n"
                "All source models must be fine-tunes of one architecture with identical "
                "parameter names and shapes.")


def _selected(name: str, patterns: Iterable[str] | None) -> bool:
    if patterns is None:
        return True
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def linear_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, LinearInfo]:
    """Every ``nn.Linear`` (incl. subclasses) in ``model``, by qualified name, in module order.

    ``layers`` restricts the selection to names or fnmatch patterns (``"blocks.*.edge*"``);
    a pattern that matches nothing is an error, so typos do not silently skip layers.
    """
    patterns = list(layers) if layers is not None else None
    found: dict[str, LinearInfo] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and _selected(name, patterns):
            found[name] = LinearInfo(name, module.in_features, module.out_features,
                                     module.bias is not None)
    if patterns is not None:
        all_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        for p in patterns:
            if not any(n == p or fnmatch.fnmatchcase(n, p) for n in all_names):
                sample = ", ".join(all_names[:8]) + (" ..." if len(all_names) > 8 else "")
                raise ValueError(f"layer selection '{p}' matches no nn.Linear of the model; "
                                 f"linear layers are: {sample}")
    return found


def first_calls(model: nn.Module, names: Iterable[str], run: Callable[[], object]
                ) -> tuple[list[str], dict[str, int]]:
    """The named modules in the order ``run()`` first calls them, and how often each is
    called; ``run`` executes one forward of ``model`` (in eval mode, without grad). Modules
    never called are left out."""
    modules = dict(model.named_modules())
    order: list[str] = []
    calls: dict[str, int] = {}

    def pre_hook(name):
        def hook(module, args):
            if name not in calls:
                order.append(name)
                calls[name] = 0
            calls[name] += 1
        return hook

    handles = [modules[n].register_forward_pre_hook(pre_hook(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order, calls
