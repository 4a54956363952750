"""Stage statistics of a progressive merge: merged-model inputs against source targets.

For a stage (a set of linear layers that do not feed one another, see
:mod:`gffmerge.collect.order`) and each source k, the merged-so-far model runs on source
k's own frames and each stage layer's input rows ``x`` are recorded; source k runs on the
*same* batch and its own outputs ``y`` of those layers are the targets. Per layer and
source this accumulates, in float64 through ``gffmerge_ext``:

* value rows: ``Σ x̃ x̃ᵀ`` (``x̃ = [x, 1]``), ``Σ x̃ yᵀ``, ``Σ ‖y‖²`` and the row count;
* tangent rows (conservative models, :mod:`gffmerge.collect.tangents`): ``Σ ẋ ẋᵀ``,
  ``Σ ẋ ẏᵀ``, ``Σ ‖ẏ‖²``, with ``ẋ, ẏ`` the derivatives along ``draws`` displacement
  directions per frame, one forward-mode pass each (no bias column: a linear layer maps
  ``ẋ`` to ``W ẋ``). Value rows are taken from the first pass only.

They are sums plus counts like :class:`~gffmerge.Stats`, so weighting and the tangent
weight are choices made at solve time.

Each source's targets are computed once (one forward per source, all layers) and kept
when they fit in ``cache_bytes``; otherwise the source is re-run per stage on the stage's
layers only. A pass stops as soon as every stage layer has been called as often as in
one full forward, so early stages cost part of a forward. One-shot sums (no merged
model: each source gives its own inputs) record inputs and targets in one pass per batch
and direction and never use the cache: the sums are formed inside the hooks, on the layer's own
tensors, so no row is copied or kept.

**Derived targets of one-shot sums** (``cross="auto"``, the default): in a one-shot pass
the target ``y`` of a layer is that layer's own output on the recorded input, so for a
layer whose output is exactly its affine map of the rows its hook sees
(:func:`derives_targets`: ``nn.Linear``, ``ConcatLinear``, ``EdgeConcatLinear``, no hooks
or parametrization that could change input or output) the targets need no products with
``y`` at all: with ``Θ = [W, b]`` (float64) and the sums' Grams,
``Σ x̃ yᵀ = (Σ x̃ x̃ᵀ) Θᵀ``, ``Σ ‖y‖² = tr(Θ (Σ x̃ x̃ᵀ) Θᵀ)``, ``Σ ẋ ẏᵀ = (Σ ẋ ẋᵀ) Wᵀ`` and
``Σ ‖ẏ‖² = tr(W (Σ ẋ ẋᵀ) Wᵀ)`` (tangent rows carry no bias: ``ẏ = ẋ Wᵀ``), formed once
per source after its passes. These are the exact values of the sums; the measured ones
(``cross="measured"``, the reference, and the route of every other layer, e.g. an affine
LayerNorm under ``norms``) carry the model's rounding of ``y`` (float32: ~1e-7
relative); for a float64 model the two agree to float64 rounding.

**Structured rows** (``structured=True``, the default): a layer that describes its input
as parts (:class:`~gffmerge.models.parts.StructuredInput`, e.g. the GNS edge layer on
``[e, g_s·h[sender], g_r·h[receiver]]``) and has a gathered part is recorded as its
:class:`~gffmerge.models.parts.GramInput`, and its value sums come from
:func:`~gffmerge.collect.providers.sums_of` without a per-edge input tensor: the Gram
from node-level products and scatter sums, and the cross sums of a gathered part as
``Σ_e g_e h[i_e] y_eᵀ = Σ_n h[n] (Σ_{e: i_e = n} g_e y_e)ᵀ`` (``y`` scattered to the nodes
in float64, then one node-level product), the plain product for dense parts. Tangent rows
are parts too where the tangent of each part is one part (``[ė, ḣ[sender], ḣ[receiver]]``
for the GNS edge layer: no gate depending on the positions,
:func:`~gffmerge.collect.recording.structured_tangent`), summed the same way with the
ones row dropped (tangent rows have 0 in the bias column); else dense (the layer's
``dense_input`` along the dual level). ``structured=False`` is the dense reference for
every layer; layers without parts are always dense.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gffmerge_ext import cross_, gram_

from ..errors import EmptyDataError, NonFiniteActivationError
from ..models.parts import GramInput
from .batches import batch_entries, default_forward, model_device, move_to
from .hooks import is_affine, theta
from .providers import sums_of
from .recording import run_recording
from .tangents import directions, energy_forward

# Keep each source's layer outputs in memory up to this size (else recompute per stage).
CACHE_BYTES = 1 << 30

CROSS_ROUTES = ("auto", "measured")
"""How one-shot sums get their targets' sums: ``"auto"`` derives them from the Grams and
the layer's weights where the layer's output is its affine map of the recorded input
(:func:`derives_targets`), ``"measured"`` forms them from the recorded outputs for every
layer (the reference)."""


@dataclass
class LayerSums:
    """Sums of one layer for one source (see module docstring)."""

    gram: Tensor  # [d+1, d+1] Σ x̃x̃ᵀ
    cross: Tensor  # [d+1, out] Σ x̃yᵀ
    rows: int = 0
    ysq: float = 0.0  # Σ ‖y‖²
    tgram: Tensor | None = None  # [d, d] Σ ẋẋᵀ
    tcross: Tensor | None = None  # [d, out] Σ ẋẏᵀ
    trows: int = 0
    tysq: float = 0.0
    # how cross, ysq, tcross, tysq were formed: "measured" (from the recorded outputs),
    # "derived" (from the Grams and the layer's own weights), "mixed" (a sum of both)
    route: str = "measured"

    @classmethod
    def empty(cls, d_in: int, d_out: int, tangents: bool, device) -> LayerSums:
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)
        return cls(z(d_in + 1, d_in + 1), z(d_in + 1, d_out),
                   tgram=z(d_in, d_in) if tangents else None,
                   tcross=z(d_in, d_out) if tangents else None)

    def __add__(self, other: LayerSums) -> LayerSums:
        add = lambda a, b: None if a is None else a + b
        return LayerSums(self.gram + other.gram, self.cross + other.cross,
                         self.rows + other.rows, self.ysq + other.ysq,
                         add(self.tgram, other.tgram), add(self.tcross, other.tcross),
                         self.trows + other.trows, self.tysq + other.tysq,
                         self.route if self.route == other.route else "mixed")


@dataclass
class Source:
    """One source model, the batches it is measured on, their displacement directions and
    (when cached) its layer outputs on them."""

    model: nn.Module
    batches: list[Any]
    label: str
    dirs: list[list[Tensor | None]] = field(default_factory=list)  # per batch, per draw
    targets: list[list[dict[str, list[tuple[Tensor, Tensor | None]]]]] | None = None
    frames: int = 0


def prepare_sources(models: Sequence[nn.Module], data: Sequence[Iterable[Any]], *,
                    frames: int | None, names: Sequence[str], tangents: bool,
                    direction: str = "random", draws: int = 1, seed: int = 0, device=None,
                    labels: Sequence[str] | None = None, cache_bytes: int = CACHE_BYTES,
                    forward=default_forward, outputs: bool = True) -> list[Source]:
    """Materialise each source's batches (up to ``frames`` graphs, checked after each
    batch), draw ``draws`` directions per batch (when ``tangents``; ``"force"`` directions
    give one draw) and cache the source's outputs of ``names`` when they fit in
    ``cache_bytes`` (not at all with ``outputs=False``: for :func:`stage_sums` with
    ``targets=False``, which needs only the merged model's inputs, or one-shot sums, which
    record their targets in their own pass)."""
    if draws < 1:
        raise ValueError(f"draws must be a positive number of directions per frame, got "
                         f"{draws}")
    if direction == "force":
        draws = 1
    sources = []
    for k, (model, it) in enumerate(zip(models, data)):
        label = labels[k] if labels else f"source {k}"
        batches, graphs = [], 0
        for batch in it:
            batches.append(move_to(batch, device))
            graphs += batch_entries(batch)
            if frames is not None and graphs >= frames:
                break
        if not batches:
            raise EmptyDataError(f"{label} has no data: its batch iterable yielded nothing; "
                                 "check the dataset path, split and filters")
        src = Source(model, batches, label, frames=graphs)
        src.dirs = [[directions(b, direction, seed=seed * 100003 + k * 1009 + i * 31 + d)
                     for d in range(draws)] if tangents else [None]
                    for i, b in enumerate(batches)]
        model.eval()
        sources.append(src)
        if not outputs:
            continue
        first = run_recording(model, batches[0], names, "output", u=src.dirs[0][0],
                              forward=forward)
        size = sum(t.numel() * t.element_size() * (1 + tangents)
                   for calls in first.values() for t, _ in calls)
        if size * len(batches) * len(src.dirs[0]) <= cache_bytes:
            src.targets = [[first if (i, d) == (0, 0) else
                            run_recording(model, b, names, "output", u=u, forward=forward)
                            for d, u in enumerate(us)]
                           for i, (b, us) in enumerate(zip(batches, src.dirs))]
    return sources


def _sq(y: Tensor) -> float:
    """``Σ y²`` in float64: the same products and sum as ``y.double().square().sum()``,
    squared in place in one float64 copy (a fresh buffer per temporary costs more than
    the arithmetic)."""
    return y.to(torch.float64, copy=True).square_().sum().item()


def _add_call(s: LayerSums, x, dx, y, dy, *, values: bool, tangents: bool,
              backend: str) -> None:
    """Add one layer call's value rows (when ``values``) and tangent rows to ``s``; a
    dense tangent of None stands for zero rows (counted, nothing to add)."""
    if values and isinstance(x, GramInput):
        gram, cross = sums_of(x, y, backend=backend)
        s.gram += gram
        s.rows += x.rows
        if cross is not None:
            s.cross += cross
            s.ysq += _sq(y)
    elif values:
        gram_(s.gram, x, augment=True, backend=backend)
        s.rows += x.shape[0]
        if y is not None:
            cross_(s.cross, x, y, augment_x=True, backend=backend)
            s.ysq += _sq(y)
    if tangents and isinstance(dx, GramInput):  # structured tangent rows
        w = dx.width  # tangent rows have 0 in the bias column: drop the ones row
        tgram, tcross = sums_of(dx, dy, backend=backend)
        s.tgram += tgram[:w, :w]
        s.trows += dx.rows
        if tcross is not None:
            s.tcross += tcross[:w]
            s.tysq += _sq(dy)
    elif tangents:  # a tangent of None: rows that do not depend on the positions (zeros)
        if dx is not None:
            gram_(s.tgram, dx, backend=backend)
            if dy is not None:
                cross_(s.tcross, dx, dy, backend=backend)
        s.trows += (x if dx is None else dx).shape[0]
        if dy is not None:
            s.tysq += _sq(dy)


def derives_targets(module: nn.Module) -> bool:
    """Whether a one-shot pass may take ``module``'s targets from its Gram and weights:
    its output is exactly ``x̃ Θᵀ`` of the rows its recording hook sees
    (:func:`~gffmerge.collect.hooks.is_affine`: one of the plain affine layer classes, not
    parametrized, no forward pre-hook) and no forward hook (the module's own or a global
    one) that could hand the recording hook another output, e.g. a post-activation.
    Checked before the recording hooks are attached."""
    from torch.nn.modules import module as _module

    return (is_affine(module) and not module._forward_hooks
            and not getattr(_module, "_global_forward_hooks", None)
            and not getattr(_module, "_global_forward_pre_hooks", None))


def derive_targets(s: LayerSums, module: nn.Module) -> None:
    """Set ``s``'s target sums from its Grams and ``module``'s weights (module docstring,
    *Derived targets*): ``Σ x̃ yᵀ = G̃ Θᵀ``, ``Σ ‖y‖² = tr(Θ G̃ Θᵀ)``, and for tangent rows
    ``Σ ẋ ẏᵀ = Gₜ Wᵀ``, ``Σ ‖ẏ‖² = tr(W Gₜ Wᵀ)``, all in float64."""
    t = theta(module).to(s.gram.device).T  # [d + 1, out]
    s.cross = s.gram @ t
    s.ysq = float((s.cross * t).sum())
    if s.tgram is not None:
        w = t[:-1]  # tangent rows have no bias column
        s.tcross = s.tgram @ w
        s.tysq = float((s.tcross * w).sum())
    s.route = "derived"


def _mismatch(n: str, merged_calls: str, src_calls: int, label: str) -> RuntimeError:
    return RuntimeError(f"layer '{n}' was called {merged_calls} times by the merged model "
                        f"but {src_calls} times by {label} on the same batch; the models "
                        "must share one forward")


def _pass_sums(sums: dict[str, LayerSums], model: nn.Module, src: Source, i: int, d: int,
               u: Tensor | None, names: Sequence[str], *, one_shot: bool, targets: bool,
               tangents: bool, calls, forward, structured: bool, backend: str,
               derived: frozenset[str] = frozenset()) -> None:
    """Add one pass of ``model`` over ``src``'s batch ``i`` (direction ``d``) to ``sums``:
    formed inside the hooks on the layer's own tensors (no copies kept), each call paired
    with the source's target of the same call (one-shot: from the same pass; the layers
    in ``derived`` add their Grams only, their targets' sums come from
    :func:`derive_targets` after the passes)."""
    batch, values = src.batches[i], d == 0
    if one_shot:
        def both(n, x, y):
            if n in derived:
                y = (None, None)
            _add_call(sums[n], *x, *y, values=values, tangents=tangents, backend=backend)
        run_recording(model, batch, names, "both", u=u, calls=calls, forward=forward,
                      structured=structured, sink=both)
        return
    ys = None
    if targets:
        ys = (src.targets[i][d] if src.targets is not None else
              run_recording(src.model, batch, names, "output", u=u, calls=calls,
                            forward=forward))
    seen = dict.fromkeys(names, 0)

    def inputs(n, x, _):
        k = seen[n]
        seen[n] += 1
        if ys is not None and k >= len(ys[n]):
            raise _mismatch(n, f"more than {len(ys[n])}", len(ys[n]), src.label)
        y = (None, None) if ys is None else ys[n][k]
        _add_call(sums[n], *x, *y, values=values, tangents=tangents, backend=backend)
    run_recording(model, batch, names, "input", u=u, calls=calls, forward=forward,
                  structured=structured, sink=inputs)
    for n in names:
        if ys is not None and seen[n] != len(ys[n]):
            raise _mismatch(n, str(seen[n]), len(ys[n]), src.label)


def stage_sums(merged: nn.Module | None, sources: Sequence[Source], names: Sequence[str],
               infos: dict, *, calls: dict[str, int] | None = None, tangents: bool = False,
               forward=default_forward, backend: str = "auto",
               frames: int | None = None, targets: bool = True,
               structured: bool = True, cross: str = "auto") -> list[dict[str, LayerSums]]:
    """Per source, the :class:`LayerSums` of the named layers.

    Inputs come from ``merged`` (progressive) or, when ``merged`` is None, from each source
    itself (one-shot: inputs and targets from one pass, the cached targets unused).
    ``frames`` uses only the first batches of each source up to that many graphs (a
    reduced budget for hyperparameter search). ``targets=False`` records the
    inputs only (Grams and row counts; the cross sums stay zero) and never runs the
    sources: for solves whose right-hand side comes from the sources' weights.
    ``structured`` forms the value sums of layers that describe their parts without their
    per-edge rows (module docstring); ``False`` is the dense reference.
    ``cross`` (one-shot only, :data:`CROSS_ROUTES`): ``"auto"`` derives the target sums of
    every layer :func:`derives_targets` accepts from its Grams and weights after the passes
    (module docstring), ``"measured"`` forms them from the recorded outputs (the
    reference); each :class:`LayerSums` records its ``route``.
    """
    if cross not in CROSS_ROUTES:
        raise ValueError(f"cross must be one of {', '.join(map(repr, CROSS_ROUTES))}, got "
                         f"{cross!r}")
    if not targets and tangents:
        raise ValueError("tangent rows need the sources' targets: use targets=True")
    out = []
    for src in sources:
        inp_model = merged if merged is not None else src.model
        # The sums live where the inputs are formed (a CUDA model: CUDA accumulators).
        device = model_device(inp_model)
        sums = {n: LayerSums.empty(infos[n].in_features, infos[n].out_features, tangents,
                                   device) for n in names}
        inp_model.eval()
        one_shot = merged is None and targets
        derived = frozenset()
        if one_shot and cross == "auto":
            modules = dict(src.model.named_modules())
            derived = frozenset(n for n in names if derives_targets(modules[n]))
        graphs = 0
        for i, batch in enumerate(src.batches):
            if frames is not None and graphs >= frames:
                break
            graphs += batch_entries(batch)
            for d, u in enumerate(src.dirs[i] if tangents else [None]):
                _pass_sums(sums, inp_model, src, i, d, u, names, one_shot=one_shot,
                           targets=targets, tangents=tangents, calls=calls,
                           forward=forward, structured=structured, backend=backend,
                           derived=derived)
        for n in derived:
            derive_targets(sums[n], modules[n])
        for n in names:
            g = sums[n].gram.diagonal().sum()
            t = sums[n].tgram.diagonal().sum() if tangents else g.new_zeros(())
            if not (torch.isfinite(g) and torch.isfinite(t)):
                raise NonFiniteActivationError(
                    f"layer '{n}' received NaN/Inf inputs on the frames of {src.label}; "
                    "check those frames and that the models' weights are finite")
        out.append(sums)
    return out


def refit_reference_energies(merged: nn.Module, sources: Sequence[Source], *,
                             frames: int | None = None) -> dict[int, float]:
    """Shift ``merged.atomic_energies`` per element so that the merged energies match each
    source's energies on its own frames (pooled least squares on the element counts; the
    minimum-norm shift when compositions are collinear). A per-element constant changes
    no force. Returns the shifts in eV by atomic number (empty for models without
    ``atomic_energies``)."""
    ref = getattr(merged, "atomic_energies", None)
    if not isinstance(ref, Tensor):
        return {}
    rows, rhs = [], []
    with torch.no_grad():
        for src in sources:
            graphs = 0
            for batch in src.batches:
                if frames is not None and graphs >= frames:
                    break
                graphs += batch.num_graphs
                diff = (energy_forward(src.model, batch) - energy_forward(merged, batch))
                counts = torch.zeros(batch.num_graphs, ref.shape[0], dtype=torch.float64,
                                     device=ref.device)
                counts.index_put_((batch.batch.to(ref.device), batch.z.to(ref.device)),
                                  torch.ones(batch.num_atoms, dtype=torch.float64,
                                             device=ref.device), accumulate=True)
                rows.append(counts)
                rhs.append(diff.to(ref.device, torch.float64))
    A, y = torch.cat(rows), torch.cat(rhs)
    present = (A.sum(0) > 0).nonzero().flatten()
    A = A[:, present]
    delta = torch.linalg.pinv(A) @ y
    with torch.no_grad():
        ref[present] += delta.to(ref.dtype)
    return {int(z): float(d) for z, d in zip(present.tolist(), delta.tolist())}
