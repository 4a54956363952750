"""Collecting layer-input statistics from source models (hooks and providers)."""

from ..models.parts import Aggregated, Dense, Gathered, GramInput
from .batches import batch_entries, default_forward, move_to
from .dedup import InputCache
from .dense import DenseHook, attach_dense
from .hooks import LayerHook, StructuredHook, provider_of
from .providers import cross_of, gram_of, sums_of
from .runner import Collector, attach, measure

__all__ = ["Aggregated", "Collector", "Dense", "DenseHook", "Gathered", "GramInput",
           "InputCache", "LayerHook", "StructuredHook", "attach", "attach_dense",
           "batch_entries", "cross_of", "default_forward", "gram_of", "measure", "move_to",
           "provider_of", "sums_of"]
