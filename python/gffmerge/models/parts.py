"""The model contract of the statistics collector: what a model or layer may declare.

The collector (:func:`gffmerge.measure`) hooks every ``nn.Linear`` and by default sees its
input rows. Three optional methods, declared here as runtime-checkable protocols, change
what it sees; the collector tests for them with ``isinstance``, never by attribute name:

* :class:`StructuredInput`: a linear layer whose input row ``r`` is a concatenation of
  parts (edge features, gathered node features, scatter sums) returns a
  :class:`GramInput` from ``gram_parts(*args, **kwargs)``, called with the arguments of
  its forward; :mod:`gffmerge.collect.providers` then forms the Gram block by block
  without building the rows.
* :class:`DenseInput` (optional, next to ``gram_parts``): ``dense_input(*args,
  **kwargs)`` returns the explicit ``[R, in_features]`` input for the dense hook
  (``measure(dense=True)``, the reference), when ``args[0]`` is not that input.
* :class:`MeasureForward`: a model whose plain forward does more than measuring needs
  (forces by autograd, say) defines ``measure_forward(batch)``; the collector calls it
  instead of ``model(batch)``.

Example (the layer of a concatenated edge input, shapes ``e [E, d_e]``, ``h [N, d]``)::

    class EdgeLayer(nn.Linear):                      # weight columns [e | h_src | h_dst]
        def gram_parts(self, e, h, edge_index):     # StructuredInput
            return GramInput((Dense(e), Gathered(h, edge_index[0]),
                              Gathered(h, edge_index[1])))

        def dense_input(self, e, h, edge_index):    # DenseInput (optional)
            return torch.cat([e, h[edge_index[0]], h[edge_index[1]]], -1)

:func:`gffmerge.testing.check_structured_gram` checks such a layer against its forward.
The part types are plain descriptions (torch only), so models build them without
depending on the collector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass(frozen=True, eq=False)
class Dense:
    """Explicit rows ``x [R, d]`` (or ``[..., d]``, flattened to rows like ``nn.Linear``).

    ``x`` may also be a 2-D sparse COO/CSR tensor (bag-of-words features and their
    propagations): the collector then forms the sums with sparse products
    (:mod:`gffmerge.collect.sparse`), in float64."""

    x: Tensor

    @property
    def width(self) -> int:
        return int(self.x.shape[-1]) if self.x.dim() else 0

    @property
    def num_rows(self) -> int:
        return self.x.numel() // self.width if self.width else 0


@dataclass(frozen=True, eq=False)
class Gathered:
    """Rows ``gate[r] * src[index[r]]``: ``src [N, d]``, ``index [R]`` int, ``gate [R]`` or
    ``[R, 1]`` (``None``: 1). Nodes that no row indexes (isolated atoms) are allowed."""

    src: Tensor
    index: Tensor
    gate: Tensor | None = None

    @property
    def width(self) -> int:
        return int(self.src.shape[-1]) if self.src.dim() else 0

    @property
    def num_rows(self) -> int:
        return int(self.index.shape[0]) if self.index.dim() else 0


@dataclass(frozen=True, eq=False)
class Aggregated:
    """Rows ``out[r] = Σ_{s: index[s] = r} gate[s] * src[s]``: ``src [S, d]``, ``index [S]``
    int into the ``R`` rows of the layer, ``gate [S]`` or ``[S, 1]`` (``None``: 1).

    Formed in float64 by the collector. Prefer :class:`Dense` with the tensor the layer
    itself consumes when the forward already computes the sum (a float32 model's own sum
    is rounded differently from the float64 one)."""

    src: Tensor
    index: Tensor
    gate: Tensor | None = None

    @property
    def width(self) -> int:
        return int(self.src.shape[-1]) if self.src.dim() else 0


Part = Dense | Gathered | Aggregated


@dataclass(frozen=True, eq=False)
class GramInput:
    """A layer's input rows as parts concatenated along features, in weight-column order.

    ``rows`` (R) is inferred from the first dense or gathered part; give it explicitly
    when every part is :class:`Aggregated`. Build one in ``gram_parts``; the collector
    calls :meth:`check` against the layer's ``in_features`` before using it.
    """

    parts: tuple[Part, ...]
    rows: int = -1

    def __post_init__(self):
        parts = tuple(self.parts)
        object.__setattr__(self, "parts", parts)
        if self.rows < 0:
            sized = [p.num_rows for p in parts if not isinstance(p, Aggregated)]
            if not sized:
                raise ValueError("GramInput of only Aggregated parts needs rows= (the number "
                                 "of rows the sums are scattered into)")
            object.__setattr__(self, "rows", int(sized[0]))

    @classmethod
    def dense(cls, x: Tensor) -> GramInput:
        """The input of a plain ``nn.Linear``: one dense part."""
        return cls((Dense(x),))

    @property
    def width(self) -> int:
        return sum(p.width for p in self.parts)

    def signature(self) -> tuple:
        """Everything :meth:`check` reads of the parts but index values: the part types,
        the row count and every tensor's shape, dtype, layout and device. Two inputs with
        equal signatures pass or fail every test of :meth:`check` but the index ranges
        alike, so a caller that checked one may check only the ranges of the other
        (``structure=False``)."""
        def geometry(t: Tensor | None):
            return None if t is None else (t.shape, t.dtype, t.layout, t.device)
        def part(p):
            if isinstance(p, Dense):
                return type(p), geometry(p.x)
            if isinstance(p, Gathered | Aggregated):
                return type(p), geometry(p.src), geometry(p.index), geometry(p.gate)
            return type(p), object()  # never equal: check() reports it
        return (self.rows, tuple(part(p) for p in self.parts))

    def check(self, in_features: int | None = None,
              index_range: Callable[[Tensor], tuple[int, int]] | None = None, *,
              structure: bool = True) -> None:
        """Raise ``ValueError`` unless the parts are consistent (shapes, dtypes, indices).

        ``index_range(index)`` gives ``(min, max)`` of a non-empty index (default: computed
        here; a caller checking many layers of one batch may remember it per index).
        ``structure=False`` tests the index ranges only: for an input whose
        :meth:`signature` equals that of one that passed (with the same ``in_features``),
        the other tests give the same answer."""
        if not structure:
            self._check_ranges(index_range)
            return
        if not self.parts:
            raise ValueError("GramInput has no parts")
        if in_features is not None and self.width != in_features:
            widths = "+".join(str(p.width) for p in self.parts)
            raise ValueError(f"GramInput parts are {widths} = {self.width} columns wide but "
                             f"the layer has in_features={in_features}")
        for k, p in enumerate(self.parts):
            where = f"part {k} ({type(p).__name__})"
            if not isinstance(p, Dense | Gathered | Aggregated):
                raise TypeError(f"{where}: parts must be Dense, Gathered or Aggregated, got "
                                f"{type(p).__name__}")
            t = p.x if isinstance(p, Dense) else p.src
            if isinstance(p, Dense) and is_sparse(t):
                if t.dim() != 2 or not t.is_floating_point():
                    raise ValueError(f"{where}: sparse rows must be a 2-D floating [R, d] "
                                     f"tensor, got {t.dtype} {tuple(t.shape)}")
            elif t.layout != torch.strided or not t.is_floating_point():
                raise ValueError(f"{where}: features must be a dense floating tensor, got "
                                 f"{t.dtype} {t.layout}")
            if p.width <= 0:
                raise ValueError(f"{where}: has no feature columns (shape {tuple(t.shape)})")
            if isinstance(p, Dense):
                if p.num_rows != self.rows:
                    raise ValueError(f"{where}: has {p.num_rows} rows, expected {self.rows}")
                continue
            if t.dim() != 2:
                raise ValueError(f"{where}: src must be 2-D [*, d], got {tuple(t.shape)}")
            idx = p.index
            if idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"{where}: index must be 1-D int64/int32, got "
                                 f"{idx.dtype} {tuple(idx.shape)}")
            n_src = t.shape[0]
            n_idx = idx.shape[0]
            if isinstance(p, Gathered):
                if n_idx != self.rows:
                    raise ValueError(f"{where}: index has {n_idx} rows, expected {self.rows}")
            elif n_idx != n_src:
                raise ValueError(f"{where}: index has {n_idx} entries for {n_src} src rows")
            self._check_range(k, p, index_range)
            if p.gate is not None:
                g = p.gate
                if not g.is_floating_point() or g.numel() != n_idx or not (
                        g.dim() == 1 or (g.dim() == 2 and g.shape[1] == 1)):
                    raise ValueError(f"{where}: gate must be a float [{n_idx}] or "
                                     f"[{n_idx}, 1] tensor, got {g.dtype} {tuple(g.shape)}")

    def _check_ranges(self, index_range) -> None:
        for k, p in enumerate(self.parts):
            if not isinstance(p, Dense):
                self._check_range(k, p, index_range)

    def _check_range(self, k: int, p: Gathered | Aggregated, index_range) -> None:
        """Index values of part ``k`` inside the rows they address (shapes checked)."""
        idx = p.index
        if not idx.shape[0]:
            return
        if isinstance(p, Gathered):
            bound, what = p.src.shape[0], "src"
        else:
            bound, what = self.rows, "the layer's rows"
        lo, hi = (int(idx.min()), int(idx.max())) if index_range is None else index_range(idx)
        if lo < 0 or hi >= bound:
            raise ValueError(f"part {k} ({type(p).__name__}): index values lie in [{lo}, {hi}], "
                             f"outside {what} [0, {bound})")

    def materialize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The explicit ``[R, width]`` rows (for tests and fallbacks; O(R·width) memory).

        ``dtype=None`` uses the promoted dtype of the parts, computing gated products in
        it as a model would; ``torch.float64`` gives the exact rows the sums describe.
        """
        if dtype is None:
            dtype = _promote([p.x if isinstance(p, Dense) else p.src for p in self.parts])
        cols = []
        for p in self.parts:
            if isinstance(p, Dense) and is_sparse(p.x):
                cols.append(p.x.detach().to(dtype).to_dense())
            elif isinstance(p, Dense):
                cols.append(p.x.detach().reshape(-1, p.width).to(dtype))
            elif isinstance(p, Gathered):
                rows = p.src.detach().to(dtype).index_select(0, p.index.long())
                cols.append(rows if p.gate is None else rows * gate_of(p.gate, dtype)[:, None])
            else:
                cols.append(aggregate_rows(p, self.rows).to(dtype))
        return torch.cat(cols, dim=1)


