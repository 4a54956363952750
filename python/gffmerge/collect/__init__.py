"""Collecting layer-input statistics from source models (hooks and providers).

The model contract the collector relies on is declared in :mod:`gffmerge.models.parts`:
layers may describe their input rows (:class:`StructuredInput`, ``gram_parts``) and give
their explicit input (:class:`DenseInput`, ``dense_input``); models may define how a
batch is run while measuring (:class:`MeasureForward`, ``measure_forward``).
"""

from ..models.parts import (
    Aggregated,
    Dense,
    DenseInput,
    Gathered,
    GramInput,
    MeasureForward,
    StructuredInput,
)
from .batches import batch_entries, default_forward, move_to
from .dedup import InputCache
from .dense import DenseHook
from .hooks import LayerHook, StructuredHook, provider_of
from .options import MeasureOptions
from .partial import ResumeError
from .providers import cross_of, gram_of, sums_of
from .runner import Collector, attach, measure

__all__ = ["Aggregated", "Collector", "Dense", "DenseHook", "DenseInput", "Gathered",
           "GramInput", "InputCache", "LayerHook", "MeasureForward", "MeasureOptions",
           "ResumeError", "StructuredHook", "StructuredInput", "attach", "batch_entries",
           "cross_of", "default_forward", "gram_of", "measure", "move_to", "provider_of",
           "sums_of"]
