"""Recording a model's layer inputs or outputs in one pass, stopping once they are seen.

Used by the progressive merge (:mod:`gffmerge.collect.progressive`): a stage needs the
inputs of its layers from the model merged so far and the outputs of the same layers from
each source, with their tangent rows (forward mode) when force-aware. Rows are copied when
recorded, so that a later in-place change of the same tensor by the model (a residual
``h += x`` after a layer) does not reach them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor, nn

from ..models.parts import Dense, Gathered, GramInput, StructuredInput
from .batches import default_forward
from .order import is_affine_norm, layer_input, layer_width
from .tangents import run_with_tangent, split_dual


class _StageDone(Exception):
    """Raised by a hook once every wanted layer has been seen: the rest of the forward is
    not needed."""


def _primal(t: Tensor | None) -> Tensor | None:
    return None if t is None else fwad.unpack_dual(t).primal.detach()


def structured_input(module: nn.Module, args: tuple, kwargs: dict, *,
                     dual: bool = False) -> GramInput | None:
    """The layer's input rows as a checked :class:`GramInput` (primal values when ``dual``:
    inside a forward-mode level), or None for a layer that describes no parts or no
    gathered part (e.g. a ``ConcatLinear`` on node-level rows: nothing to save there, and
    its blockwise products cost more than one dense product)."""
    if not isinstance(module, StructuredInput) or is_affine_norm(module):
        return None
    inp = module.gram_parts(*args, **kwargs)
    if not any(isinstance(p, Gathered) for p in inp.parts):
        return None  # node-level rows only: one dense product is cheaper than blockwise
    if dual:
        parts = []
        for p in inp.parts:
            if isinstance(p, Dense):
                parts.append(Dense(_primal(p.x)))
            else:
                parts.append(type(p)(_primal(p.src), p.index, _primal(p.gate)))
        inp = GramInput(tuple(parts), inp.rows)
    inp.check(module.in_features)
    return inp


def _tangent(t: Tensor | None) -> Tensor | None:
    if t is None:
        return None
    primal, tangent = fwad.unpack_dual(t)
    return torch.zeros_like(primal).detach() if tangent is None else tangent.detach()


def structured_tangent(module: nn.Module, args: tuple, kwargs: dict) -> GramInput | None:
    """The tangent rows of a structured layer's input as a :class:`GramInput` (inside a
    forward-mode level), without the ``[R, width]`` tangent tensor: a dense part ``x``
    gives ``ẋ``, a gathered part ``g · h[i]`` gives ``g · ḣ[i]`` (the same index and gate;
    node-level tangents). None when that is not the tangent: a gate that depends on the
    positions (its tangent adds a second gathered term ``ġ · h[i]``), aggregated parts, or
    no gathered part (see :func:`structured_input`)."""
    if not isinstance(module, StructuredInput) or is_affine_norm(module):
        return None
    inp = module.gram_parts(*args, **kwargs)
    if not any(isinstance(p, Gathered) for p in inp.parts):
        return None
    parts = []
    for p in inp.parts:
        if isinstance(p, Dense):
            parts.append(Dense(_tangent(p.x)))
        elif isinstance(p, Gathered) and (
                p.gate is None or fwad.unpack_dual(p.gate).tangent is None):
            parts.append(Gathered(_tangent(p.src), p.index, _primal(p.gate)))
        else:
            return None
    out = GramInput(tuple(parts), inp.rows)
    out.check(module.in_features)
    return out


class _Recorder:
    """Hooks recording inputs (``what="input"``), outputs (``"output"``) or both
    (``"both"``: one pass for the one-shot merge, where the model giving the inputs is
    the source giving the targets) of some layers of a model.

    With ``structured``, the input of a layer that describes its parts is recorded as its
    :class:`GramInput`, and so are its tangent rows when on (:func:`structured_tangent`;
    the dense tangent of its input where that does not apply)."""

    def __init__(self, model: nn.Module, names: Iterable[str], what: str,
                 calls: dict[str, int] | None, tangents: bool, structured: bool = False,
                 sink: Callable | None = None):
        modules = dict(model.named_modules())
        self.names = list(names)
        Seen = dict[str, list[tuple[Tensor | GramInput, Tensor | None]]]
        self.seen: Seen = {n: [] for n in self.names}
        self.outputs: Seen | None = {n: [] for n in self.names} if what == "both" else None
        self.count = dict.fromkeys(self.names, 0)
        self.calls = calls
        self.tangents = tangents
        self.sink = sink
        self.handles = []
        for n in self.names:
            m = modules[n]

            def hook(module, args, kwargs, output, n=n):
                # copies only when kept past the hook (module docstring); a sink uses them
                # before the model can change them
                keep = sink is None
                y = None
                if what != "input":
                    y = self._rows(output.reshape(-1, layer_width(module)), keep)
                parts = (structured_input(module, args, kwargs, dual=self.tangents)
                         if what != "output" and structured else None)
                if parts is not None:
                    tangent = None
                    if self.tangents:
                        tangent = structured_tangent(module, args, kwargs)
                        if tangent is None:
                            tangent = split_dual(layer_input(module, args, kwargs))[1]
                    x = (parts, tangent)
                elif what != "output":
                    x = self._rows(layer_input(module, args, kwargs), keep)
                self.count[n] += 1
                if sink is not None:
                    sink(n, x, y)
                elif what == "output":
                    self.seen[n].append(y)
                else:
                    self.seen[n].append(x)
                    if self.outputs is not None:
                        self.outputs[n].append(y)
                self._done()

            self.handles.append(m.register_forward_hook(hook, with_kwargs=True))

    def _rows(self, t: Tensor, copy: bool) -> tuple[Tensor, Tensor | None]:
        """``(primal, tangent or None)`` of ``t``, copied when ``copy``: the model may change
        the tensor in place later in the same forward (CHGNet's ``h = mlp_out(h);
        h += residual``), which a view would see; kept rows must be the values the layer
        saw or gave. Kept rows get zeros for a tensor that does not depend on the
        positions; rows for a sink get None (no zeros made, no sums of zeros formed)."""
        if self.tangents:
            if copy:
                primal, tangent = split_dual(t)
                return primal.clone(), tangent.clone()
            primal, tangent = fwad.unpack_dual(t)
            return primal.detach(), None if tangent is None else tangent.detach()
        return (t.detach().clone() if copy else t.detach()), None

    def _done(self) -> None:
        if self.calls is not None and all(
                self.count[x] >= self.calls.get(x, 1) for x in self.names):
            raise _StageDone

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def run_recording(model: nn.Module, batch: Any, names: Iterable[str], what: str, *,
                  u: Tensor | None = None, calls: dict[str, int] | None = None,
                  forward=default_forward, structured: bool = False,
                  sink: Callable | None = None) -> Any:
    """Run ``model`` on ``batch`` (eval, no grad) and return, per named layer and call, its
    ``(input or output rows, tangent rows or None)``; ``what="both"`` returns ``(inputs,
    outputs)``, two such dicts from the one pass. With ``u`` the energy path runs with
    positions dual along ``u`` (tangents); with ``calls`` the pass stops once every named
    layer has been called that often; with ``structured`` (inputs) a layer that
    describes its parts gives its :class:`GramInput` instead of input rows. With ``sink``
    (inputs), each call's rows go to ``sink(name, (x, ẋ), (y, ẏ) or None)`` inside the
    hook, as views (no copies, nothing kept; a dense tangent is None where the rows do
    not depend on the positions), and the returned dicts stay empty."""
    if sink is not None and what == "output":
        raise ValueError("a sink takes a layer's inputs: use what='input' or 'both'")
    if what not in ("input", "output", "both"):
        raise ValueError(f"what must be 'input', 'output' or 'both', got {what!r}")
    rec = _Recorder(model, names, what, calls, tangents=u is not None,
                    structured=structured and what != "output", sink=sink)
    try:
        with torch.no_grad():
            if u is None:
                forward(model, batch)
            else:
                with fwad.dual_level():
                    run_with_tangent(model, batch, u, forward)
    except _StageDone:
        pass
    finally:
        rec.remove()
    return rec.seen if rec.outputs is None else (rec.seen, rec.outputs)
