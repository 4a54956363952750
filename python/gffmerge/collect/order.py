"""The order in which a forward pass calls a model's linear layers, and which feed which.

A progressive merge solves layers so that every layer's inputs come from layers that are
already merged. Two facts about the model decide that order:

* **call order**: the order in which one forward pass first calls each ``nn.Linear``
  (recorded with forward pre-hooks). It is *not* the registration order of
  ``named_modules``: PaiNN registers all message blocks before all update blocks but
  calls them interleaved.
* **feeds**: layer ``a`` feeds layer ``b`` when perturbing ``a``'s output changes
  ``b``'s input (one forward per layer on one batch, outputs perturbed by Gaussian noise of
  10 % of their scale). This is the transitive data dependency, found without reading the
  model's code, so branches, skips and gates are handled alike.

**Stage rule.** A layer's stage is 0 when no other layer feeds it, else one more than the
largest stage of the layers that feed it (longest-path layering). Layers of one stage do
not feed one another, and everything that feeds a stage is solved in earlier stages, so a
progressive merge solves a stage at once from one forward pass of the merged-so-far model
per source, and the result equals solving the layers one by one in call order. The number
of stages is the length of the longest dependency chain, the fewest any valid order needs.

A dependency against call order (a layer called again later, e.g. weights shared between
blocks) cannot be honoured by any order; it is ignored and listed in ``LayerOrder.back``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..architecture import LinearInfo, first_calls, linear_layers
from ..models.groups import linear_units
from ..models.parts import input_reader
from .batches import default_forward

Forward = Callable[[nn.Module, Any], Any]

# Perturbation of a layer's output, relative to the output's standard deviation.
PERTURBATION = 0.1
# A layer input counts as changed when it moved by more than this times its largest entry
# (float32 rounding is ~1e-7; a real dependency moves it by orders of magnitude more) and
# more than 10× the run-to-run noise of an unperturbed forward (non-deterministic kernels).
CHANGE_TOLERANCE = 1e-5


def is_affine_norm(module: nn.Module) -> bool:
    """A ``LayerNorm`` over the last axis with a learnable scale: after normalising, it is
    a per-feature linear map ``γ ⊙ n + β`` that a merge can fit like a diagonal layer."""
    return (isinstance(module, nn.LayerNorm) and module.weight is not None
            and len(module.normalized_shape) == 1)


def mergeable_layers(model: nn.Module, layers: Iterable[str] | None = None, *,
                     norms: bool = False) -> dict[str, LinearInfo]:
    """The model's ``nn.Linear`` layers (see :func:`~gffmerge.architecture.linear_layers`)
    and, with ``norms``, its affine LayerNorms as ``d → d`` diagonal layers, in module
    order."""
    infos = linear_layers(model, layers)
    if not norms:
        return infos
    out = {}
    for name, module in model.named_modules():
        if name in infos:
            out[name] = infos[name]
        elif is_affine_norm(module) and (layers is None or name in set(layers)):
            d = module.normalized_shape[0]
            out[name] = LinearInfo(name, d, d, module.bias is not None)
    return out


def layer_input(module: nn.Module, args: tuple, kwargs: dict) -> Tensor:
    """The rows a linear layer multiplies, ``[R, in_features]``.

    Layers that take their input in parts (``dense_input``, e.g.
    :class:`~gffmerge.models.layers.EdgeConcatLinear`) are asked for the explicit matrix;
    leading dimensions (atoms, edges, vector components) are flattened into rows. For an
    affine LayerNorm the rows are the normalised input (before ``γ``, ``β``).
    """
    if is_affine_norm(module):
        x = args[0] if args else kwargs["input"]
        n = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        return n.reshape(-1, module.normalized_shape[0])
    return input_reader(module)(args, kwargs).reshape(-1, module.in_features)


def layer_width(module: nn.Module) -> int:
    """Output features of a linear layer or affine LayerNorm."""
    return module.normalized_shape[0] if is_affine_norm(module) else module.out_features


@dataclass(frozen=True)
class LayerOrder:
    """Call order, dependencies and stages of a model's linear layers."""

    order: tuple[str, ...]  # first-call order of the layers the forward reached
    calls: dict[str, int]  # calls of each layer in one forward
    feeds: dict[str, frozenset[str]]  # layer -> layers whose inputs it changes
    stages: tuple[tuple[str, ...], ...]  # longest-path layering, call order within a stage
    unreached: tuple[str, ...] = ()  # linear layers the forward never called
    back: tuple[tuple[str, str], ...] = field(default=())  # ignored (a, b): b before a

    def stage_of(self, name: str) -> int:
        for i, stage in enumerate(self.stages):
            if name in stage:
                return i
        raise KeyError(f"layer '{name}' is in no stage; layers: {', '.join(self.order[:8])}")

    def describe(self) -> str:
        """One line per stage: ``stage i: a, b, c``."""
        return "\n".join(f"stage {i}: {', '.join(s)}" for i, s in enumerate(self.stages))


