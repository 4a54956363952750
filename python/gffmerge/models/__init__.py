"""Force-field models: SchNet, PaiNN and an ORB-style GNS, all built from plain
``nn.Linear`` maps so the closed-form merge sees every learnable linear layer.

Importing this package imports every module in its folder (see the end of this file), and
model classes register themselves with ``@register_model``: adding a model is one new file
here. :data:`MODELS` lists the registered models, :func:`build_model` builds one by name.
"""


from ..discover import import_submodules
from .base import MAX_Z, ForceField
from .gns import GNS
from .layers import ConcatLinear, EdgeConcatLinear, PartsSequential
from .painn import PaiNN
from .parts import Aggregated, Dense, Gathered, GramInput
from .reference import ReferenceFit, ScaleShiftFit, fit_reference_energies, fit_scale_shift
from .registry import MODELS, build_model, model_class, register_model
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
    "model_class",
    "register_model",
]

# Every module in this folder, so that each model file's @register_model has run; not the
# PyG adapter (the optional extra ``gffmerge[pyg]``, seconds to import): ``groups`` imports
# it on first use once ``torch_geometric`` is loaded.
import_submodules(__name__, __path__, skip=("pyg",))
