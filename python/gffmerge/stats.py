"""Per-layer input statistics of source models: sums and counts, never normalised.

A :class:`Stats` holds, for each of K measured models, the bias-augmented Gram
``Σ x̃ x̃ᵀ`` (``x̃ = [x, 1]``) of every hooked linear layer, optionally the cross sums
``Σ x̃ yᵀ`` with the layer's own output, and the row count. Keeping raw sums makes every
weighting (pooled, per-model, coefficients) a choice made at solve time, and makes stats
additive: measuring in chunks and adding equals measuring at once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .architecture import LinearInfo, architecture_signature, fingerprint
from .atomic import write_atomically
from .errors import StatsFormatError, StatsMismatchError

FORMAT = "gffmerge-stats"
FORMAT_VERSION = 1


@dataclass
class LayerStats:
    """Sums for one layer of one model: Gram (augmented), optional cross sums, row count."""

    gram: Tensor  # [in+1, in+1] float64
    rows: int = 0
    cross: Tensor | None = None  # [in+1, out] float64

    def __add__(self, other: LayerStats) -> LayerStats:
        if (self.cross is None) != (other.cross is None):
            raise StatsMismatchError("cannot add stats with cross sums to stats without them; "
                                     "measure both with the same `cross=` setting")
        cross = None if self.cross is None else self.cross + other.cross.to(self.cross.device)
        return LayerStats(self.gram + other.gram.to(self.gram.device), self.rows + other.rows,
                          cross)


@dataclass
class ModelStats:
    """Everything measured for one source model."""

    fingerprint: str
    layers: dict[str, LayerStats]
    graphs: int = 0  # batch entries (graphs, samples) seen
    data: list[str] = field(default_factory=list)  # human-readable data descriptions
    seconds: float = 0.0  # wall time spent measuring
    label: str = ""

    def __add__(self, other: ModelStats) -> ModelStats:
        if self.fingerprint != other.fingerprint:
            raise StatsMismatchError(
                f"cannot sum stats of different models ({self.fingerprint} vs "
                f"{other.fingerprint}); use Stats.concat to stack models")
        if self.layers.keys() != other.layers.keys():
            raise StatsMismatchError("stats cover different layer sets: "
                                     f"{sorted(self.layers.keys() ^ other.layers.keys())[:5]}")
        layers = {n: self.layers[n] + other.layers[n] for n in self.layers}
        return ModelStats(self.fingerprint, layers, self.graphs + other.graphs,
                          self.data + other.data, self.seconds + other.seconds,
                          self.label or other.label)


@dataclass
class Stats:
    """Statistics of K models over the same set of linear layers.

    ``layers`` describes each layer (shared by all models); ``models[k].layers[name]``
    holds model k's sums. ``a + b`` sums entries whose model fingerprints match (more
    data for the same model) and appends the others (more models).
    """

    architecture: str
    layers: dict[str, LinearInfo]
    models: list[ModelStats]

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls, model: nn.Module, layers: dict[str, LinearInfo], *, cross: bool = False,
              device: torch.device | str | None = None, label: str = "") -> Stats:
        """Zero sums for ``model`` over ``layers``, ready to be accumulated into."""
        sums = {}
        for name, info in layers.items():
            d = info.in_features + 1
            gram = torch.zeros(d, d, dtype=torch.float64, device=device)
            cr = (torch.zeros(d, info.out_features, dtype=torch.float64, device=device)
                  if cross else None)
            sums[name] = LayerStats(gram, 0, cr)
        state = model.state_dict()
        signature = architecture_signature(model, state)
        return cls(signature, dict(layers),
                   [ModelStats(fingerprint(model, signature, state), sums, label=label)])

    @classmethod
    def concat(cls, stats: Iterable[Stats]) -> Stats:
        """Stack the models of several stats (in order) into one, without summing any."""
        stats = list(stats)
        if not stats:
            raise StatsMismatchError("no stats to concatenate")
        first = stats[0]
        for s in stats[1:]:
            first._check_compatible(s)
        return cls(first.architecture, dict(first.layers), [m for s in stats for m in s.models])

    def __add__(self, other: Stats) -> Stats:
        self._check_compatible(other)
        models = list(self.models)
        for m in other.models:
            matches = [i for i, mine in enumerate(models) if mine.fingerprint == m.fingerprint]
            if len(matches) > 1:
                raise StatsMismatchError(
                    f"model {m.fingerprint} appears {len(matches)} times; adding is ambiguous. "
                    "Add the per-model stats before concatenating them.")
            if matches:
                models[matches[0]] = models[matches[0]] + m
            else:
                models.append(m)
        return Stats(self.architecture, dict(self.layers), models)

    def _check_compatible(self, other: Stats) -> None:
        if other.architecture != self.architecture or other.layers != self.layers:
            raise StatsMismatchError(
                "stats come from different architectures or layer selections "
                f"({self.architecture} vs {other.architecture}); measure every model "
                "with the same architecture and the same `layers=`")

    # ---------------------------------------------------------------- queries
    @property
    def num_models(self) -> int:
        return len(self.models)

    @property
    def has_cross(self) -> bool:
        return all(ls.cross is not None for m in self.models for ls in m.layers.values())

    def rows(self, layer: str) -> list[int]:
        """Row count of ``layer`` per model."""
        return [m.layers[layer].rows for m in self.models]

    def summary(self) -> dict:
        """What these statistics cover, as a plain dict (``gffmerge info`` on a stats
        file): the architecture, the layers (their number, input widths and whether
        cross sums are kept) and, per model, its label, fingerprint, graphs, data, measuring
        time and the fewest and most rows of any layer."""
        widths = [info.in_features for info in self.layers.values()]
        models = []
        for m in self.models:
            rows = [ls.rows for ls in m.layers.values()]
            models.append({"label": m.label, "fingerprint": m.fingerprint,
                           "graphs": m.graphs, "data": list(m.data),
                           "seconds": round(m.seconds, 3),
                           "rows_min": min(rows, default=0), "rows_max": max(rows, default=0)})
        return {"architecture": self.architecture, "layers": len(self.layers),
                "in_features_min": min(widths, default=0),
                "in_features_max": max(widths, default=0), "cross": self.has_cross,
                "models": models}

    def to(self, device: torch.device | str) -> Stats:
        """A copy with every tensor on ``device``."""
        def move(ls: LayerStats) -> LayerStats:
            return LayerStats(ls.gram.to(device), ls.rows,
                              None if ls.cross is None else ls.cross.to(device))
        models = [ModelStats(m.fingerprint, {n: move(ls) for n, ls in m.layers.items()},
                             m.graphs, list(m.data), m.seconds, m.label) for m in self.models]
        return Stats(self.architecture, dict(self.layers), models)

    def check_models(self, models: Sequence[nn.Module]) -> None:
        """Raise unless these stats were measured on exactly ``models``, in this order."""
        if len(models) != len(self.models):
            raise StatsMismatchError(
                f"got {len(models)} models but stats for {len(self.models)}; pass one stats "
                "entry per source model, in the same order")
        arch = architecture_signature(models[0])
        if arch != self.architecture:
            raise StatsMismatchError(
                f"these stats were measured on a different architecture ({self.architecture}) "
                f"than the models given ({arch}); re-measure with `gffmerge measure` on "
                "these checkpoints")
        for k, (model, ms) in enumerate(zip(models, self.models)):
            fp = fingerprint(model)
            if fp != ms.fingerprint:
                where = [j for j, o in enumerate(self.models) if o.fingerprint == fp]
                hint = (f"; they belong to models[{where[0]}]: pass stats and models in the "
                        "same order" if where else "; re-measure this model")
                raise StatsMismatchError(
                    f"stats entry {k} ({ms.label or ms.fingerprint}) was measured on a "
                    f"different model than models[{k}] (fingerprint {ms.fingerprint} vs "
                    f"{fp}){hint}")

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write safetensors (tensors) + JSON metadata; atomic (temp file, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors: dict[str, Tensor] = {}
        models_meta = []
        for k, m in enumerate(self.models):
            rows = {}
            for name, ls in m.layers.items():
                tensors[f"{k}/{name}/gram"] = ls.gram.detach().to("cpu").contiguous()
                if ls.cross is not None:
                    tensors[f"{k}/{name}/cross"] = ls.cross.detach().to("cpu").contiguous()
                rows[name] = ls.rows
            models_meta.append({"fingerprint": m.fingerprint, "graphs": m.graphs,
                                "data": m.data, "seconds": m.seconds, "label": m.label,
                                "rows": rows})
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "architecture": self.architecture,
                "layers": [info.to_dict() for info in self.layers.values()],
                "models": models_meta}
        write_atomically(path, lambda tmp: save_file(tensors, tmp,
                                                      metadata={"gffmerge": json.dumps(meta)}))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: nn.Module | None = None,
             device: torch.device | str = "cpu") -> Stats:
        """Read stats written by :meth:`save`; with ``model``, refuse another architecture."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise StatsFormatError(f"stats file '{path}' does not exist; create it with "
                                   "`gffmerge measure --model CKPT --data FILE -o {path}`")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                raw = (f.metadata() or {}).get("gffmerge")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise StatsFormatError(f"'{path}' is not a readable safetensors stats file: "
                                   f"{exc}") from exc
        if raw is None:
            raise StatsFormatError(f"'{path}' is a safetensors file but not gffmerge stats "
                                   "(no 'gffmerge' metadata)")
        try:
            meta = json.loads(raw)
        except ValueError as exc:
            raise StatsFormatError(f"'{path}' has corrupt gffmerge metadata (not JSON: "
                                   f"{exc}); re-measure it") from None
        if not isinstance(meta, dict):
            raise StatsFormatError(f"'{path}' has corrupt gffmerge metadata; re-measure it")
        if meta.get("format") != FORMAT:
            raise StatsFormatError(f"'{path}' has format {meta.get('format')!r}, "
                                   f"expected {FORMAT!r}")
        try:
            version = int(meta.get("version", 0))
        except (TypeError, ValueError):
            raise StatsFormatError(f"'{path}' has an unreadable format version "
                                   f"{meta.get('version')!r}; re-measure it") from None
        if version > FORMAT_VERSION:
            raise StatsFormatError(
                f"'{path}' uses stats format version {meta['version']}, newer than this "
                f"gffmerge understands ({FORMAT_VERSION}); upgrade gffmerge")
        try:
            layers, models = _read_entries(meta, tensors, path)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, StatsFormatError):
                raise
            raise StatsFormatError(f"'{path}' has malformed gffmerge metadata "
                                   f"({type(exc).__name__}: {exc}); re-measure it") from None
        stats = cls(meta["architecture"], layers, models)
        if model is not None and architecture_signature(model) != stats.architecture:
            raise StatsMismatchError(
                f"'{path}' was measured on a different architecture "
                f"({stats.architecture}) than the model given "
                f"({architecture_signature(model)}); re-measure with this model")
        return stats


