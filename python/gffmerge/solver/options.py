"""The choices that turn per-model sums into one regularised linear system per layer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, get_args, get_origin, get_type_hints

Weighting = Literal["pooled", "per_model"]
RidgeMode = Literal["absolute", "relative"]
Prior = Literal["zero", "mean"]
Intercept = Literal["auto", "always", "never"]
Target = Literal["weights", "cross"]


@dataclass(frozen=True)
class SolveOptions:
    """Options of :func:`gffmerge.solve`; see its docstring for the equations.

    - ``weighting``: ``"pooled"`` sums raw Grams (each model weighted by its row count, the
      GFFMerge recipe); ``"per_model"`` uses per-model mean Grams ``G_k / n_k`` (RegMean).
    - ``ridge`` / ``ridge_mode``: λ added to the diagonal; ``"relative"`` scales it by
      ``trace(A) / dim`` so it means the same at any data size.
    - ``prior``: ``"zero"`` shrinks toward 0; ``"mean"`` toward the sources' mean, so
      directions the data never spans keep the average.
    - ``alpha``: RegMean off-diagonal shrinkage of each ``G_k`` (1 = none).
    - ``intercept``: fit the bias jointly (``[x, 1]`` inputs) when the layer has one
      (``"auto"``), always (``"always"``: for bias-free layers the intercept is fitted and
      dropped, as the official scripts do), or never (biases are averaged).
    - ``target``: right-hand side from the source weights ``Σ G_k Θ_k`` (``"weights"``)
      or from measured cross sums ``Σ x̃ yᵀ`` (``"cross"``; needs ``measure(cross=True)``).
    - ``jitter``: on a failed Cholesky (ridge > 0), retry with growing diagonal jitter, then
      fall back to an eigen-decomposition solve; both are recorded and warned.
    - ``condition``: compute cond₂ of every regularised matrix for the report.
    - ``official_quirks``: also fit an intercept for bias-free layers and drop it, exactly
      as the authors' scripts do (overrides ``intercept`` with ``"always"``).

    These are also the options of ``method="gffmerge"``, with the same defaults.
    """

    weighting: Weighting = "pooled"
    ridge: float = 1e-6
    ridge_mode: RidgeMode = "absolute"
    prior: Prior = "zero"
    alpha: float = 1.0
    intercept: Intercept = "auto"
    target: Target = "weights"
    jitter: bool = True
    condition: bool = True
    official_quirks: bool = False

    __option_help__ = {
        "weighting": "pooled (row-count weighted, official) or per_model (mean Grams)",
        "ridge": "λ added to the diagonal (official 1e-6, absolute)",
        "ridge_mode": "absolute, or relative to trace(A)/dim",
        "prior": "zero (official) or mean: shrink toward the sources' mean",
        "alpha": "RegMean off-diagonal shrinkage of each Gram (1 = none)",
        "intercept": "auto (bias layers), always, never",
        "target": "weights (Σ G_k Θ_k) or cross (measured Σ x̃ yᵀ)",
        "jitter": "rescue failed Cholesky factorisations (recorded, warned)",
        "condition": "report cond₂ of every solved system",
        "official_quirks": "fit and drop an intercept on bias-free layers, as upstream",
    }

    @property
    def fit_intercept(self) -> Intercept:
        """The intercept mode actually used (``official_quirks`` forces ``"always"``)."""
        return "always" if self.official_quirks else self.intercept

    def __post_init__(self):
        validate(self)
        if self.target == "cross" and self.alpha != 1.0:
            raise ValueError("alpha shrinkage rescales the Grams and is only defined with "
                             "target='weights'; use alpha=1 with target='cross'")


def validate(options) -> None:
    """Check an options dataclass: ``Literal`` fields hold one of their choices, and the
    common numeric options (``ridge`` >= 0, ``alpha`` in [0, 1]) are in range, if present.
    Call it from ``__post_init__`` of a method's options."""
    hints = get_type_hints(type(options))
    values = asdict(options)
    for name, value in values.items():
        choices = get_args(hints[name]) if get_origin(hints[name]) is Literal else ()
        if choices and value not in choices:
            raise ValueError(f"{name}={value!r} is not valid; choose one of "
                             f"{', '.join(map(repr, choices))}")
    if "ridge" in values and not (values["ridge"] >= 0 and math.isfinite(values["ridge"])):
        raise ValueError(f"ridge must be finite and >= 0, got {values['ridge']}; the "
                         "official value is 1e-6 (or e.g. 1e-4 with ridge_mode='relative')")
    if "alpha" in values and not (0.0 <= values["alpha"] <= 1.0):
        raise ValueError(f"alpha must lie in [0, 1], got {values['alpha']}")