def call_order(model: nn.Module, batch: Any, *, forward: Forward | None = None,
               layers: Iterable[str] | None = None, norms: bool = False
               ) -> tuple[list[str], dict[str, int]]:
    """Names of ``model``'s linear layers (and affine LayerNorms with ``norms``) in the order
    one forward first calls them, and how often each is called. Layers never called are
    left out."""
    forward = forward or default_forward
    names = mergeable_layers(model, layers, norms=norms)
    return first_calls(model, names, lambda: forward(model, batch))


def _disturb(module: nn.Module, gen: torch.Generator | None):
    """A hook adding Gaussian noise of :data:`PERTURBATION` × the output's std to
    ``module``'s output (drawn from ``gen``); returns its handle."""
    def disturb(module, args, output):
        scale = output.detach().std().clamp_min(1e-6) if output.numel() > 1 else 1.0
        # drawn on the CPU (the same noise on every device), then moved to the output's
        noise = torch.randn(output.shape, generator=gen, dtype=torch.float64)
        return output + (PERTURBATION * scale * noise.to(output.device)).to(output.dtype)
    return module.register_forward_hook(disturb)


def _inputs(model: nn.Module, batch: Any, names: list[str], forward: Forward,
            perturb: str | None = None, gen: torch.Generator | None = None
            ) -> dict[str, Tensor]:
    """Every call's input to each named layer (float64, concatenated), optionally with
    ``perturb``'s output disturbed."""
    seen: dict[str, list[Tensor]] = {n: [] for n in names}

    def see(n: str, x: Tensor) -> None:
        seen[n].append(x.to(torch.float64).flatten())

    _run_seeing(model, batch, names, forward, see, perturb, gen)
    return {n: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64)
            for n, v in seen.items()}


def _run_seeing(model: nn.Module, batch: Any, names: list[str], forward: Forward,
                see: Callable[[str, Tensor], None], perturb: str | None,
                gen: torch.Generator | None) -> None:
    """One ``no_grad`` forward calling ``see(name, input)`` on every call of each named
    layer (``input`` detached), with ``perturb``'s output disturbed if given."""
    modules = dict(model.named_modules())
    handles = []
    for n in names:
        def hook(module, args, kwargs, output, n=n):
            see(n, layer_input(module, args, kwargs).detach())
        handles.append(modules[n].register_forward_hook(hook, with_kwargs=True))
    if perturb is not None:
        handles.append(_disturb(modules[perturb], gen))
    try:
        with torch.no_grad():
            forward(model, batch)
    finally:
        for h in handles:
            h.remove()


def _moved(model: nn.Module, batch: Any, names: list[str], forward: Forward,
           base: dict[str, Tensor], perturb: str, gen: torch.Generator
           ) -> dict[str, float | None]:
    """With ``perturb``'s output disturbed, how far each named layer's inputs moved from
    ``base`` (:func:`_inputs` unperturbed): ``max |x - base|`` in float64, compared call by
    call inside the hooks (no copies kept), or None when the layer saw another number of
    input entries. The same number as ``(_inputs(...) - base).abs().max()``."""
    end = dict.fromkeys(names, 0)
    moved: dict[str, float | None] = dict.fromkeys(names, 0.0)

    def see(n: str, x: Tensor) -> None:
        x = x.flatten()
        s, end[n] = end[n], end[n] + x.numel()
        if moved[n] is None or end[n] > base[n].numel():
            moved[n] = None
        elif x.numel():  # promoted to float64 before the difference, as in _inputs
            moved[n] = max(moved[n], torch.sub(x, base[n][s:end[n]]).abs_().max().item())

    _run_seeing(model, batch, names, forward, see, perturb, gen)
    return {n: None if end[n] != base[n].numel() else v for n, v in moved.items()}


