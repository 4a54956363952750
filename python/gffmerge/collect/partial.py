"""The partial file of an unfinished measurement: what :func:`gffmerge.measure` keeps so
that an interrupted run can be resumed (``partial=`` / ``resume=``, CLI ``--resume``).

The file is a safetensors file beside the output: the float64 sums of every layer as
measured after a whole number of batches, and JSON metadata with the batch, graph and row
counts and a fingerprint of what was measured: the model's weights
(:func:`gffmerge.architecture.fingerprint`), the measure options that change the sums, and
the data (the number of batches and a chained SHA-256 of the content of every batch
measured). Resuming restores the sums bit for bit and skips the batches already measured,
checking each against its recorded hash, so the resumed sums are the ones an uninterrupted
run accumulates, in the same order of additions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import write_atomically
from ..errors import GffmergeError
from ..stats import LayerStats

FORMAT = "gffmerge-partial-measure"
FORMAT_VERSION = 1
START_HASH = "0" * 64


class ResumeError(GffmergeError, ValueError):
    """A partial measurement cannot be resumed: missing, unreadable, or written for another
    model, other data or other options. ``problem`` says which, ``path`` is the file, and
    ``cli_message`` is the message with the command line's fix (``--resume``)."""

    def __init__(self, problem: str, path: str | os.PathLike, fix: str | None = None, *,
                 cli_fix: str | None = None):
        self.problem = problem
        self.path = Path(path)
        if fix is None:
            fix = f"delete '{self.path}' to start afresh, or measure without resume="
            cli_fix = cli_fix or f"delete '{self.path}' to start afresh, or drop --resume"
        self.cli_message = f"{problem}; {cli_fix or fix}"
        super().__init__(f"{problem}; {fix}")


def rank_path(path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The partial file of one process of a ``world_size``-process measurement:
    ``out.safetensors.partial`` -> ``out.safetensors.rank1-of-2.partial``."""
    path = Path(path)
    if world_size <= 1:
        return path
    tag = f"rank{rank}-of-{world_size}"
    if path.suffix == ".partial":
        return path.with_name(f"{path.stem}.{tag}.partial")
    return path.with_name(f"{path.name}.{tag}")


# ---------------------------------------------------------------- content hash of a batch
def _feed(h: Any, value: Any) -> None:
    """Feed ``value`` (tensors, containers, dataclasses, scalars) into the hash ``h``."""
    if isinstance(value, Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
                     .tobytes())
    elif isinstance(value, Mapping):
        h.update(f"M{len(value)}".encode())
        for k, v in value.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(value, list | tuple):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _feed(h, v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(f"D{type(value).__name__}".encode())
        for f in dataclasses.fields(value):
            _feed(h, getattr(value, f.name))
    elif value is None or isinstance(value, str | int | float | bool | bytes):
        h.update(f"S{value!r}".encode())
    elif hasattr(value, "__array__"):
        _feed(h, torch.as_tensor(value))
    elif hasattr(value, "__dict__"):
        h.update(f"O{type(value).__name__}".encode())
        _feed(h, dict(vars(value)))
    else:  # nothing stable to hash (a repr may hold an address): the type only
        h.update(f"?{type(value).__name__}".encode())


def chain_hash(previous: str, batch: Any) -> str:
    """The data hash after one more batch: SHA-256 of the previous hash and the batch."""
    h = hashlib.sha256(previous.encode())
    _feed(h, batch)
    return h.hexdigest()


# ---------------------------------------------------------------- the state on disk
@dataclasses.dataclass
class PartialState:
    """The sums of a measurement after ``batches`` whole batches, and what they belong to."""

    model: str  # model fingerprint (weights and architecture)
    options: dict[str, Any]  # the measure options that change the sums
    total_batches: int | None  # len(data), when the data has one
    data_hash: str  # chain_hash over the batches measured
    batches: int
    graphs: int
    seconds: float
    layers: dict[str, LayerStats]

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically, at once (not held back by :func:`gffmerge.atomic.all_or_nothing`:
        the partial file must survive a failed or interrupted command)."""
        from safetensors.torch import save_file

        tensors: dict[str, Tensor] = {}
        for name, ls in self.layers.items():
            tensors[f"{name}/gram"] = ls.gram.detach().to("cpu").contiguous()
            if ls.cross is not None:
                tensors[f"{name}/cross"] = ls.cross.detach().to("cpu").contiguous()
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "model": self.model,
                "options": self.options, "total_batches": self.total_batches,
                "data_hash": self.data_hash, "batches": self.batches, "graphs": self.graphs,
                "seconds": self.seconds,
                "rows": {name: ls.rows for name, ls in self.layers.items()}}
        return write_atomically(
            path, lambda tmp: save_file(tensors, tmp, metadata={FORMAT: json.dumps(meta)}),
            defer=False)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None
             ) -> PartialState:
        """Read a partial file; anything but one written by :meth:`save` is a
        :class:`ResumeError`."""
        from safetensors import safe_open

        path = Path(path)
        pattern = rank_path(path, 0, 2).name.replace("rank0-of-2", "rank*-of-*")
        ranked = sorted(path.parent.glob(pattern)) if not path.is_file() else []
        if ranked:
            world = ranked[0].name.split("-of-")[-1].split(".")[0]
            raise ResumeError(f"there is no partial measurement '{path}', but there are "
                              f"per-process ones ('{ranked[0].name}', ...) of a run with "
                              f"{world} processes", path,
                              f"resume under torchrun --nproc_per_node={world}, or delete "
                              "them to start afresh")
        if not path.is_file():
            raise ResumeError(f"there is no partial measurement '{path}' to resume (the "
                              "measurement finished, or never started)", path,
                              "run without resume= to measure afresh",
                              cli_fix="run without --resume to measure afresh")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                raw = (f.metadata() or {}).get(FORMAT)
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if raw is None:
                raise ValueError("no partial-measurement metadata")
            meta = json.loads(raw)
            if meta.get("format") != FORMAT or int(meta.get("version", 0)) != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
            layers = {}
            for name, rows in meta["rows"].items():
                gram = tensors[f"{name}/gram"]
                cross = tensors.get(f"{name}/cross")
                if gram.dtype != torch.float64 or not bool(torch.isfinite(gram).all()):
                    raise ValueError(f"the sums of layer '{name}' are not finite float64")
                layers[name] = LayerStats(gram.to(device), int(rows),
                                          None if cross is None else cross.to(device))
            return cls(str(meta["model"]), dict(meta["options"]), meta["total_batches"],
                       str(meta["data_hash"]), int(meta["batches"]), int(meta["graphs"]),
                       float(meta["seconds"]), layers)
        except ResumeError:
            raise
        except Exception as exc:  # safetensors and json raise several types
            raise ResumeError(f"'{path}' is not a readable partial measurement ("
                              f"{type(exc).__name__}: {exc})", path) from None

    def check(self, path: Path, *, model: str, options: dict[str, Any],
              total_batches: int | None) -> None:
        """Refuse to resume a measurement of another model, with other options or on data
        with another number of batches (the content is checked batch by batch later)."""
        if model != self.model:
            raise ResumeError(f"partial measurement '{path}' was written for another model "
                              f"(weights fingerprint {self.model}, this model is {model})", path)
        for key in sorted(options.keys() | self.options.keys()):
            then, now = self.options.get(key), options.get(key)
            if then != now:
                raise ResumeError(f"partial measurement '{path}' was written with other "
                                  f"measure options ({key} was {then!r}, now {now!r})", path)
        if total_batches != self.total_batches:
            raise ResumeError(f"partial measurement '{path}' was written for other data "
                              f"({self.total_batches} batches then, {total_batches} now)", path)

    def mismatch(self, path: Path, index: int, why: str) -> ResumeError:
        return ResumeError(f"partial measurement '{path}' was written for other data "
                           f"(batch {index} {why})", path)


