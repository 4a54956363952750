"""State dicts of merged models: the sources' mean, layer parameters in and out, the copy."""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ArchitectureMismatchError
from ..models.groups import unit_keys


def mean_state_dict(models: Sequence[nn.Module],
                    keys: Collection[str] | None = None) -> dict[str, Tensor]:
    """Element-wise mean of every floating tensor (computed in float64, stored back in the
    source dtype); integer and bool buffers must agree across models. ``keys``: only these
    entries (default: all)."""
    dicts = [m.state_dict() for m in models]
    out: dict[str, Tensor] = {}
    for key, ref in dicts[0].items():
        if keys is not None and key not in keys:
            continue
        if ref.is_floating_point() or ref.is_complex():
            acc = torch.stack([d[key].detach().to(ref.device, torch.float64)
                               if not ref.is_complex() else d[key].detach().to(ref.device)
                               for d in dicts]).mean(0)
            out[key] = acc.to(ref.dtype)
        else:
            for k, d in enumerate(dicts[1:], start=1):
                if not torch.equal(d[key].to(ref.device), ref):
                    raise ArchitectureMismatchError(
                        f"non-float buffer '{key}' ({ref.dtype}) differs between model 0 and "
                        f"model {k}; integer/bool buffers cannot be averaged, so the sources "
                        "must agree on them (same counters, masks, indices)")
            out[key] = ref.detach().clone()
    return out


def build_model(template: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """A copy of ``template`` carrying ``state``. The template's parameters and buffers that
    ``state`` overwrites are not copied: the copy starts with empty tensors of their shapes,
    dtypes and strides in their place (plain ``nn.Parameter``s and tensors; others are
    copied), which ``load_state_dict`` then fills."""
    memo: dict[int, Tensor] = {}
    for name, p in template.named_parameters(remove_duplicate=False):
        if name in state and type(p) is nn.Parameter and id(p) not in memo:
            memo[id(p)] = nn.Parameter(torch.empty_like(p), requires_grad=p.requires_grad)
    for name, b in template.named_buffers(remove_duplicate=False):
        if name in state and type(b) is Tensor and id(b) not in memo:
            memo[id(b)] = torch.empty_like(b)
    merged = copy.deepcopy(template, memo)
    merged.load_state_dict(state)
    return merged


def param_keys(layer: str) -> tuple[str, str]:
    """State-dict keys of the weight and bias of the linear layer named ``layer``."""
    prefix = f"{layer}." if layer else ""
    return f"{prefix}weight", f"{prefix}bias"


def layer_theta(state: Mapping[str, Tensor], layer: str,
                device: torch.device | str | None = None) -> Tensor:
    """``Θ = [Wᵀ; bᵀ]`` of ``layer`` in float64, ``[in+1, out]`` (a zero row when the layer
    has no bias): the layer as an affine map of the augmented input ``[x, 1]``. For a linear
    group (:mod:`gffmerge.models.groups`) ``W`` is its members' weights side by side."""
    wkeys, bkey = unit_keys(layer)
    w = torch.cat([state[k].detach().to(device=device, dtype=torch.float64) for k in wkeys],
                  dim=1)
    bias = (state[bkey].detach().to(device=device, dtype=torch.float64)
            if bkey is not None and bkey in state
            else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
    return torch.cat([w.T, bias[None]])


def write_layer(state: dict[str, Tensor], layer: str, theta: Tensor) -> list[str]:
    """Write ``Θ`` into ``state`` as the weight of ``layer``, in each entry's dtype and device.

    ``Θ`` is ``Wᵀ`` (``[in, out]``) or ``[Wᵀ; bᵀ]`` (``[in+1, out]``, a fitted intercept):
    the bias is written when the layer has one and dropped otherwise (the official
    scripts' bias-free layers). A linear group's ``Wᵀ`` is split into its members by their
    widths. Returns the keys written.
    """
    wkeys, bkey = unit_keys(layer)
    widths = [state[k].shape[1] for k in wkeys]
    out, d_in = state[wkeys[0]].shape[0], sum(widths)
    if theta.shape not in ((d_in, out), (d_in + 1, out)):
        raise ValueError(f"Θ for layer '{layer}' must be [{d_in}, {out}] or [{d_in + 1}, "
                         f"{out}] (with intercept), got {list(theta.shape)}")
    col = 0
    for key, width in zip(wkeys, widths):
        state[key] = theta[col:col + width].T.to(state[key].dtype).to(state[key].device)
        col += width
    if theta.shape[0] == d_in + 1 and bkey is not None and bkey in state:
        state[bkey] = theta[d_in].to(state[bkey].dtype).to(state[bkey].device)
        return [*wkeys, bkey]
    return list(wkeys)


def mean_written(models: Sequence[nn.Module], thetas: Mapping[str, Tensor]
                 ) -> tuple[nn.Module, set[str]]:
    """``write_back(models[0], mean_state_dict(models), thetas)`` without forming what the
    ``Θ`` overwrite: the mean only of the entries no layer of ``thetas`` writes (a GNN whose
    every layer is solved needs none). The same model and keys written."""
    state = dict(models[0].state_dict())  # shapes, dtypes and devices for write_layer
    written: set[str] = set()
    for layer, theta in thetas.items():
        written.update(write_layer(state, layer, theta))
    rest = [k for k in state if k not in written]
    if rest:
        state.update(mean_state_dict(models, rest))
    return build_model(models[0], state), written


def write_back(template: nn.Module, state: dict[str, Tensor],
               thetas: Mapping[str, Tensor]) -> tuple[nn.Module, set[str]]:
    """A copy of ``template`` carrying ``state`` (e.g. :func:`mean_state_dict`) with every
    layer in ``thetas`` overwritten by its solved ``Θ`` (see :func:`write_layer`); also
    returns the state-dict keys written."""
    written: set[str] = set()
    for layer, theta in thetas.items():
        written.update(write_layer(state, layer, theta))
    return build_model(template, state), written
