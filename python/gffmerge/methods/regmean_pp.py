"""RegMean++: RegMean's solve, layer by layer, on inputs from the partly merged model.

RegMean (:mod:`gffmerge.methods.regmean`) fits every linear layer on inputs produced by
each *source*; the merged model feeds the layer with inputs from its own, already merged,
earlier layers. RegMean++ (Nguyen et al. 2025) takes the inputs ``X̂_k`` of source k's
frames from the merged model instead and keeps RegMean's objective and solve, per layer:

    W = (Σ_k G̃_k)⁻¹ Σ_k G̃_k W_k,   G̃_k = α X̂_kᵀX̂_k / n_k + (1 − α) diag(X̂_kᵀX̂_k / n_k),

each source's layer ``W_k`` applied to the merged inputs being the target. Biases, and
every parameter outside the linear layers, are the sources' mean. The layers are solved
stage by stage in forward order with the progressive machinery
(:mod:`gffmerge.collect.order`, :func:`~gffmerge.collect.progressive.stage_sums` with
``targets=False``: only the merged model runs, the sources never do, and
:func:`~gffmerge.solver.stage.solve_stage` with ``target="weights"``).

Cost: one pass of the merged model per stage and source, each stopping after the stage's
last layer. Differs from ``progressive`` (the package default) in the target (source
weights on merged inputs, not the source's own outputs), the per-model mean Grams, α
instead of a ridge, and averaged biases.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from ..architecture import check_same_architecture
from ..collect.order import layer_order, mergeable_layers
from ..collect.progressive import prepare_sources, stage_sums
from ..report import MergeReport, MergeResult
from ..solver import build_model, conclude, mean_state_dict
from ..solver.options import RidgeMode, validate
from ..solver.stage import solve_stage
from .registry import Needs, register


@dataclass(frozen=True)
class RegMeanPPOptions:
    """RegMean's options plus the frames per source the merged model is run on."""

    alpha: float = 0.9
    ridge: float = 0.0
    ridge_mode: RidgeMode = "absolute"
    frames: int | None = 200
    condition: bool = True
    backend: str = "auto"

    __option_help__ = {
        "alpha": "off-diagonal scaling of each mean Gram (1 = plain, 0 = diagonal)",
        "ridge": "λ added to the diagonal (RegMean uses none)",
        "ridge_mode": "absolute, or relative to trace(A)/dim",
        "frames": "frames per source the merged model is run on at every stage (null: all)",
        "condition": "report cond₂ of every solved system",
        "backend": "Gram accumulation: auto, ext (compiled) or torch",
    }

    def __post_init__(self):
        validate(self)
        if self.frames is not None and (not isinstance(self.frames, int) or self.frames < 1):
            raise ValueError(f"frames must be a positive number of frames or None, "
                             f"got {self.frames!r}")


@register("regmean_pp", description="RegMean++: RegMean's solve (mean Grams, α-shrunk, "
                                    "biases averaged) layer by layer on inputs of the "
                                    "partly merged model",
          reference="https://arxiv.org/abs/2508.03121", options=RegMeanPPOptions,
          needs=Needs(stats=False, data=True))
def regmean_pp(models, stats, options: RegMeanPPOptions, *, data, val_data=None,
               progress: bool = True) -> MergeResult:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    models = list(models)
    check_same_architecture(models)
    infos = mergeable_layers(models[0])
    sources = prepare_sources(models, data, frames=options.frames, names=list(infos),
                              tangents=False, outputs=False,
                              device=next(models[0].parameters()).device)
    merged = build_model(models[0], mean_state_dict(models))
    merged.eval()
    order = layer_order(merged, sources[0].batches[0])
    report = MergeReport("regmean_pp", asdict(options), len(models))
    for stage in tqdm(order.stages, desc="regmean_pp", unit="stage", leave=False,
                      disable=not progress):
        per_source = stage_sums(merged, sources, list(stage), infos, calls=order.calls,
                                backend=options.backend, targets=False)
        layers, warns = solve_stage(merged, models, stage, infos, per_source,
                                    ridge=options.ridge, beta=0.0, weighting="per_model",
                                    ridge_mode=options.ridge_mode, prior="zero",
                                    condition=options.condition, alpha=options.alpha,
                                    target="weights", intercept=False)
        report.layers += layers
        report.warnings += warns
    report.note_unsolved(infos, order.unreached)
    solved = {f"{lr.name}.weight" for lr in report.layers if lr.solved}
    report.averaged = [k for k in merged.state_dict() if k not in solved]
    report.options.update(stages=[list(s) for s in order.stages],
                          frames_used=[s.frames for s in sources])
    return conclude(merged, report, t0)
