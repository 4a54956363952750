"""TIES-Merging: trim each task vector, elect a sign per entry, average the agreeing entries."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..report import MergeReport, MergeResult
from ..solver import conclude
from ._task_vectors import apply_task_vector, task_vectors
from .registry import Needs, register


@dataclass(frozen=True)
class TiesOptions:
    """Trim, elect, disjoint merge; ``θ = θ₀ + λ τ_m``.

    - ``density`` d: per tensor and per source, keep the ``ceil(d·n)`` entries of largest
      |τ_k| (of the tensor's n entries) and zero the rest;
    - the elected sign of an entry is the sign of the sum of the trimmed τ_k there
      ("total mass"; + where the sum is exactly 0);
    - τ_m is the mean over the sources whose trimmed entry has the elected sign (0 where
      none has);
    - ``lam`` λ scales τ_m.

    Defaults d = 0.2, λ = 1.0: the TIES paper's recommendation, inside the GFFMerge
    paper's grids (d ∈ {0.05, 0.1, 0.2, 0.3, 0.4}, λ ∈ {0.3, 0.5, 0.8, 1.0, 1.2}), which
    it searches on the combined validation split.
    """

    density: float = 0.2
    lam: float = 1.0

    __option_help__ = {
        "density": "fraction d of each task vector's entries kept per tensor (top |τ|)",
        "lam": "λ, the scale of the merged task vector",
    }

    def __post_init__(self):
        if not (isinstance(self.density, int | float) and 0 < self.density <= 1):
            raise ValueError(f"density must be in (0, 1], got {self.density!r}")
        if not (isinstance(self.lam, int | float) and math.isfinite(self.lam)):
            raise ValueError(f"lam must be a finite number, got {self.lam!r}")


def trim(tau: Tensor, density: float) -> Tensor:
    """``tau`` ``[K, *shape]`` with all but each row's ``ceil(density·n)`` largest-magnitude
    entries set to 0 (per source, over the whole tensor)."""
    flat = tau.reshape(tau.shape[0], -1)
    # rounded first, so that 0.3 · 100 (30.000000000000004 in floating point) keeps 30
    keep = min(flat.shape[1], math.ceil(round(density * flat.shape[1], 9)))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep > 0:
        mask.scatter_(1, flat.abs().topk(keep, dim=1).indices, True)
    return (flat * mask).reshape(tau.shape)


def elect_and_merge(trimmed: Tensor) -> Tensor:
    """The disjoint mean of ``trimmed`` ``[K, *shape]`` over the sources agreeing with the
    sign of the sum (+ on a zero sum); 0 where no source agrees."""
    elected = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0).to(trimmed.dtype)
    agree = torch.sign(trimmed) == elected
    count = agree.sum(0)
    return (trimmed * agree).sum(0) / count.clamp(min=1)


@register("ties", description="TIES: per-tensor top-d trim of task vectors, sign election "
                              "by total mass, disjoint mean, base + λ·merged",
          reference="https://arxiv.org/abs/2306.01708", options=TiesOptions,
          needs=Needs(stats=False, base_model=True))
def ties(models, stats, options: TiesOptions, *, base) -> MergeResult:
    t0 = time.perf_counter()
    theta0, tau = task_vectors(models, base)
    merged_tau = {key: elect_and_merge(trim(t, options.density)) for key, t in tau.items()}
    merged = apply_task_vector(models, theta0, merged_tau, options.lam)
    report = MergeReport("ties", asdict(options), len(models),
                         averaged=sorted(set(merged.state_dict()) - set(tau)))
    return conclude(merged, report, t0)
