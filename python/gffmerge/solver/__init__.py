"""Turning statistics into merged weights: normal equations, Cholesky, assembly."""

from .api import solve, solve_with
from .assemble import build_model, mean_state_dict
from .cholesky import condition_numbers, solve_spd
from .options import SolveOptions

__all__ = ["SolveOptions", "build_model", "condition_numbers", "mean_state_dict", "solve",
           "solve_spd", "solve_with"]
