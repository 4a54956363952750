"""Diagonal empirical Fisher information of a model's training loss on its own data.

``F[p] = Σ_frames (∂ℓ_frame / ∂p)²``: one gradient per frame (not per batch), squared and
summed in float64, for every floating parameter ``p``. For force fields the per-frame loss
is the training loss of :mod:`gffmerge.train` restricted to one frame,
``w_E (ΔE/N)² + w_F mean(ΔF²)`` (eV units), so the Fisher needs labelled data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import EmptyDataError
from ..models.base import ForceField
from .batches import batch_entries, move_to

PerSampleLoss = Callable[[nn.Module, Any], Tensor]


def force_field_loss(model: nn.Module, batch: Any, *, energy_weight: float = 1.0,
                     force_weight: float = 10.0) -> Tensor:
    """Per-frame training loss ``[G]`` of a force field on a labelled :class:`AtomsBatch`:
    ``w_E ((E − E_ref)/N)² + w_F · mean over the frame's atoms and axes of (F − F_ref)²``
    (the weights of :class:`gffmerge.train.TrainConfig`)."""
    if getattr(batch, "energy", None) is None or getattr(batch, "forces", None) is None:
        raise ValueError("Fisher merging needs labelled data (reference energies and "
                         "forces); these batches have none: pass data read with labels")
    out = model(batch)
    natoms = batch.natoms.to(torch.float64)
    de = (out["energy"] - batch.energy) / natoms
    sq = (out["forces"] - batch.forces).square().sum(1).to(torch.float64)
    f_mse = torch.zeros_like(natoms).index_add_(0, batch.batch, sq) / (3 * natoms)
    return energy_weight * de.square() + force_weight * f_mse


def diagonal_fisher(model: nn.Module, data: Iterable[Any], *,
                    loss: PerSampleLoss | None = None, limit: int | None = None,
                    device: torch.device | str | None = None, progress: bool = False,
                    label: str = "model") -> dict[str, Tensor]:
    """``{parameter name: F}`` (float64, the parameter's shape) of ``model`` on ``data``.

    ``loss(model, batch)`` returns one loss per sample ``[B]`` (default
    :func:`force_field_loss`); each sample's gradient is taken separately. ``limit`` counts
    samples and is checked after each batch (as in :func:`gffmerge.measure`). ``model`` is
    not modified: a copy is run (a :class:`ForceField` in training mode, so that forces are
    differentiable in the parameters).
    """
    from tqdm.auto import tqdm

    loss = loss or force_field_loss
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number of samples, got {limit}")
    work = copy.deepcopy(model)
    if device is not None:
        work = work.to(device)
    if isinstance(work, ForceField):
        work.train()
    names = [n for n, p in work.named_parameters() if p.is_floating_point()]
    params = [dict(work.named_parameters())[n] for n in names]
    for p in params:
        p.requires_grad_(True)
    fisher = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in zip(names, params)}
    seen = 0
    bar = tqdm(desc=f"Fisher {label}", unit="frame", disable=not progress, total=limit)
    for batch in data:
        batch = move_to(batch, device)
        losses = loss(work, batch).reshape(-1)
        if not torch.isfinite(losses).all():
            raise ValueError(f"{label}: the per-sample loss is not finite; check the data for "
                             "NaN labels and the model for NaN weights")
        for i in range(losses.shape[0]):
            grads = torch.autograd.grad(losses[i], params, retain_graph=i + 1 < len(losses),
                                        allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    fisher[n] += g.detach().to(torch.float64).square()
        n = batch_entries(batch)
        seen += n
        bar.update(n)
        if limit is not None and seen >= limit:
            break
    bar.close()
    if seen == 0:
        raise EmptyDataError(f"{label}: no data to compute the Fisher information on; pass "
                             "at least one labelled batch")
    return fisher
