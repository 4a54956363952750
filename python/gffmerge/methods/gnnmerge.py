"""GNNMerge, gradient variant: each layer's weights fitted by an optimiser, not solved.

GNNMerge (Garg et al. 2025) aligns every layer of the merged model with every source on
that source's own layer inputs and outputs, summing the per-source mean squared errors over
layers and sources and minimising them jointly by Adam (the authors' gradient script:
1000 full-batch epochs, lr 5e-2, from a fresh initialisation). Per linear layer, with
``x̃ = [x, 1]`` when the layer has a bias (fitted too) and source k's outputs
``y = x̃ Θ_k``, the loss is

    L(Θ) = Σ_k (1/n_k) ‖X̃_k Θ − X̃_k Θ_k‖² = Σ_k tr((Θ − Θ_k)ᵀ G_k (Θ − Θ_k)) / n_k,

so a full-batch step needs only the measured Grams ``G_k`` (:func:`gffmerge.measure`):
the gradient ``2 Σ_k G_k (Θ − Θ_k) / n_k`` is the gradient over all rows, exactly. The
layers do not share parameters, so optimising them jointly or one by one is the same for
Adam (per-parameter steps); L-BFGS is run on their sum. Here the start is the sources'
mean (where a fine-tuned pair shares its pre-trained model), and ``steps`` bounds the
optimisation: it ends before the closed form (:mod:`gffmerge.methods.regmean` with
``alpha=1`` and an intercept) when the steps are few, which acts as a pull toward the mean.
Every parameter outside the linear layers is the sources' mean.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from ..report import MergeReport, MergeResult
from ..solver import SpdSolution, assemble, conclude, diagnose, mean_state_dict, write_back
from ..solver.options import validate
from ..solver.state import layer_theta
from .registry import Needs, register


@dataclass(frozen=True)
class GnnMergeOptions:
    """Options of the gradient GNNMerge: optimiser, its steps and step size. The defaults
    (Adam, 100 steps, lr 1e-3) scored best on the combined validation frames of the rMD17
    ethanol / malonaldehyde GNS pair (benchmarks/results/merge_baselines_rmd17.md)."""

    optimizer: Literal["adam", "lbfgs"] = "adam"
    steps: int = 100
    lr: float = 1e-3
    schedule: Literal["cosine", "constant"] = "cosine"

    __option_help__ = {
        "optimizer": "adam (the authors' choice) or lbfgs (strong-Wolfe line search)",
        "steps": "optimiser steps (full-batch; L-BFGS: iterations)",
        "lr": "step size (Adam: per-parameter step scale; L-BFGS: initial step, 1 is usual)",
        "schedule": "Adam's step size: cosine decay to 0 over the steps (settles instead of "
                    "oscillating at the end), or constant (the authors' script)",
    }

    def __post_init__(self):
        validate(self)
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a number of optimiser steps >= 0, "
                             f"got {self.steps!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ValueError(f"lr must be a step size > 0, got {self.lr!r}")


def _loss(thetas: list[torch.Tensor], terms: list[list[tuple[torch.Tensor, torch.Tensor]]]
          ) -> torch.Tensor:
    """``Σ_layers Σ_k tr((Θ − Θ_k)ᵀ G̃_k (Θ − Θ_k))`` with ``G̃_k = G_k / n_k``."""
    total = thetas[0].new_zeros(())
    for theta, per_source in zip(thetas, terms):
        for g, th in per_source:
            delta = theta - th
            total = total + (delta * (g @ delta)).sum()
    return total


def optimise_layers(terms: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
                    start: dict[str, torch.Tensor], *, optimizer: str, steps: int,
                    lr: float, schedule: str = "constant"
                    ) -> tuple[dict[str, torch.Tensor], float, float]:
    """Minimise the summed loss from ``start``; ``terms[layer]`` lists ``(G̃_k, Θ_k)`` per
    source; ``schedule="cosine"`` decays Adam's step size to 0 over the steps. Returns the
    fitted ``Θ`` per layer and the loss before and after."""
    names = list(terms)
    thetas = [start[n].clone().requires_grad_(True) for n in names]
    per_layer = [terms[n] for n in names]
    with torch.no_grad():
        before = _loss(thetas, per_layer).item()
    if steps > 0:
        if optimizer == "adam":
            opt = torch.optim.Adam(thetas, lr=lr)
            for i in range(steps):
                if schedule == "cosine":
                    for group in opt.param_groups:
                        group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * i / steps))
                opt.zero_grad()
                _loss(thetas, per_layer).backward()
                opt.step()
        else:
            opt = torch.optim.LBFGS(thetas, lr=lr, max_iter=steps, history_size=20,
                                    tolerance_grad=0.0, tolerance_change=0.0,
                                    line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = _loss(thetas, per_layer)
                loss.backward()
                return loss
            opt.step(closure)
    with torch.no_grad():
        after = _loss(thetas, per_layer).item()
    return {n: t.detach() for n, t in zip(names, thetas)}, before, after


@register("gnnmerge", description="GNNMerge (gradient): every layer fitted to the sources' "
                                  "own inputs and outputs by Adam or L-BFGS from the mean",
          reference="https://arxiv.org/abs/2503.03384", options=GnnMergeOptions,
          needs=Needs(stats=True))
def gnnmerge(models, stats, options: GnnMergeOptions) -> MergeResult:
    t0 = time.perf_counter()
    systems = assemble(models, stats, weighting="per_model", intercept="auto")
    sources = [m.state_dict() for m in models]
    terms, start = {}, {}
    for name, system in systems.items():
        device, dim = system.a.device, system.dim
        thetas = [layer_theta(sd, name, device)[:dim] for sd in sources]
        terms[name] = [(ms.layers[name].gram[:dim, :dim] / ms.layers[name].rows, th)
                       for ms, th in zip(stats.models, thetas) if ms.layers[name].rows > 0]
        start[name] = torch.stack(thetas).mean(0)
    fitted, before, after = optimise_layers(terms, start, optimizer=options.optimizer,
                                            steps=options.steps, lr=options.lr,
                                            schedule=options.schedule)
    merged, written = write_back(models[0], mean_state_dict(models), fitted)
    report = diagnose(MergeReport("gnnmerge", asdict(options), len(models)), stats, models,
                      merged, systems, {n: SpdSolution(x) for n, x in fitted.items()},
                      written)
    report.options.update(loss_at_mean=before, loss_final=after)
    return conclude(merged, report, t0, stats)
