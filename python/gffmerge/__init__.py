"""gffmerge: closed-form merging of fine-tuned GNN force fields (and GNNs in general).

The flow is data → model → :func:`measure` (per-layer Gram sums) → :class:`Stats` →
:func:`solve` (Cholesky per layer) → merged model; :func:`merge` does all of it.
"""

from . import methods
from .architecture import check_same_architecture, fingerprint, linear_layers
from .collect import measure
from .errors import (
    ArchitectureMismatchError,
    EmptyDataError,
    GffmergeError,
    NonFiniteActivationError,
    SingularGramError,
    StatsFormatError,
    StatsMismatchError,
    UnknownMethodError,
)
from .pipeline import merge
from .report import LayerReport, MergeReport, MergeResult
from .solver import SolveOptions, solve
from .stats import LayerStats, ModelStats, Stats

__version__ = "0.1.0"

__all__ = [
    "ArchitectureMismatchError", "EmptyDataError", "GffmergeError", "LayerReport",
    "LayerStats", "MergeReport", "MergeResult", "ModelStats", "NonFiniteActivationError",
    "SingularGramError", "SolveOptions", "Stats", "StatsFormatError", "StatsMismatchError",
    "UnknownMethodError", "check_same_architecture", "fingerprint", "linear_layers",
    "measure", "merge", "methods", "solve",
]
