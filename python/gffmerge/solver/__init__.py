"""Turning statistics into merged weights, in primitives a merge method composes.

1. :func:`assemble` the per-layer systems (:class:`LayerSystem`, ``(A + λI) Θ = B + λ Θ₀``)
   from statistics and a weighting, or build them from your own sums;
2. :func:`solve_systems` them (batched Cholesky, jitter, recorded fallback; :func:`solve_spd`
   for bare ``(M, R)`` pairs);
3. :func:`write_back` the solutions into a copy of a template model (on top of
   :func:`mean_state_dict`);
4. :func:`diagnose` (cond₂, drift, residual, warnings) and :func:`conclude`.

:func:`solve` / :func:`solve_with` compose them into the GFFMerge recipe.
"""

from .api import solve, solve_with
from .assemble import LayerSystem, assemble, ridge_value, shrink
from .cholesky import SpdSolution, condition_numbers, solve_spd, solve_systems
from .diagnose import conclude, diagnose, drift_and_residual, layer_warnings
from .options import SolveOptions
from .state import build_model, layer_theta, mean_state_dict, param_keys, write_back, write_layer

__all__ = ["LayerSystem", "SolveOptions", "SpdSolution", "assemble", "build_model", "conclude",
           "condition_numbers", "diagnose", "drift_and_residual", "layer_theta",
           "layer_warnings", "mean_state_dict", "param_keys", "ridge_value", "shrink", "solve",
           "solve_spd", "solve_systems", "solve_with", "write_back", "write_layer"]
