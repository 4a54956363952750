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

import contextlib
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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
    payload = _read_payload(path, map_location)
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this gffmerge "
                              f"reads versions up to {VERSION}, upgrade gffmerge")
    name = payload.get("model_name")
    cls = MODELS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise CheckpointError(f"{path} holds unknown model {name!r}; known models: "
                              f"{sorted(MODELS)} (import the module that registers it first)")
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise CheckpointError(f"{path}: 'config' must map constructor argument names to "
                              f"values, got {type(config).__name__}; the file is corrupt")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: 'state_dict' must map names to tensors; the file is "
                              "corrupt")
    dtype = getattr(torch, str(payload.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"{path}: unknown parameter dtype {payload.get('dtype')!r}")
    _check_config_limits(config, path)
    # Build on the meta device first: the shapes are compared before any memory is spent.
    # A class that loads packaged weights in its constructor (CHGNet's adapter) copies them
    # onto the skeleton's meta tensors, a no-op torch warns about once per tensor: nothing
    # of the skeleton but its shapes is used, so that warning says nothing here.
    try:
        with _MetaSkeleton(), _no_init(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*to a meta parameter in the current "
                                    r"model, which is a no-op", category=UserWarning)
            skeleton = cls(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: config {config!r} does not fit "
                              f"model {name!r}: {exc}") from exc
    skeleton.to(dtype)
    _check_size(skeleton, path)
    _check_state(skeleton, state, path)
    _check_finite(state, path)
    try:
        model = cls(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: config {config!r} does not fit "
                              f"model {name!r}: {exc}") from exc
    model.to(dtype)
    _load_state(model, state, path)
    if payload.get("switch") is not None:
        try:
            model = EmbeddingSwitch.from_checkpoint_section(model, payload["switch"])
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: bad embedding-switch section: {exc}") from exc
    model.eval()
    metadata = payload.get("metadata", {})
    return model, metadata if isinstance(metadata, dict) else {}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of the checkpoint at ``path`` without building its model (a lineage
    look-up reads the foundation's record, not its weights). Raises ``FileNotFoundError``
    or :class:`CheckpointError` as :func:`load_checkpoint` does."""
    return read_header(path)["metadata"]


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """What the checkpoint at ``path`` holds, without building its model or reading its
    weights' values: ``model_name``, ``config``, ``dtype``, ``state_values`` (the number of
    values in its state: parameters and buffers), ``switch`` (whether it carries an
    embedding switch) and ``metadata``."""
    payload = _read_payload(Path(path), "meta")
    state = payload.get("state_dict")
    metadata = payload.get("metadata", {})
    return {"model_name": payload.get("model_name"), "config": payload.get("config"),
            "dtype": payload.get("dtype", "float32"),
            "state_values": sum(v.numel() for v in state.values()
                                if isinstance(v, torch.Tensor)) if isinstance(state, dict)
            else 0,
            "switch": payload.get("switch") is not None,
            "metadata": metadata if isinstance(metadata, dict) else {}}


def _read_payload(path: Path, map_location: Any) -> dict:
    """The saved dictionary of a gffmerge checkpoint, its format checked."""
    if not path.is_file():
        if path.is_dir():
            raise CheckpointError(f"checkpoint '{path}' is a directory; give the .pt file")
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a gffmerge checkpoint or is corrupt "
                              f"({_load_failure(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gffmerge checkpoint "
                              f"(expected format={FORMAT!r})")
    return payload


# A checkpoint's config is refused before anything is built when an integer in it is beyond
# this (sizes, counts, max_z), or when its model would hold more parameters than this.
MAX_CONFIG_INT = 1 << 16
MAX_PARAMETERS = 1 << 31


class _MetaSkeleton(TorchFunctionMode):
    """Tensors created without a device go to the meta device (no memory), except the small
    ranges of ``linspace``/``arange`` (sized by config entries within the limits), whose
    meta kernels cost seconds of imports the first time."""

    FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand,
                           torch.randn, torch.randint, torch.empty_strided, torch.eye})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


_INITS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
          "xavier_normal_", "trunc_normal_", "zeros_", "ones_", "constant_", "orthogonal_",
          "eye_")


@contextlib.contextmanager
def _no_init():
    """``torch.nn.init`` functions as no-ops: a skeleton on the meta device has no values,
    and the first random fill of a meta tensor costs seconds of imports."""
    saved = {name: getattr(torch.nn.init, name) for name in _INITS
             if hasattr(torch.nn.init, name)}

    def skip(tensor, *args, **kwargs):
        return tensor

    try:
        for name in saved:
            setattr(torch.nn.init, name, skip)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _load_failure(exc: BaseException) -> str:
    """The reason torch.load gave, without its advice to load unsafely (gffmerge only ever
    reads tensors and plain containers)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    unpickler = [line.split("error:", 1)[-1].split(" was not an allowed")[0].strip()
                 for line in lines if "Unpickler error" in line]
    if unpickler:
        reason = f"it holds a pickled object ({unpickler[0][:160]})"
    else:
        useful = [line for line in lines if "weights_only" not in line.lower()
                  and "weights only" not in line.lower() and "safe_globals" not in line
                  and "trust" not in line.lower() and "documentation" not in line.lower()]
        reason = f"{type(exc).__name__}: {(useful or ['unreadable'])[0][:160]}"
    return (f"{reason}; gffmerge checkpoints hold only tensors and plain containers, and "
            "gffmerge never loads pickled objects")


def _check_config_limits(config: dict[str, Any], path: Path) -> None:
    def walk(value: Any, where: str) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int) and not -MAX_CONFIG_INT <= value <= MAX_CONFIG_INT:
            raise CheckpointError(f"{path}: config {where}={value} is beyond the sane limit "
                                  f"{MAX_CONFIG_INT}; the file is corrupt or not meant for "
                                  "this gffmerge")
        if isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"{path}: config {where}={value} is not finite; the file "
                                  "is corrupt")
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list | tuple):
            if len(value) > MAX_CONFIG_INT:
                raise CheckpointError(f"{path}: config {where} has {len(value)} entries, "
                                      f"beyond the sane limit {MAX_CONFIG_INT}")
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    for key, value in config.items():
        walk(value, key)


def _check_size(model: nn.Module, path: Path) -> None:
    count = sum(t.numel() for t in model.state_dict().values())
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{path}: its config asks for a model of {count:.3g} parameters, "
                              f"beyond the sane limit {MAX_PARAMETERS:.3g}; refusing to build it")


def _check_finite(state: dict, path: Path) -> None:
    bad = [k for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: tensor(s) {', '.join(bad[:5])} hold NaN/Inf; the file is "
                              "corrupt or its training diverged; retrain or use another "
                              "checkpoint")


def _param_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters()), torch.float32)


def _check_state(model: nn.Module, state: dict, path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``model``'s keys and
    shapes (``model`` may live on the meta device)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected))
              if state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{path}: state dict does not match model {type(model).__name__}"]
        if missing:
            lines.append(f"  missing keys: {_few(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {_few(unexpected)}")
        if shapes:
            lines.append("  shape mismatches: " + "; ".join(shapes[:10])
                         + (f"; ... ({len(shapes) - 10} more)" if len(shapes) > 10 else ""))
        raise CheckpointError("\n".join(lines))


def _load_state(model: nn.Module, state: dict, path: Path) -> None:
    _check_state(model, state, path)
    model.load_state_dict(state)


def _few(keys: list[str], n: int = 10) -> str:
    return str(keys) if len(keys) <= n else f"{keys[:n]} ... ({len(keys) - n} more)"
