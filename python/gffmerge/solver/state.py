"""State dicts of merged models: the sources' mean, layer parameters in and out, the copy."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ArchitectureMismatchError


def mean_state_dict(models: Sequence[nn.Module]) -> dict[str, Tensor]:
    """Element-wise mean of every floating tensor (computed in float64, stored back in the
    source dtype); integer and bool buffers must agree across models."""
    dicts = [m.state_dict() for m in models]
    out: dict[str, Tensor] = {}
    for key, ref in dicts[0].items():
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
    """A copy of ``template`` carrying ``state``."""
    merged = copy.deepcopy(template)
    merged.load_state_dict(state)
    return merged


def param_keys(layer: str) -> tuple[str, str]:
    """State-dict keys of the weight and bias of the linear layer named ``layer``."""
    prefix = f"{layer}." if layer else ""
    return f"{prefix}weight", f"{prefix}bias"


def layer_theta(state: Mapping[str, Tensor], layer: str,
                device: torch.device | str | None = None) -> Tensor:
    """``Θ = [Wᵀ; bᵀ]`` of ``layer`` in float64, ``[in+1, out]`` (a zero row when the layer
    has no bias): the layer as an affine map of the augmented input ``[x, 1]``."""
    wkey, bkey = param_keys(layer)
    w = state[wkey].detach().to(device=device, dtype=torch.float64)
    bias = (state[bkey].detach().to(device=device, dtype=torch.float64) if bkey in state
            else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
    return torch.cat([w.T, bias[None]])


def write_layer(state: dict[str, Tensor], layer: str, theta: Tensor) -> list[str]:
    """Write ``Θ`` into ``state`` as the weight of ``layer``, in each entry's dtype and device.

    ``Θ`` is ``Wᵀ`` (``[in, out]``) or ``[Wᵀ; bᵀ]`` (``[in+1, out]``, a fitted intercept):
    the bias is written when the layer has one and dropped otherwise (the official
    scripts' bias-free layers). Returns the keys written.
    """
    wkey, bkey = param_keys(layer)
    out, d_in = state[wkey].shape
    if theta.shape not in ((d_in, out), (d_in + 1, out)):
        raise ValueError(f"Θ for layer '{layer}' must be [{d_in}, {out}] or [{d_in + 1}, "
                         f"{out}] (with intercept), got {list(theta.shape)}")
    state[wkey] = theta[:d_in].T.to(state[wkey].dtype).to(state[wkey].device)
    if theta.shape[0] == d_in + 1 and bkey in state:
        state[bkey] = theta[d_in].to(state[bkey].dtype).to(state[bkey].device)
        return [wkey, bkey]
    return [wkey]


def write_back(template: nn.Module, state: dict[str, Tensor],
               thetas: Mapping[str, Tensor]) -> tuple[nn.Module, set[str]]:
    """A copy of ``template`` carrying ``state`` (e.g. :func:`mean_state_dict`) with every
    layer in ``thetas`` overwritten by its solved ``Θ`` (see :func:`write_layer`); also
    returns the state-dict keys written."""
    written: set[str] = set()
    for layer, theta in thetas.items():
        written.update(write_layer(state, layer, theta))
    return build_model(template, state), written