def is_sparse(t: Tensor) -> bool:
    """Whether ``t`` is a sparse (COO/CSR/CSC/BSR/BSC) tensor."""
    return t.layout != torch.strided


def _promote(tensors: Sequence[Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def gate_of(gate: Tensor | None, dtype: torch.dtype = torch.float64) -> Tensor | None:
    """A gate as a flat ``[R]`` tensor of ``dtype`` (``None`` stays ``None``)."""
    return None if gate is None else gate.detach().reshape(-1).to(dtype)


def aggregate_rows(p: Aggregated, rows: int, step: int | None = None) -> Tensor:
    """``[rows, d]`` float64 ``Σ_{s: index[s] = r} gate[s] src[s]``.

    Source rows are converted to float64 ``step`` at a time (all at once when None), so
    the extra memory is one chunk next to the ``[rows, d]`` result.
    """
    src, index, gate = p.src.detach(), p.index.long(), gate_of(p.gate)
    n = src.shape[0]
    step = max(1, n if step is None else int(step))
    out = torch.zeros(rows, p.width, dtype=torch.float64, device=src.device)
    for s in range(0, n, step):
        e = min(n, s + step)
        v = src[s:e].to(torch.float64)
        out.index_add_(0, index[s:e], v if gate is None else v * gate[s:e, None])
    return out


# ---------------------------------------------------------------- the model contract
@runtime_checkable
class StructuredInput(Protocol):
    """A linear layer that describes its input rows as parts.

    ``gram_parts`` takes the arguments of the layer's forward and returns a
    :class:`GramInput` whose width is the layer's ``in_features`` (parts in weight-column
    order). The collector measures such a layer with the structured provider unless
    ``measure(dense=True)``.
    """

    def gram_parts(self, *args: Any, **kwargs: Any) -> GramInput: ...


@runtime_checkable
class DenseInput(Protocol):
    """A linear layer whose forward input is not simply its first argument.

    ``dense_input`` takes the arguments of the layer's forward and returns the explicit
    ``[..., in_features]`` input (what ``nn.Linear`` on the concatenation would see); the
    dense hook measures that instead of ``args[0]``. Optional next to
    :class:`StructuredInput`, and needed for ``measure(dense=True)`` on such a layer.
    """

    def dense_input(self, *args: Any, **kwargs: Any) -> Tensor: ...


def input_reader(module: nn.Module) -> Callable[[tuple, dict], Tensor]:
    """A function of a call's ``(args, kwargs)`` giving the explicit input rows ``module``
    multiplies: ``dense_input`` for a :class:`DenseInput`, else the first argument."""
    if isinstance(module, DenseInput):
        return lambda args, kwargs: module.dense_input(*args, **kwargs)
    return lambda args, kwargs: args[0] if args else kwargs["input"]


@runtime_checkable
class MeasureForward(Protocol):
    """A model that says how one batch is run while its statistics are measured.

    ``measure_forward(batch)`` runs the forward the collector's hooks should see (under
    ``torch.no_grad()``: e.g. energies without the autograd pass for forces); without it
    the collector calls ``model(batch)`` (``model(**batch)`` for mappings,
    ``model(*batch)`` for tuples and lists).
    """

    def measure_forward(self, batch: Any) -> Any: ...