# Relative asymmetry ``max|G − Gᵀ| / max|G|`` a stored Gram may have (summation order).
SYMMETRY_TOLERANCE = 1e-10


def _read_entries(meta: dict, tensors: dict[str, Tensor], path: Path
                  ) -> tuple[dict[str, LinearInfo], list[ModelStats]]:
    """The layers and per-model sums of a stats file, every tensor checked against the
    metadata: shape, finiteness, symmetry, a non-negative diagonal, and row counts equal to
    the Gram's intercept entry (``Σ 1·1``)."""
    if not isinstance(meta.get("architecture"), str):
        raise StatsFormatError(f"'{path}' has no architecture signature; re-measure it")
    layers: dict[str, LinearInfo] = {}
    for d in meta["layers"]:
        info = LinearInfo(str(d["name"]), int(d["in_features"]), int(d["out_features"]),
                          bool(d["has_bias"]))
        if info.in_features < 1 or info.out_features < 1 or info.name in layers:
            raise StatsFormatError(f"'{path}' describes layer '{info.name}' twice or with "
                                   "a size below 1; the file is corrupt, re-measure it")
        layers[info.name] = info
    if not isinstance(meta["models"], list) or not meta["models"]:
        raise StatsFormatError(f"'{path}' holds no models; re-measure it")
    expected: set[str] = set()
    models = []
    for k, mm in enumerate(meta["models"]):
        sums = {}
        graphs, seconds = int(mm.get("graphs", 0)), float(mm.get("seconds", 0.0))
        if graphs < 0 or not (seconds >= 0 and math.isfinite(seconds)):
            raise StatsFormatError(f"'{path}': model {k} has graphs={graphs}, "
                                   f"seconds={seconds}; the file is corrupt, re-measure it")
        for name, info in layers.items():
            key = f"{k}/{name}"
            if f"{key}/gram" not in tensors:
                raise StatsFormatError(f"'{path}' lacks the Gram of layer '{name}' for "
                                       f"model {k}; the file is truncated or corrupt")
            rows = mm["rows"][name]
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise StatsFormatError(f"'{path}': row count {rows!r} of layer '{name}' "
                                       f"(model {k}) is not a count; re-measure it")
            gram, cross = tensors[f"{key}/gram"], tensors.get(f"{key}/cross")
            expected.add(f"{key}/gram")
            _check_gram(gram, info, rows, f"'{path}': the Gram of layer '{name}' (model {k})")
            if cross is not None:
                expected.add(f"{key}/cross")
                where = f"'{path}': the cross sums of layer '{name}' (model {k})"
                want = (info.in_features + 1, info.out_features)
                if tuple(cross.shape) != want:
                    raise StatsFormatError(f"{where} have shape {tuple(cross.shape)}, expected "
                                           f"{want} from the metadata; the file is corrupt, "
                                           "re-measure it")
                if not cross.is_floating_point() or not bool(torch.isfinite(cross).all()):
                    raise StatsFormatError(f"{where} hold NaN/Inf or are not floating point; "
                                           "re-measure (check the data and model for NaN)")
            sums[name] = LayerStats(gram, rows, cross)
        models.append(ModelStats(str(mm["fingerprint"]), sums, graphs,
                                 [str(x) for x in mm.get("data", [])], seconds,
                                 str(mm.get("label", ""))))
    stray = sorted(set(tensors) - expected)
    if stray:
        raise StatsFormatError(f"'{path}' holds tensors its metadata does not describe "
                               f"({', '.join(stray[:3])}); the file is corrupt, re-measure it")
    return layers, models


