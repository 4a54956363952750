"""Fisher merging: a per-entry average of the sources weighted by their diagonal Fisher."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from ..architecture import check_same_architecture
from ..report import MergeReport, MergeResult
from ..solver import build_model, conclude, mean_state_dict
from ._task_vectors import parameter_keys
from .registry import Needs, register


@dataclass(frozen=True)
class FisherOptions:
    """``θ = Σ_k w_k ⊙ θ_k / Σ_k w_k`` with ``w_k = F_k / ‖F_k‖₂ + floor``.

    ``F_k`` is source k's diagonal empirical Fisher of its training loss on its own
    labelled data (:func:`gffmerge.collect.fisher.diagonal_fisher`), normalised by its
    L2 norm over the whole model so that every source weighs the same in total. The floor
    pulls entries with little information toward the plain mean; where every F_k is 0
    (e.g. embeddings of elements a source never saw) the merge is the mean — recorded per
    tensor in the report (``fallback``). Buffers are averaged. The default floor is the
    GFFMerge authors' 1e-6 threshold.
    """

    floor: float = 1e-6

    __option_help__ = {"floor": "added to every normalised Fisher weight (>= 0); larger "
                                "pulls toward the plain mean"}

    def __post_init__(self):
        if not (isinstance(self.floor, int | float) and math.isfinite(self.floor)
                and self.floor >= 0):
            raise ValueError(f"floor must be a finite number >= 0, got {self.floor!r}")


@dataclass
class FisherReport(MergeReport):
    """The merge report plus, per tensor, how many entries fell back to the mean."""

    fallback: dict[str, int] = field(default_factory=dict)  # entries with Σ_k F_k = 0
    fallback_fraction: float = 0.0  # of all parameter entries

    def to_markdown(self) -> str:
        listed = ", ".join(f"{k} ({n})" for k, n in self.fallback.items()) or "none"
        return (super().to_markdown() + f"\nFisher fallback to the mean "
                f"({100 * self.fallback_fraction:.2f} % of entries): {listed}\n")


@register("fisher", description="diagonal-Fisher-weighted average (per-model L2-normalised, "
                                "floor, mean where no source has information)",
          reference="https://arxiv.org/abs/2111.09832", options=FisherOptions,
          needs=Needs(stats=False, gradients=True, labelled_data=True))
def fisher(models, stats, options: FisherOptions, *, gradients) -> MergeResult:
    t0 = time.perf_counter()
    check_same_architecture(models)
    if len(gradients) != len(models):
        raise ValueError(f"fisher merging needs one Fisher per model: {len(models)} models, "
                         f"{len(gradients)} Fishers")
    keys = parameter_keys(models[0])
    states = [m.state_dict() for m in models]
    fishers = []
    for k, grads in enumerate(gradients):
        f = {}
        for key in keys:
            ref = states[k][key]
            g = grads.get(key)
            g = (torch.zeros(ref.shape, dtype=torch.float64) if g is None
                 else g.detach().to(torch.float64).cpu())
            if g.shape != ref.shape or not torch.isfinite(g).all() or (g < 0).any():
                raise ValueError(f"the Fisher of model {k} for '{key}' must be finite, >= 0 "
                                 f"and of shape {list(ref.shape)}, got {list(g.shape)}")
            f[key] = g
        norm = math.sqrt(sum(float(g.square().sum()) for g in f.values()))
        fishers.append({key: g / norm for key, g in f.items()} if norm > 0 else f)
    report = FisherReport("fisher", asdict(options), len(models))
    zero_models = [k for k, f in enumerate(fishers) if all(not g.any() for g in f.values())]
    if zero_models:
        report.warnings.append(f"the Fisher of model(s) {zero_models} is 0 everywhere: they "
                               "enter only through the floor; check their data and loss")
    state = mean_state_dict(models)
    entries = fallback_total = 0
    for key in keys:
        theta = torch.stack([s[key].detach().to(torch.float64).cpu() for s in states])
        info = torch.stack([f[key] for f in fishers])
        weights = info + options.floor
        total = weights.sum(0)
        none = info.sum(0) <= 0
        merged = torch.where(total > 0, (weights * theta).sum(0) / total.where(total > 0, 1.0),
                             theta.mean(0))
        merged = torch.where(none, theta.mean(0), merged)
        state[key] = merged.to(state[key].device, state[key].dtype)
        entries += none.numel()
        if none.any():
            report.fallback[key] = int(none.sum())
            fallback_total += int(none.sum())
    report.fallback_fraction = fallback_total / max(entries, 1)
    report.averaged = sorted(set(state) - set(keys))
    return conclude(build_model(models[0], state), report, t0)
