"""Element-wise mean of the source models (the simplest baseline)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..architecture import check_same_architecture
from ..report import MergeReport, MergeResult
from ..solver import build_model, conclude, mean_state_dict
from .registry import Needs, register


@dataclass(frozen=True)
class AverageOptions:
    """Simple averaging has no options."""


@register("average", description="element-wise mean of all parameters and buffers",
          reference="https://arxiv.org/abs/2203.05482", options=AverageOptions,
          needs=Needs(stats=False))
def average(models, stats, options: AverageOptions) -> MergeResult:
    t0 = time.perf_counter()
    check_same_architecture(models)
    state = mean_state_dict(models)
    report = MergeReport("average", {}, len(models), averaged=list(state))
    return conclude(build_model(models[0], state), report, t0)
