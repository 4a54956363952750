"""Held-out batches of each source's own data, and a label-free validation score on them.

When no labelled validation data is given, a merge's hyperparameters are chosen by how well
the merged model agrees with source k on held-out frames of source k's own data: the
sources are the teachers, and the frames are never used for the statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .batches import batch_entries, default_forward, move_to


def graphs(batches: Sequence[Any]) -> int:
    return sum(batch_entries(b) for b in batches)


def hold_out(data: Iterable[Any], frames: int | None, val_frames: int | None
              ) -> tuple[list[Any], list[Any]]:
    """``(statistics batches, held-out batches)`` of one source's data: batches after the
    first ``frames`` graphs (up to ``val_frames`` more) are held out; when the data has no
    more than ``frames`` graphs, its last fifth of the batches is."""
    batches, graphs = [], 0
    limit = None if frames is None or val_frames is None else frames + val_frames
    for batch in data:
        batches.append(batch)
        graphs += batch_entries(batch)
        if limit is not None and graphs >= limit:
            break
    seen = 0
    for i, batch in enumerate(batches):
        if frames is not None and seen >= frames:
            return batches[:i], batches[i:]
        seen += batch_entries(batch)
    cut = len(batches) - max(1, len(batches) // 5) if len(batches) > 1 else len(batches)
    return batches[:cut], batches[cut:]


def agreement_error(model: nn.Module, sources: Sequence[nn.Module],
                    held_out: Sequence[Sequence[Any]], forward=None, *,
                    how: str = "pooled") -> float:
    """Mean absolute difference between ``model`` and source k on source k's held-out
    batches: forces for force fields (their derivatives for conservative ones), the
    forward's outputs otherwise. Label-free validation. ``how="pooled"`` pools all
    entries; ``"per_system"`` is the mean over sources of each source's own mean, so
    every source counts once whatever its number of atoms."""
    if how not in ("pooled", "per_system"):
        raise ValueError(f"unknown validation score {how!r}; choose 'per_system' or 'pooled'")
    per = []
    for src, batches in zip(sources, held_out):
        total = count = 0.0
        for batch in batches:
            a, b = _outputs(model, batch, forward), _outputs(src, batch, forward)
            for x, y in zip(a, b):
                total += (x.detach().double() - y.detach().double()).abs().sum().item()
                count += x.numel()
        per.append((total, count))
    if how == "pooled":
        err = sum(t for t, _ in per) / max(sum(c for _, c in per), 1)
    else:
        err = sum(t / max(c, 1) for t, c in per) / max(len(per), 1)
    return 1000.0 * err if _is_force_field(model) else err


def _is_force_field(model: nn.Module) -> bool:
    return hasattr(model, "conservative") and hasattr(model, "cutoff")


def _outputs(model: nn.Module, batch: Any, forward) -> list[Tensor]:
    device = next(model.parameters()).device
    if _is_force_field(model):
        with torch.enable_grad():
            return [model(move_to(batch, device))["forces"]]
    with torch.no_grad():
        out = (forward or default_forward)(model, move_to(batch, device))
    if isinstance(out, Tensor):
        return [out]
    values = out.values() if isinstance(out, dict) else out
    return [v for v in values if isinstance(v, Tensor)]
