"""Task vectors τ_k = θ_k − θ₀ of fine-tuned sources against their common base θ₀.

Shared by the task-vector baselines (``task_arithmetic``, ``ties``, ``emr``). Only floating
*parameters* have task vectors; buffers (energy references, normalisation statistics) are
data statistics, not learned directions, and the merged model keeps the sources' mean of
them, as :func:`gffmerge.solver.mean_state_dict` computes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..architecture import architecture_signature, check_same_architecture
from ..errors import ArchitectureMismatchError
from ..solver import build_model, mean_state_dict


def check_base(models: Sequence[nn.Module], base: nn.Module) -> None:
    """Raise a one-line :class:`ArchitectureMismatchError` unless ``base`` has the sources'
    architecture (state-dict names, shapes, dtypes, linear layers)."""
    check_same_architecture(models)
    if not isinstance(base, nn.Module):
        raise TypeError(f"base must be an nn.Module (the pre-trained model), got "
                        f"{type(base).__name__}")
    if architecture_signature(base) != architecture_signature(models[0]):
        ref, got = _layout(models[0]), _layout(base)
        shapes = sorted(k for k in set(ref) & set(got) if ref[k] != got[k])
        if shapes:
            (s0, d0), (s1, d1) = ref[shapes[0]], got[shapes[0]]
            first = (f"'{shapes[0]}' is {list(s1)} {d1} in the base, {list(s0)} {d0} in "
                     "the sources")
        elif set(ref) ^ set(got):
            key = sorted(set(ref) ^ set(got))[0]
            first = f"'{key}' is only in the {'sources' if key in ref else 'base'}"
        else:
            first = "the linear layers differ"
        raise ArchitectureMismatchError(
            f"the base model does not have the sources' architecture (first difference: "
            f"{first}); pass the foundation the sources were fine-tuned from")


def _layout(model: nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()}


def parameter_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the floating parameters of ``model`` (the ones with task vectors)."""
    state = model.state_dict()
    return [name for name, p in model.named_parameters()
            if name in state and p.is_floating_point()]


def task_vectors(models: Sequence[nn.Module], base: nn.Module
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(θ₀, τ)``: the base's parameters and the stacked task vectors ``τ[key]`` of shape
    ``[K, *shape]``, both float64 on the base's device."""
    check_base(models, base)
    base_state = base.state_dict()
    states = [m.state_dict() for m in models]
    theta0, tau = {}, {}
    for key in parameter_keys(base):
        t0 = base_state[key].detach().to(torch.float64)
        theta0[key] = t0
        tau[key] = torch.stack([s[key].detach().to(t0.device, torch.float64) - t0
                                for s in states])
    return theta0, tau


def apply_task_vector(models: Sequence[nn.Module], theta0: Mapping[str, Tensor],
                      merged_tau: Mapping[str, Tensor], scale: float) -> nn.Module:
    """A copy of ``models[0]`` with parameters ``θ₀ + scale·τ`` (each key of ``merged_tau``)
    and every other state-dict entry (buffers) set to the sources' mean."""
    state = mean_state_dict(models)
    for key, tau in merged_tau.items():
        ref = state[key]
        state[key] = (theta0[key] + scale * tau).to(ref.device, ref.dtype)
    return build_model(models[0], state)