# ---------------------------------------------------------------- stopping at a batch end
class StopSignals:
    """While active, SIGINT and SIGTERM only set a flag (checked between batches, where
    the sums are whole and can be saved); a second signal interrupts at once.

    Installs handlers only in the main thread (the only one Python delivers signals to);
    the previous handlers are restored on exit.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice: stopped "
                                    "in the middle of a batch")
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""


class SaveClock:
    """When to write the partial file: every ``every`` batches or ``seconds`` seconds
    (either may be ``None``: never for that reason)."""

    def __init__(self, every: int | None, seconds: float | None, batches: int) -> None:
        self.every, self.seconds = every, seconds
        self.last_batches, self.last_time = batches, time.monotonic()

    def due(self, batches: int) -> bool:
        return ((self.every is not None and batches - self.last_batches >= self.every)
                or (self.seconds is not None
                    and time.monotonic() - self.last_time >= self.seconds))

    def saved(self, batches: int) -> None:
        self.last_batches, self.last_time = batches, time.monotonic()


def restore_sums(sums: dict[str, LayerStats], state: PartialState, path: Path) -> None:
    """Copy the sums of a partial file into fresh zero sums (bit for bit)."""
    if set(state.layers) != set(sums):
        raise ResumeError(f"partial measurement '{path}' covers other layers; the file is "
                          "corrupt", path)
    for name, ls in sums.items():
        saved = state.layers[name]
        if (saved.gram.shape != ls.gram.shape or (saved.cross is None) != (ls.cross is None)
                or (ls.cross is not None and saved.cross.shape != ls.cross.shape)):
            raise ResumeError(f"partial measurement '{path}' has sums of another shape for "
                              f"layer '{name}'; the file is corrupt", path)
        ls.gram.copy_(saved.gram)
        if ls.cross is not None:
            ls.cross.copy_(saved.cross)
        ls.rows = saved.rows


def skip_measured(batch_iter: Iterator[Any], n: int, state: PartialState, path: Path) -> str:
    """Pass over the ``n`` batches measured before, checking they are the same data."""
    data_hash = START_HASH
    for index in range(n):
        try:
            batch = next(batch_iter)
        except StopIteration:
            raise state.mismatch(path, index, "is missing: the data now ends there") from None
        data_hash = chain_hash(data_hash, batch)
    if data_hash != state.data_hash:
        raise ResumeError(f"partial measurement '{path}' was written for other data (the "
                          f"content of the {n} batches measured then differs)", path)
    return data_hash
