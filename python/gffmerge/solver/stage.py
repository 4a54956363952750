"""Solve the layers of one stage from their value and tangent sums (progressive merges).

The sums (:class:`~gffmerge.collect.progressive.LayerSums`) hold, per source, the Gram of
the layer's inputs ``Σ x̃x̃ᵀ``, the cross sums with the target outputs ``Σ x̃yᵀ`` and, with
tangent rows, ``Σ ẋẋᵀ`` and ``Σ ẋẏᵀ``. Per layer, pooled over the sources,

    G = A + w Aₜ,   C = B + w Bₜ,   w = β tr(A)/tr(Aₜ),   (G + λI) Θ = C + λ Θ̄,

solved for all layers of the stage in one batched Cholesky, and written into the merged
model in place. Affine LayerNorms get their per-feature scale and shift from the diagonals.

RegMean's solve on these inputs (RegMean++, ``target="weights"``) replaces the recorded cross
sums by ``G̃_k Θ_k``, each source's own layer applied to the merged model's inputs, with
``G̃_k = α G_k + (1 − α) diag(G_k)`` (off-diagonal shrinkage ``alpha``), and may leave the
bias out of the fit (``intercept=False``: the merged model keeps the sources' mean bias).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..collect.order import is_affine_norm
from ..collect.progressive import LayerSums
from ..report import LayerReport
from .assemble import shrink
from .cholesky import condition_numbers, solve_spd


def module_theta(model: nn.Module, name: str, aug: bool) -> Tensor:
    """``[Wᵀ; bᵀ]`` (``[Wᵀ]`` without intercept) of one layer in float64; ``[γ; β]`` rows
    of an affine LayerNorm."""
    m = dict(model.named_modules())[name]
    if is_affine_norm(m):
        rows = [m.weight.detach().to(torch.float64)]
        if aug:
            rows.append(m.bias.detach().to(torch.float64))
        return torch.stack(rows)
    w = m.weight.detach().to(torch.float64).T
    if not aug:
        return w
    return torch.cat([w, m.bias.detach().to(torch.float64)[None]])


def normal_equations(sums: Sequence[LayerSums], aug: bool, d: int, beta: float,
                     weighting: str, *, alpha: float = 1.0,
                     thetas: Sequence[Tensor] | None = None
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """Value (A, B) and tangent-augmented (G, C) sums of one layer, and the tangent weight.

    ``alpha`` < 1 shrinks the off-diagonal of each source's Gram (RegMean). With ``thetas``
    (one ``[dim, out]`` Θ_k per source), ``B = Σ_k c_k G̃_k Θ_k`` (each source's layer on
    these inputs) instead of the recorded cross sums.
    """
    dim = d + int(aug)
    weights = [1.0 if weighting == "pooled" else 1.0 / max(s.rows, 1) for s in sums]
    grams = [shrink(s.gram[:dim, :dim], alpha) for s in sums]
    A = sum(c * g for c, g in zip(weights, grams))
    if thetas is None:
        B = sum(c * s.cross[:dim] for c, s in zip(weights, sums))
    else:
        B = sum(c * (g @ th.to(g.device)) for c, g, th in zip(weights, grams, thetas))
    G, C, w = A.clone(), B.clone(), 0.0
    if beta > 0 and sums[0].tgram is not None:
        At = sum((1.0 if weighting == "pooled" else 1.0 / max(s.trows, 1)) * s.tgram
                 for s in sums)
        Bt = sum((1.0 if weighting == "pooled" else 1.0 / max(s.trows, 1)) * s.tcross
                 for s in sums)
        tt = At.trace().item()
        if tt > 0:
            w = beta * A[:d, :d].trace().item() / tt
            G[:d, :d] += w * At
            C[:d] += w * Bt
    return A, B, G, C, w


def _solve_norm(merged: nn.Module, models: Sequence[nn.Module], name: str, info,
                sums: Sequence[LayerSums], *, ridge: float, beta: float,
                weighting: str, ridge_mode: str, prior: str,
                lr: LayerReport, start: nn.Module | None = None) -> None:
    """Per-feature ``γ_j, β_j`` of an affine LayerNorm: the 2×2 (1×1 without shift)
    normal equations from the diagonals of the stage sums, same ridge and prior."""
    d, aug = info.in_features, info.has_bias
    A, B, G, C, w = normal_equations(sums, True, d, beta, weighting)
    j = torch.arange(d)
    a, c = G[j, j], G[d, d].expand(d)  # Σ n_j² (+ w Σ ṅ_j²), row count
    b, r1, r2 = G[j, d], C[j, j], C[d, j]  # Σ n_j, Σ n_j y_j (+ tangents), Σ y_j
    mean = _prior_theta(models, start, name, aug)
    scale = (a + c) / 2 if aug else a
    lam = ridge * (scale if ridge_mode == "relative" else torch.ones_like(a))
    lr.ridge = lam.mean().item()
    p_g = lam * mean[0] if prior == "mean" else torch.zeros_like(a)
    if aug:
        p_b = lam * mean[1] if prior == "mean" else torch.zeros_like(a)
        m11, m22, rhs1, rhs2 = a + lam, c + lam, r1 + p_g, r2 + p_b
        det = (m11 * m22 - b * b).clamp_min(1e-300)
        gamma = (m22 * rhs1 - b * rhs2) / det
        shift = (m11 * rhs2 - b * rhs1) / det
        theta = torch.stack([gamma, shift])
    else:
        gamma = (r1 + p_g) / (a + lam).clamp_min(1e-300)
        theta = gamma[None]
    module = dict(merged.named_modules())[name]
    with torch.no_grad():
        module.weight.copy_(theta[0].to(module.weight.dtype))
        if aug:
            module.bias.copy_(theta[1].to(module.bias.dtype))
    lr.intercept = aug
    lr.rel_distance = ((theta - mean).norm() / mean.norm().clamp_min(1e-300)).item()


def _prior_theta(models: Sequence[nn.Module], start: nn.Module | None, name: str,
                 aug: bool) -> Tensor:
    """Θ̄ of the ``"mean"`` prior: the sources' mean, or the layer of ``start``."""
    if start is not None:
        return module_theta(start, name, aug)
    return torch.stack([module_theta(m, name, aug) for m in models]).mean(0)


