"""Single-file model checkpoints: architecture name, config, weights and metadata.

The file is a ``torch.save`` of plain containers and tensors, so it loads with
``torch.load(weights_only=True)``::

    {"format": "gffmerge-checkpoint", "version": 1, "model_name": "gns",
     "config": {...constructor kwargs...}, "dtype": "float32",
     "state_dict": {...}, "metadata": {...}}

``dtype`` is the dtype of the model's parameters; the energy buffers are float64
whatever it is (see :mod:`gffmerge.models.base`).

``model_name`` is looked up in the model registry (``@register_model``,
:data:`gffmerge.models.MODELS`): only registered classes are ever built, never a class
named by an import path in the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gffmerge.atomic import write_atomically
from gffmerge.errors import GffmergeError
from gffmerge.models.base import ForceField
from gffmerge.models.embedding_switch import EmbeddingSwitch
from gffmerge.models.registry import MODELS

FORMAT = "gffmerge-checkpoint"
VERSION = 1


class CheckpointError(GffmergeError, ValueError):
    """A checkpoint file is missing, unreadable, or does not match its model."""


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is a plain container loadable with weights_only."""
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: keys must be str or int, got {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} has type {type(value).__name__}; checkpoints hold only None, "
                    "bool, int, float, str, tensors, and dicts/lists/tuples of them")


def save_checkpoint(path: str | os.PathLike, model: ForceField,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` and ``metadata`` (data, split, seed, metrics, ...) to ``path``.

    The file is written to a temporary file in the same folder and renamed over
    ``path``, so a reader never sees a half-written checkpoint. Returns the path. An
    :class:`EmbeddingSwitch` is stored as its merged model plus a ``"switch"`` section.
    """
    switch = model.checkpoint_section() if isinstance(model, EmbeddingSwitch) else None
    state = model.plain_state_dict() if switch is not None else None
    model = model.base if switch is not None else model
    if not isinstance(model, ForceField) or MODELS.get(model.name) is not type(model):
        raise TypeError(f"save_checkpoint needs a registered ForceField ({sorted(MODELS)}), "
                        f"got {type(model).__name__} (name {getattr(model, 'name', None)!r}); "
                        "decorate its class with @gffmerge.models.register_model")
    metadata = dict(metadata or {})
    _check_plain(metadata, "metadata")
    _check_plain(model.config, "model.config")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_name": model.name,
        "config": dict(model.config),
        "dtype": str(_param_dtype(model)).removeprefix("torch."),
        "state_dict": {k: v.detach().cpu().clone()
                       for k, v in (model.state_dict() if state is None else state).items()},
        "metadata": metadata,
    }
    if switch is not None:
        payload["switch"] = switch
    path = write_atomically(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu"
                    ) -> tuple[ForceField, dict[str, Any]]:
    """Rebuild the model saved by :func:`save_checkpoint`; returns ``(model, metadata)``.

    The model is in eval mode. Raises ``FileNotFoundError`` for a missing file and
    :class:`CheckpointError` for anything else that is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a gffmerge checkpoint "
                              f"(torch.load failed: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gffmerge checkpoint "
                              f"(expected format={FORMAT!r})")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this gffmerge "
                              f"reads versions up to {VERSION}, upgrade gffmerge")
    name = payload.get("model_name")
    cls = MODELS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise CheckpointError(f"{path} holds unknown model {name!r}; known models: "
                              f"{sorted(MODELS)} (import the module that registers it first)")
    try:
        model = cls(**payload["config"])
    except TypeError as exc:
        raise CheckpointError(f"{path}: config {payload['config']!r} does not fit "
                              f"model {name!r}: {exc}") from exc
    dtype = getattr(torch, str(payload.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"{path}: unknown parameter dtype {payload.get('dtype')!r}")
    model.to(dtype)
    _load_state(model, payload["state_dict"], path)
    if payload.get("switch") is not None:
        try:
            model = EmbeddingSwitch.from_checkpoint_section(model, payload["switch"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad embedding-switch section: {exc}") from exc
    model.eval()
    return model, payload.get("metadata", {})


def _param_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters()), torch.float32)


def _load_state(model: nn.Module, state: dict, path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected))
              if state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{path}: state dict does not match model {type(model).__name__}"]
        if missing:
            lines.append(f"  missing keys: {missing}")
        if unexpected:
            lines.append(f"  unexpected keys: {unexpected}")
        if shapes:
            lines.append("  shape mismatches: " + "; ".join(shapes))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state)
