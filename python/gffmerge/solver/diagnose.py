"""What a solve did, layer by layer: cond₂, rescue steps, drift, fit residual, warnings."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import DegenerateSolutionError
from ..report import LayerReport, MergeReport, MergeResult
from ..stats import Stats
from .assemble import LayerSystem
from .cholesky import SpdSolution, check_systems_finite  # noqa: F401  (re-exported)
from .state import layer_theta

# ‖Θ − Θ̄‖/‖Θ̄‖ above which the report suggests shrinking toward the mean.
DRIFT_WARNING = 5.0
# ‖Θ‖/‖Θ̄‖ below which a regularised layer counts as flattened by its ridge: an error below
# FLATTENED_ERROR (nothing is written), a warning below FLATTENED_WARNING.
FLATTENED_ERROR = 1e-6
FLATTENED_WARNING = 1e-2


def check_solutions(systems: Mapping[str, LayerSystem], solutions: Mapping[str, SpdSolution],
                    models: Sequence[nn.Module]) -> list[str]:
    """Refuse solutions that must not be written: NaN/Inf weights, or a layer whose ridge
    shrank it below ``FLATTENED_ERROR`` of the sources' mean norm. Returns warnings for
    layers shrunk below ``FLATTENED_WARNING``."""
    bad = [name for name, sol in solutions.items() if not bool(torch.isfinite(sol.x).all())]
    if bad:
        raise DegenerateSolutionError(
            f"the solve gave NaN/Inf weights for layer(s) {', '.join(bad[:5])}; nothing was "
            "written. Check the statistics for NaN/Inf (re-measure), keep condition=true and "
            "use a ridge > 0 (e.g. ridge=1e-4 with ridge_mode='relative')")
    sources = [m.state_dict() for m in models]
    flattened, shrunk = [], []
    for name, sol in solutions.items():
        system = systems[name]
        if system.ridge <= 0 or system.prior is not None:
            continue
        mean = torch.stack([layer_theta(sd, name, sol.x.device)[:sol.x.shape[0]]
                            for sd in sources]).mean(0)
        ref = mean.norm().item()
        if ref == 0 or not math.isfinite(ref):
            continue
        ratio = sol.x.norm().item() / ref
        if ratio < FLATTENED_ERROR:
            flattened.append((name, ratio, system.ridge))
        elif ratio < FLATTENED_WARNING:
            shrunk.append((name, ratio, system.ridge))
    if flattened:
        _, ratio, ridge = flattened[0]
        names = ", ".join(n for n, _, _ in flattened[:5])
        raise DegenerateSolutionError(
            f"the ridge (λ = {ridge:.3g}) flattens layer(s) {names} "
            f"to ~0 ({ratio:.1e} of the sources' norm); nothing was written. Use a smaller "
            "ridge, ridge_mode='relative' (e.g. ridge=1e-4), or prior='mean'")
    return [f"layer '{name}': the ridge (λ = {ridge:.3g}) shrinks it to {ratio:.1e} of the "
            "sources' norm; use a smaller ridge, ridge_mode='relative' or prior='mean'"
            for name, ratio, ridge in shrunk]


def drift_and_residual(theta: Tensor, sources: Sequence[Tensor],
                       grams: Sequence[Tensor]) -> tuple[float, float]:
    """Relative drift ``‖Θ − Θ̄‖ / ‖Θ̄‖`` from the sources' mean, and relative fit residual
    ``Σ_k tr(ΔₖᵀGₖΔₖ) / Σ_k tr(ΘₖᵀGₖΘₖ)`` (``Δₖ = Θ − Θₖ``): the squared error of the merged
    layer on each source's inputs, relative to the sources' own outputs. All ``Θ`` are
    ``[in+1, out]`` (:func:`~gffmerge.solver.state.layer_theta`), ``Gₖ`` the augmented
    Grams, float64 on one device."""
    mean = torch.stack(list(sources)).mean(0)
    drift = ((theta - mean).norm() / mean.norm().clamp_min(1e-300)).item()
    num = den = 0.0
    # one product per distinct Gram (sources measured on the same rows share one): G [Θ, Θₖ…]
    done = [False] * len(grams)
    for k, g in enumerate(grams):
        if done[k]:
            continue
        group = [j for j in range(k, len(grams)) if not done[j] and (
            grams[j] is g or torch.equal(grams[j], g))]
        cols = torch.cat([theta] + [sources[j] for j in group], dim=1)
        prod = g @ cols
        out = theta.shape[1]
        g_theta = prod[:, :out]
        for i, j in enumerate(group):
            done[j] = True
            g_src = prod[:, (i + 1) * out:(i + 2) * out]
            num += ((g_theta - g_src) * (theta - sources[j])).sum().item()
            den += (g_src * sources[j]).sum().item()
    return drift, (num / den if den > 0 else math.nan)


def layer_warnings(lr: LayerReport) -> list[str]:
    """The warnings one solved layer's diagnostics call for, each naming a remedy."""
    out = []
    if lr.jitter or lr.fallback:
        how = (f"solved with diagonal jitter {lr.jitter:.2e}" if not lr.fallback else
               "solved by eigen-decomposition pseudo-inverse")
        out.append(f"layer '{lr.name}': Cholesky failed; {how}; consider a larger ridge or "
                   "ridge_mode='relative'")
    if lr.rel_distance > DRIFT_WARNING:
        out.append(f"layer '{lr.name}' moved {lr.rel_distance:.1f}× its norm away from the "
                   "sources' mean; if the merged model degrades, try prior='mean' with "
                   "ridge_mode='relative'")
    return out