def solve_stage(merged: nn.Module, models: Sequence[nn.Module], names: Sequence[str],
                infos: dict, per_source: Sequence[dict[str, LayerSums]], *, ridge: float,
                beta: float, weighting: str = "pooled",
                ridge_mode: str = "relative", prior: str = "mean", condition: bool = True,
                alpha: float = 1.0, target: str = "outputs", intercept: bool = True,
                start: nn.Module | None = None) -> tuple[list[LayerReport], list[str]]:
    """Solve the named layers from their stage sums and write them into ``merged``.

    ``prior="mean"`` shrinks each layer toward the sources' mean, or toward the same layer
    of ``start`` when given (a model the merge starts from, e.g. a TIES merge of the
    sources); ``rel_distance`` is measured from that prior.

    ``target="outputs"`` fits the recorded source outputs; ``"weights"`` fits each source's
    layer applied to the recorded inputs (RegMean++), with off-diagonal shrinkage ``alpha``.
    ``intercept=False`` fits weights only and leaves the biases as they are in ``merged``
    (needs ``target="weights"``: recorded outputs include each source's bias).
    """
    if target not in ("outputs", "weights"):
        raise ValueError(f"target={target!r} is not valid; choose 'outputs' or 'weights'")
    if not intercept and target == "outputs":
        raise ValueError("intercept=False needs target='weights': the recorded outputs "
                         "include each source's bias")
    if alpha != 1.0 and target == "outputs":
        raise ValueError("alpha shrinkage rescales the Grams and is only defined with "
                         "target='weights'; use alpha=1 with target='outputs'")
    systems, meta, reports, warns = {}, {}, [], []
    modules = dict(merged.named_modules())
    for name in names:
        info = infos[name]
        sums = [ps[name] for ps in per_source]
        rows = [s.rows for s in sums]
        lr = LayerReport(name, info.in_features, info.out_features, rows)
        reports.append(lr)
        if sum(rows) == 0:
            lr.solved = False
            continue
        if is_affine_norm(modules[name]):
            _solve_norm(merged, models, name, info, sums, ridge=ridge, beta=beta,
                        weighting=weighting, ridge_mode=ridge_mode, prior=prior, lr=lr,
                        start=start)
            continue
        aug, d = info.has_bias and intercept, info.in_features
        dim = d + int(aug)
        lr.intercept = aug
        thetas = [module_theta(m, name, aug) for m in models]
        A, B, G, C, w = normal_equations(sums, aug, d, beta, weighting, alpha=alpha,
                                         thetas=thetas if target == "weights" else None)
        lam = ridge * (G.trace().item() / dim if ridge_mode == "relative" else 1.0)
        lr.ridge = lam
        mean = (torch.stack(thetas).mean(0) if start is None else
                module_theta(start, name, aug)).to(G.device)
        rhs = C + lam * mean if prior == "mean" else C
        systems[name] = (G + lam * torch.eye(dim, dtype=torch.float64, device=G.device), rhs)
        if target == "weights":  # Σ_k c_k ‖X̃_k Θ_k‖² with the same (shrunk) Grams
            ysq = sum((1.0 if weighting == "pooled" else 1.0 / max(s.rows, 1))
                      * torch.einsum("io,ij,jo->", th.to(G.device),
                                     shrink(s.gram[:dim, :dim], alpha), th.to(G.device)).item()
                      for s, th in zip(sums, thetas))
        else:
            ysq = sum(s.ysq for s in sums) if weighting == "pooled" else sum(
                s.ysq / max(s.rows, 1) for s in sums)
        meta[name] = (A, B, ysq, mean, aug)
    if not systems:
        return reports, warns
    conds = condition_numbers({n: m for n, (m, _) in systems.items()}) if condition else {}
    solutions = solve_spd(systems, rescue=True)
    by_name = {lr.name: lr for lr in reports}
    for name, sol in solutions.items():
        A, B, ysq, mean, aug = meta[name]
        lr, info, theta = by_name[name], infos[name], sol.x
        lr.cond = conds.get(name, math.nan)
        lr.jitter, lr.fallback = sol.jitter, sol.fallback
        m = modules[name]
        with torch.no_grad():
            m.weight.copy_(theta[:info.in_features].T.to(m.weight.dtype))
            if aug:
                m.bias.copy_(theta[info.in_features].to(m.bias.dtype))
        lr.rel_distance = ((theta - mean).norm() / mean.norm().clamp_min(1e-300)).item()
        resid = (torch.einsum("io,ij,jo->", theta, A, theta) - 2 * (theta * B).sum()).item()
        lr.rel_residual = (resid + ysq) / ysq if ysq > 0 else math.nan
        if sol.jitter or sol.fallback:
            warns.append(f"layer '{name}': Cholesky failed; solved with "
                         + (f"diagonal jitter {sol.jitter:.2e}" if not sol.fallback else
                            "an eigen-decomposition pseudo-inverse")
                         + "; consider a larger ridge")
    return reports, warns
