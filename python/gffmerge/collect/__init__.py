"""Collecting layer-input statistics from source models (hooks and providers)."""

from .batches import batch_entries, default_forward, move_to
from .dense import DenseHook, attach_dense
from .runner import measure

__all__ = ["DenseHook", "attach_dense", "batch_entries", "default_forward", "measure",
           "move_to"]
