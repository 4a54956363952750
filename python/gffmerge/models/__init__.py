"""Force-field models: SchNet, PaiNN and an ORB-style GNS, all built from plain
``nn.Linear`` maps so the closed-form merge sees every learnable linear layer."""

from .base import MAX_Z, ForceField
from .gns import GNS
from .layers import ConcatLinear, EdgeConcatLinear, PartsSequential
from .painn import PaiNN
from .parts import Aggregated, Dense, Gathered, GramInput
from .reference import ReferenceFit, ScaleShiftFit, fit_reference_energies, fit_scale_shift
from .registry import MODELS, build_model
from .schnet import SchNet

__all__ = [
    "GNS",
    "MAX_Z",
    "MODELS",
    "Aggregated",
    "ConcatLinear",
    "Dense",
    "EdgeConcatLinear",
    "Gathered",
    "GramInput",
    "PartsSequential",
    "ForceField",
    "PaiNN",
    "ReferenceFit",
    "ScaleShiftFit",
    "SchNet",
    "build_model",
    "fit_reference_energies",
    "fit_scale_shift",
]
