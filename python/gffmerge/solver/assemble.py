"""Build the merged state dict: the mean of the sources, then the solved layers on top."""

from __future__ import annotations

import copy
from collections.abc import Sequence

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
