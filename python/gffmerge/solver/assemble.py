"""Per-layer linear systems ``(A + λI) Θ = B + λ Θ₀`` from statistics and a weighting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..architecture import check_same_architecture
from ..errors import StatsMismatchError
from ..stats import Stats
from .options import Intercept, Prior, RidgeMode, Target, Weighting
from .state import build_model, layer_theta, mean_state_dict  # noqa: F401  (older import path)


@dataclass
class LayerSystem:
    """One layer's regularised normal equations ``(A + λI) Θ = B + λ Θ₀``.

    ``Θ`` is ``Wᵀ`` (``[in, out]``), or ``[Wᵀ; bᵀ]`` (``[in+1, out]``) when ``intercept``
    (the bias is fitted jointly from ``[x, 1]`` inputs). ``a`` is ``[dim, dim]``, ``b`` and
    ``prior`` (Θ₀, what directions without data shrink toward; ``None``: zero) are
    ``[dim, out]``, all float64 on one device; ``ridge`` is the absolute λ. Build one from
    your own sums (``LayerSystem(a, b, ridge=λ, prior=Θ̄)``) or from measured statistics
    with :func:`assemble`; solve with :func:`~gffmerge.solver.solve_systems`.

    ``known``: the solution when it is known without a solve (:func:`assemble` sets it to
    the sources' mean when every model has the same weighted Gram and ``prior="mean"``:
    then ``(A + λI) Θ̄ = B + λ Θ̄`` exactly, e.g. a GNN's first layer measured on the same
    graph and features for every source).
    """

    a: Tensor
    b: Tensor
    ridge: float = 0.0
    prior: Tensor | None = None
    intercept: bool = False
    known: Tensor | None = None

    def __post_init__(self):
        n = self.a.shape[0]
        if self.a.dim() != 2 or self.a.shape[1] != n:
            raise ValueError(f"A must be square [dim, dim], got {tuple(self.a.shape)}")
        if self.b.dim() != 2 or self.b.shape[0] != n:
            raise ValueError(f"B must be [dim={n}, out], got {tuple(self.b.shape)}")
        if self.prior is not None and self.prior.shape != self.b.shape:
            raise ValueError(f"the prior Θ₀ must have B's shape {tuple(self.b.shape)}, got "
                             f"{tuple(self.prior.shape)}")
        if not (self.ridge >= 0 and math.isfinite(self.ridge)):
            raise ValueError(f"ridge must be finite and >= 0, got {self.ridge}")

    @property
    def dim(self) -> int:
        return self.a.shape[0]

    @property
    def in_features(self) -> int:
        return self.dim - int(self.intercept)

    def matrix(self) -> Tensor:
        """``A + λI``."""
        return self.a + self.ridge * torch.eye(self.dim, dtype=self.a.dtype, device=self.a.device)

    def rhs(self) -> Tensor:
        """``B + λ Θ₀``."""
        return self.b if self.prior is None else self.b + self.ridge * self.prior


def ridge_value(a: Tensor, ridge: float, mode: RidgeMode = "absolute") -> float:
    """The absolute λ: ``ridge``, or ``ridge · trace(A) / dim`` when ``mode="relative"`` (so
    it means the same at any data size)."""
    return ridge * (a.trace().item() / a.shape[0] if mode == "relative" else 1.0)


def shrink(g: Tensor, alpha: float) -> Tensor:
    """RegMean's ``α G + (1 − α) diag(G)``."""
    if alpha == 1.0:
        return g
    return alpha * g + (1.0 - alpha) * torch.diag(g.diagonal())


def assemble(models: Sequence[nn.Module], stats: Stats, *, weighting: Weighting = "pooled",
             coefficients: Sequence[float] | None = None, alpha: float = 1.0,
             intercept: Intercept = "auto", target: Target = "weights", ridge: float = 0.0,
             ridge_mode: RidgeMode = "absolute", prior: Prior = "zero") -> dict[str, LayerSystem]:
    """One :class:`LayerSystem` per measured layer that saw data (in ``stats`` order):

        A = Σ_k c_k G̃_k,   B = Σ_k c_k G̃_k Θ_k (``target="weights"``) or Σ_k c_k Σ x̃ yᵀ
        (``"cross"``),   Θ₀ = mean_k Θ_k (``prior="mean"``)

    with ``c_k`` 1 (``"pooled"``) or ``1/n_k`` (``"per_model"``), times ``coefficients[k]``
    when given, and ``G̃_k`` the Gram of model k (augmented when the layer fits an
    intercept) with its off-diagonal scaled by ``alpha``. Checks that ``stats`` were
    measured on ``models`` (same order) and hold cross sums when ``target="cross"``.
    """
    check_same_architecture(models)
    stats.check_models(models)
    if target == "cross" and not stats.has_cross:
        raise StatsMismatchError("target='cross' needs cross sums; measure with "
                                 "`measure(..., cross=True)` (CLI: `--cross`)")
    if coefficients is not None and len(coefficients) != len(models):
        raise ValueError(f"{len(coefficients)} coefficients for {len(models)} models")
    sources = [m.state_dict() for m in models]
    device = next(iter(stats.models[0].layers.values())).gram.device
    systems: dict[str, LayerSystem] = {}
    for name, info in stats.layers.items():
        if sum(stats.rows(name)) == 0:
            continue
        aug = intercept == "always" or (intercept == "auto" and info.has_bias)
        d_in, dim = info.in_features, info.in_features + int(aug)
        a = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        b = torch.zeros(dim, info.out_features, dtype=torch.float64, device=device)
        thetas = [layer_theta(sd, name, device)[:dim] for sd in sources]
        terms: list = []  # [c, G̃, Σ c_k Θ_k] per distinct Gram (target "weights")
        coefs = []
        for k, (theta, ms) in enumerate(zip(thetas, stats.models)):
            ls = ms.layers[name]
            if ls.rows == 0:
                continue
            c = 1.0 if weighting == "pooled" else 1.0 / ls.rows
            c = c if coefficients is None else c * coefficients[k]
            g = shrink(ls.gram[:dim, :dim], alpha)
            a += c * g
            coefs.append(c)
            if target == "weights":
                # models measured on the same rows share one product: G (Σ c_k Θ_k)
                same = next((t for t in terms if torch.equal(t[1], g)), None)
                if same is None:
                    terms.append([c, g, c * theta])
                else:
                    same[2] += c * theta
                continue
            cr = ls.cross[:dim]
            if info.has_bias and not aug:  # the measured outputs include the bias
                cr = cr - torch.outer(ls.gram[:d_in, d_in], layer_theta(sources[k], name,
                                                                        device)[d_in])
            b += c * cr
        for _, g, weighted in terms:
            b += g @ weighted
        mean = torch.stack(thetas).mean(0) if prior == "mean" else None
        lam = ridge_value(a, ridge, ridge_mode)
        # one Gram for every model, equal weights: (A + λI) Θ̄ = B + λ Θ̄ exactly
        same = (mean is not None and target == "weights" and lam > 0 and len(terms) == 1
                and len(set(coefs)) == 1 and len(coefs) == len(thetas))
        systems[name] = LayerSystem(a, b, lam, mean, aug, known=mean if same else None)
    return systems