def _check_gram(gram: Tensor, info: LinearInfo, rows: int, where: str) -> None:
    d = info.in_features + 1
    if tuple(gram.shape) != (d, d):
        raise StatsFormatError(f"{where} has shape {tuple(gram.shape)}, expected {(d, d)} "
                               f"(in_features + 1 = {d}) from the metadata; the file is "
                               "corrupt, re-measure it")
    if not gram.is_floating_point():
        raise StatsFormatError(f"{where} has dtype {gram.dtype}, expected float64; "
                               "re-measure it")
    if not bool(torch.isfinite(gram).all()):
        raise StatsFormatError(f"{where} holds NaN/Inf; re-measure it (check the data and "
                               "the model for NaN)")
    g = gram.to(torch.float64)
    scale = g.abs().max().item()
    if scale > 0 and (g - g.T).abs().max().item() > SYMMETRY_TOLERANCE * scale:
        raise StatsFormatError(f"{where} is not symmetric; the file is corrupt, re-measure it")
    if bool((g.diagonal() < -SYMMETRY_TOLERANCE * scale).any()):
        raise StatsFormatError(f"{where} has a negative diagonal entry (a sum of squares); "
                               "the file is corrupt, re-measure it")
    ones = g[-1, -1].item()
    if abs(ones - rows) > 1e-9 * max(rows, 1):
        raise StatsFormatError(f"{where} counts {ones:.6g} rows but the metadata says {rows}; "
                               "the file is corrupt, re-measure it")
