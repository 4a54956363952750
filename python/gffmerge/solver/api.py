"""Closed-form merge of K source models from their per-layer statistics."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import Tensor, nn

from ..architecture import check_same_architecture
from ..errors import SingularGramError, StatsMismatchError
from ..report import LayerReport, MergeReport, MergeResult
from ..stats import Stats
from .assemble import build_model, mean_state_dict
from .cholesky import condition_numbers, solve_spd
from .options import SolveOptions

# cond₂ above which an unregularised system is treated as singular.
SINGULAR_COND = 1e15
# ‖Θ − Θ̄‖/‖Θ̄‖ above which the report suggests shrinking toward the mean.
DRIFT_WARNING = 5.0


def _as_stats(stats: Stats | Sequence[Stats]) -> Stats:
    return stats if isinstance(stats, Stats) else Stats.concat(stats)


def _param_keys(layer: str) -> tuple[str, str]:
    prefix = f"{layer}." if layer else ""
    return f"{prefix}weight", f"{prefix}bias"


def _shrink(g: Tensor, alpha: float) -> Tensor:
    if alpha == 1.0:
        return g
    return alpha * g + (1.0 - alpha) * torch.diag(g.diagonal())


def solve(models: Sequence[nn.Module], stats: Stats | Sequence[Stats], *,
          method: str = "solve", **options) -> MergeResult:
    """Merge ``models`` layer by layer from ``stats`` measured on them (same order).

    For every measured linear layer, with ``Θ_k = [W_kᵀ; b_kᵀ]`` and ``G_k`` the
    (augmented when fitting an intercept) Gram of model k, solve by Cholesky

        (Σ_k c_k G̃_k + λI) Θ = Σ_k c_k G̃_k Θ_k  [+ λ Θ̄ with prior="mean"]

    where ``c_k`` is 1 (pooled) or ``1/n_k`` (per_model) and ``G̃_k`` is ``G_k`` with its
    off-diagonal scaled by ``alpha``. Every other state-dict entry is the mean of the
    sources. Keyword options are those of :class:`~gffmerge.solver.SolveOptions`.
    Returns the merged model (a copy of ``models[0]``) and a :class:`MergeReport`.
    """
    opts = options.pop("options", None) or SolveOptions(**options)
    return solve_with(models, _as_stats(stats), opts, method=method)


def solve_with(models: Sequence[nn.Module], stats: Stats, opts: SolveOptions, *,
               method: str) -> MergeResult:
    """:func:`solve` with validated options (used by the method registry)."""
    t0 = time.perf_counter()
    check_same_architecture(models)
    stats.check_models(models)
    if opts.target == "cross" and not stats.has_cross:
        raise StatsMismatchError("target='cross' needs cross sums; measure with "
                                 "`measure(..., cross=True)` (CLI: `--cross`)")
    state = mean_state_dict(models)
    sources = [m.state_dict() for m in models]
    device = next(iter(stats.models[0].layers.values())).gram.device
    report = MergeReport(method=method, options=asdict(opts), num_models=len(models))

    systems: dict[str, tuple[Tensor, Tensor]] = {}
    meta: dict[str, dict] = {}
    written: set[str] = set()
    for name, info in stats.layers.items():
        rows = stats.rows(name)
        lr = LayerReport(name, info.in_features, info.out_features, rows)
        report.layers.append(lr)
        if sum(rows) == 0:
            lr.solved = False
            continue
        wkey, bkey = _param_keys(name)
        aug = opts.intercept == "always" or (opts.intercept == "auto" and info.has_bias)
        lr.intercept = aug
        d_in, dim = info.in_features, info.in_features + int(aug)
        thetas, full_thetas, grams = [], [], []
        a = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        b = torch.zeros(dim, info.out_features, dtype=torch.float64, device=device)
        for sd, ms in zip(sources, stats.models):
            w = sd[wkey].detach().to(device, torch.float64)
            bias = (sd[bkey].detach().to(device, torch.float64) if info.has_bias
                    else torch.zeros(info.out_features, dtype=torch.float64, device=device))
            full = torch.cat([w.T, bias[None]])
            full_thetas.append(full)
            theta = full if aug else w.T
            thetas.append(theta)
            ls = ms.layers[name]
            grams.append(ls.gram)
            n = ls.rows
            if n == 0:
                continue
            c = 1.0 if opts.weighting == "pooled" else 1.0 / n
            g = _shrink(ls.gram[:dim, :dim], opts.alpha)
            a += c * g
            if opts.target == "weights":
                b += c * (g @ theta)
            else:
                cr = ls.cross[:dim]
                if info.has_bias and not aug:
                    cr = cr - torch.outer(ls.gram[:d_in, d_in], bias)
                b += c * cr
        lam = opts.ridge * (a.trace().item() / dim if opts.ridge_mode == "relative" else 1.0)
        lr.ridge = lam
        mean_theta = torch.stack(thetas).mean(0)
        rhs = b + lam * mean_theta if opts.prior == "mean" else b
        systems[name] = (a + lam * torch.eye(dim, dtype=torch.float64, device=device), rhs)
        meta[name] = dict(aug=aug, full=full_thetas, grams=grams, lr=lr)

    unregularised = [n for n in systems if meta[n]["lr"].ridge == 0.0]
    want_cond = list(systems) if opts.condition else unregularised
    conds = condition_numbers({n: systems[n][0] for n in want_cond}) if want_cond else {}
    singular = [n for n in unregularised if conds[n] > SINGULAR_COND]
    if singular:
        raise SingularGramError(
            f"the Gram of layer(s) {', '.join(singular[:5])} is singular "
            f"(cond₂ = {conds[singular[0]]:.2e}) and ridge is 0: some input directions carry "
            "no data. Use a ridge > 0 (e.g. ridge=1e-6, or ridge_mode='relative' with "
            "ridge=1e-4) and/or prior='mean'")
    solutions = solve_spd(systems, rescue=opts.jitter and not unregularised)

    for name, sol in solutions.items():
        info, m = stats.layers[name], meta[name]
        lr = m["lr"]
        lr.cond = conds.get(name, float("nan"))
        lr.jitter, lr.fallback = sol.jitter, sol.fallback
        theta = sol.x
        w = theta[:info.in_features].T
        wkey, bkey = _param_keys(name)
        state[wkey] = w.to(state[wkey].dtype).to(state[wkey].device)
        written.add(wkey)
        if info.has_bias and m["aug"]:
            state[bkey] = theta[info.in_features].to(state[bkey].dtype).to(state[bkey].device)
            written.add(bkey)
        # diagnostics on the layer exactly as written (weights + bias), in output space
        final = torch.cat([state[wkey].to(device, torch.float64).T,
                           (state[bkey].to(device, torch.float64) if info.has_bias else
                            torch.zeros(info.out_features, dtype=torch.float64,
                                        device=device))[None]])
        mean_full = torch.stack(m["full"]).mean(0)
        lr.rel_distance = ((final - mean_full).norm() / mean_full.norm().clamp_min(1e-300)).item()
        num = den = 0.0
        for g, th in zip(m["grams"], m["full"]):
            delta = final - th
            num += torch.einsum("io,ij,jo->", delta, g, delta).item()
            den += torch.einsum("io,ij,jo->", th, g, th).item()
        lr.rel_residual = num / den if den > 0 else float("nan")
        if sol.jitter or sol.fallback:
            report.warnings.append(
                f"layer '{name}': Cholesky failed; " + (
                    f"solved with diagonal jitter {sol.jitter:.2e}" if not sol.fallback else
                    "solved by eigen-decomposition pseudo-inverse") +
                "; consider a larger ridge or ridge_mode='relative'")
        if lr.rel_distance > DRIFT_WARNING:
            report.warnings.append(
                f"layer '{name}' moved {lr.rel_distance:.1f}× its norm away from the sources' "
                "mean; if the merged model degrades, try prior='mean' with "
                "ridge_mode='relative'")

    unreached = report.unreached
    if unreached:
        report.warnings.append(
            f"{len(unreached)} layer(s) saw no data and keep the sources' mean: "
            f"{', '.join(unreached[:10])}{' ...' if len(unreached) > 10 else ''}")
    report.averaged = [k for k in state if k not in written]
    for w in report.warnings:
        warnings.warn(w, stacklevel=3)
    merged = build_model(models[0], state)
    report.times["solve"] = time.perf_counter() - t0
    report.times["measure"] = sum(m.seconds for m in stats.models)
    return MergeResult(merged, report)