def diagnose(report: MergeReport, stats: Stats, models: Sequence[nn.Module],
             merged: nn.Module, systems: Mapping[str, LayerSystem],
             solutions: Mapping[str, SpdSolution], written: set[str]) -> MergeReport:
    """Fill ``report`` for a merge of ``models`` solved from ``stats``: one
    :class:`LayerReport` per measured layer (unsolved when no data reached it), diagnostics
    measured on ``merged`` as written, warnings, and the state-dict keys not ``written``
    (kept at the sources' mean). Returns ``report``."""
    report.warnings += check_solutions(systems, solutions, models)
    state = merged.state_dict()
    sources = [m.state_dict() for m in models]
    for name, info in stats.layers.items():
        lr = LayerReport(name, info.in_features, info.out_features, stats.rows(name))
        report.layers.append(lr)
        if name not in solutions:
            lr.solved = False
            continue
        sol, grams = solutions[name], [ms.layers[name].gram for ms in stats.models]
        lr.intercept, lr.ridge = systems[name].intercept, systems[name].ridge
        lr.cond, lr.jitter, lr.fallback = sol.cond, sol.jitter, sol.fallback
        lr.rel_distance, lr.rel_residual = drift_and_residual(
            layer_theta(state, name, grams[0].device),
            [layer_theta(sd, name, grams[0].device) for sd in sources], grams)
        report.warnings += layer_warnings(lr)
    unreached = report.unreached
    if unreached:
        report.warnings.append(
            f"{len(unreached)} layer(s) saw no data and keep the sources' mean: "
            f"{', '.join(unreached[:10])}{' ...' if len(unreached) > 10 else ''}")
    report.averaged = [k for k in state if k not in written]
    return report


def conclude(merged: nn.Module, report: MergeReport, t0: float,
             stats: Stats | None = None) -> MergeResult:
    """Emit the report's warnings, record the solve time since ``t0`` (``perf_counter``)
    and the measuring time of ``stats``, and pair the model with its report."""
    for w in report.warnings:
        warnings.warn(w, stacklevel=4)
    report.times["solve"] = time.perf_counter() - t0
    if stats is not None:
        report.times["measure"] = sum(m.seconds for m in stats.models)
    return MergeResult(merged, report)
