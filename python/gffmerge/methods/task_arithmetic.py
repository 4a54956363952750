"""Task arithmetic: the base plus the scaled sum of the sources' task vectors."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from ..report import MergeReport, MergeResult
from ..solver import conclude
from ._task_vectors import apply_task_vector, task_vectors
from .registry import Needs, register


@dataclass(frozen=True)
class TaskArithmeticOptions:
    """``θ = θ₀ + λ Σ_k τ_k`` with ``τ_k = θ_k − θ₀``; ``λ = 1/K`` is the plain average.

    The default λ = 0.3 is the task-arithmetic paper's usual choice (also FusionBench's);
    the GFFMerge paper tunes it on the combined validation split, which is left to the
    caller here.
    """

    lam: float = 0.3

    __option_help__ = {"lam": "λ, the scale of the summed task vectors (1/K = the average)"}

    def __post_init__(self):
        if not (isinstance(self.lam, int | float) and math.isfinite(self.lam)):
            raise ValueError(f"lam must be a finite number, got {self.lam!r}")


@register("task_arithmetic",
          description="base + λ × the sum of task vectors (θ_k − θ₀); buffers averaged",
          reference="https://arxiv.org/abs/2212.04089", options=TaskArithmeticOptions,
          needs=Needs(stats=False, base_model=True))
def task_arithmetic(models, stats, options: TaskArithmeticOptions, *, base) -> MergeResult:
    t0 = time.perf_counter()
    theta0, tau = task_vectors(models, base)
    summed = {key: t.sum(0) for key, t in tau.items()}
    merged = apply_task_vector(models, theta0, summed, options.lam)
    report = MergeReport("task_arithmetic", asdict(options), len(models),
                         averaged=sorted(set(merged.state_dict()) - set(tau)))
    return conclude(merged, report, t0)
