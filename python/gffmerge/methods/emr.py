"""EMR-Merging: one unified task vector, plus a mask and a rescaler per task.

The merged model is ``θ₀ + τ_uni``. The task-specific model of source k (the variant EMR
reports, which needs to know which system an input belongs to) is
``θ₀ + λ_k (M_k ⊙ τ_uni)``: :meth:`EmrResult.task_model` builds it on demand from the
unified vector, the boolean masks and the scalars kept on the result.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from ..report import MergeReport, MergeResult
from ..solver import build_model, conclude
from ._task_vectors import apply_task_vector, task_vectors
from .registry import Needs, register

Election = Literal["mass", "count"]


@dataclass(frozen=True)
class EmrOptions:
    """- ``election``: the unified sign is the sign of Σ_k τ_k (``"mass"``, EMR) or of
      Σ_k sign(τ_k) (``"count"``, as the GFFMerge authors' code does); + on a tie.

    The unified magnitude is the largest |τ_k| among the sources with the elected sign;
    mask M_k = [τ_k ⊙ τ_uni > 0]; rescaler λ_k = Σ|τ_k| / Σ|M_k ⊙ τ_uni| over the whole
    model (0 when the mask is empty). EMR has no tuned hyperparameter.
    """

    election: Election = "mass"

    __option_help__ = {"election": "sign of the summed task vectors (mass, EMR) or of the "
                                   "summed signs (count, the GFFMerge authors' code)"}

    def __post_init__(self):
        if self.election not in ("mass", "count"):
            raise ValueError(f"election must be 'mass' or 'count', got {self.election!r}")


@dataclass
class EmrReport(MergeReport):
    """The merge report plus EMR's per-task rescalers and mask densities."""

    rescalers: list[float] = field(default_factory=list)
    mask_density: list[float] = field(default_factory=list)  # fraction of entries kept

    def to_markdown(self) -> str:
        lines = ["", "| source | rescaler λ_k | mask density |", "|---|---|---|"]
        lines += [f"| {k} | {r:.4g} | {d:.3f} |"
                  for k, (r, d) in enumerate(zip(self.rescalers, self.mask_density))]
        lines += ["", "The merged model is θ₀ + τ_uni; source k's task-specific model "
                      "θ₀ + λ_k (M_k ⊙ τ_uni) is `result.task_model(k)` (Python API)."]
        return super().to_markdown() + "\n".join(lines) + "\n"


@dataclass
class EmrResult(MergeResult):
    """The unified model (``model``), and what rebuilds each task-specific one."""

    theta0: dict[str, Tensor] = field(default_factory=dict, repr=False)
    unified: dict[str, Tensor] = field(default_factory=dict, repr=False)
    masks: dict[str, Tensor] = field(default_factory=dict, repr=False)  # [K, *shape] bool
    rescalers: list[float] = field(default_factory=list)

    def task_model(self, k: int) -> nn.Module:
        """Source ``k``'s task-specific model ``θ₀ + λ_k (M_k ⊙ τ_uni)`` (buffers: the
        sources' mean, as in the unified model)."""
        if not 0 <= k < len(self.rescalers):
            raise IndexError(f"source {k} out of range: the merge had {len(self.rescalers)} "
                             "sources (0-based)")
        state = {key: v.clone() for key, v in self.model.state_dict().items()}
        for key, uni in self.unified.items():
            rebuilt = self.theta0[key] + self.rescalers[k] * (self.masks[key][k] * uni)
            state[key] = rebuilt.to(state[key].device, state[key].dtype)
        return build_model(self.model, state)


def unify(tau: Tensor, election: Election = "mass") -> tuple[Tensor, Tensor]:
    """``(τ_uni, masks)`` of stacked task vectors ``tau`` ``[K, *shape]``."""
    votes = tau.sum(0) if election == "mass" else torch.sign(tau).sum(0)
    sign = torch.where(votes >= 0, 1.0, -1.0).to(tau.dtype)
    agree = tau * sign > 0
    unified = sign * (tau.abs() * agree).amax(0)
    return unified, tau * unified > 0


@register("emr", description="EMR-Merging: unified task vector (elected sign, largest "
                             "agreeing |τ|); per-task masks and rescalers for result.task_model(k)",
          reference="https://arxiv.org/abs/2405.17461", options=EmrOptions,
          needs=Needs(stats=False, base_model=True))
def emr(models, stats, options: EmrOptions, *, base) -> MergeResult:
    t0 = time.perf_counter()
    theta0, tau = task_vectors(models, base)
    k = len(models)
    unified, masks = {}, {}
    mass = torch.zeros(k, dtype=torch.float64)
    kept_mass = torch.zeros(k, dtype=torch.float64)
    kept, total = torch.zeros(k, dtype=torch.float64), 0
    for key, t in tau.items():
        unified[key], masks[key] = unify(t, options.election)
        flat_t, flat_m = t.reshape(k, -1), masks[key].reshape(k, -1)
        mass += flat_t.abs().sum(1).cpu()
        kept_mass += (flat_m * unified[key].reshape(1, -1).abs()).sum(1).cpu()
        kept += flat_m.sum(1).cpu().to(torch.float64)
        total += flat_m.shape[1]
    rescalers = [float(m / d) if d > 0 else 0.0 for m, d in zip(mass, kept_mass)]
    merged = apply_task_vector(models, theta0, unified, 1.0)
    report = EmrReport("emr", asdict(options), k,
                       averaged=sorted(set(merged.state_dict()) - set(tau)),
                       rescalers=rescalers,
                       mask_density=[float(x) / max(total, 1) for x in kept])
    result = conclude(merged, report, t0)
    return EmrResult(result.model, result.report, theta0=theta0, unified=unified, masks=masks,
                     rescalers=rescalers)