def dependencies(model: nn.Module, batch: Any, names: list[str], *,
                 forward: Forward | None = None, seed: int = 0) -> dict[str, frozenset[str]]:
    """For each named layer, the layers whose inputs change when its output is perturbed.

    ``len(names) + 2`` forward passes on ``batch`` (two unperturbed to measure the noise
    floor of non-deterministic kernels); the perturbed passes compare with the first one
    inside their hooks (:func:`_moved`) instead of keeping float64 copies of every input.
    """
    forward = forward or default_forward
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        base = _inputs(model, batch, names, forward)
        again = _inputs(model, batch, names, forward)
        tol = {n: max(10 * (base[n] - again[n]).abs().max().item() if base[n].numel() else 0.0,
                      CHANGE_TOLERANCE * (base[n].abs().max().item() if base[n].numel() else 0.0))
               for n in names}
        feeds: dict[str, frozenset[str]] = {}
        for a in names:
            moved = _moved(model, batch, names, forward, base, a, gen)
            feeds[a] = frozenset(b for b in names if b != a and moved[b] is not None
                                 and moved[b] > tol[b])
    finally:
        model.train(was_training)
    return feeds


def stages_from(order: list[str], feeds: dict[str, frozenset[str]]
                ) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, str], ...]]:
    """Longest-path layering of ``order`` under ``feeds`` (see the module docstring).

    Returns the stages and the dependencies that point against call order (ignored).
    """
    position = {n: i for i, n in enumerate(order)}
    back = tuple(sorted((a, b) for a in order for b in feeds.get(a, ())
                        if b in position and position[b] < position[a]))
    level: dict[str, int] = {}
    for b in order:  # call order is a topological order once back edges are dropped
        parents = [a for a in order[:position[b]] if b in feeds.get(a, ())]
        level[b] = 1 + max((level[a] for a in parents), default=-1)
    n_stages = 1 + max(level.values(), default=-1)
    stages = tuple(tuple(n for n in order if level[n] == s) for s in range(n_stages))
    return stages, back


def layer_order(model: nn.Module, batch: Any, *, forward: Forward | None = None,
                layers: Iterable[str] | None = None, seed: int = 0,
                norms: bool = False) -> LayerOrder:
    """Call order, dependencies and stages of ``model``'s linear layers on ``batch``.

    ``batch`` should be a typical batch of the data the merge will use (a layer whose input
    is identically zero on it cannot show a dependency). Costs ``layers + 3`` forwards.
    """
    forward = forward or default_forward
    order, calls = call_order(model, batch, forward=forward, layers=layers, norms=norms)
    if not order:
        modules = dict(model.named_modules())
        units = [n for n in linear_units(model, layers) if n not in modules]
        if units:
            raise ValueError(f"{type(model).__name__}'s linear layers are grouped or foreign "
                             f"units ({', '.join(units[:3])}{', ...' if len(units) > 3 else ''}"
                             "; e.g. PyG convolutions), which the layer-by-layer methods "
                             "(progressive, regmean_pp) do not order yet: merge it with "
                             "method='gffmerge' (or regmean, average, ties)")
        raise ValueError(f"the forward of {type(model).__name__} called none of its nn.Linear "
                         "layers on this batch; check the batch and the forward function")
    feeds = dependencies(model, batch, order, forward=forward, seed=seed)
    stages, back = stages_from(order, feeds)
    unreached = tuple(n for n in mergeable_layers(model, layers, norms=norms)
                      if n not in calls)
    return LayerOrder(tuple(order), calls, feeds, stages, unreached, back)
