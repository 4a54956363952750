"""Forward-mode tangents of layer inputs and outputs along atomic displacements.

For a conservative force field (forces = −∂E/∂r) the forces are derivatives of the
energy path, so a merged layer should reproduce the sources' layer outputs *and* their
derivatives with respect to the positions. Displacing all positions along a direction
``u`` (one per frame), forward-mode AD gives for every layer its input ``x`` and the
tangent ``ẋ = ∂x/∂r · u`` in the same pass; a linear layer maps ``ẋ`` to ``W ẋ`` (the bias
drops out), so tangent rows enter the normal equations with a 0 in the bias column.

Directions: ``"random"`` draws a Gaussian ``[N_frame, 3]`` per frame, normalised to unit
length over the frame (seeded per source and batch, so every pass over a batch uses the
same directions); ``"force"`` uses the frame's reference forces, normalised the same way
(a frame with zero forces falls back to a random direction).
"""

from __future__ import annotations

import operator
from dataclasses import replace

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .batches import default_forward

DIRECTIONS = ("random", "force")


def is_conservative(model: nn.Module) -> bool:
    """Whether ``model``'s forces are −∂E/∂r (the ``conservative`` flag of
    :class:`~gffmerge.models.base.ForceField`; models without it are treated as direct)."""
    return bool(getattr(model, "conservative", False))


def _per_frame_unit(v: Tensor, graph: Tensor, num_graphs: int) -> Tensor:
    sq = v.new_zeros(num_graphs).index_add_(0, graph, v.square().sum(1))
    return v / sq.sqrt().clamp_min(1e-30).index_select(0, graph).unsqueeze(-1)


def directions(batch, kind: str = "random", *, seed: int = 0) -> Tensor:
    """``[N, 3]`` displacement directions of unit length per frame (see module docstring),
    in the dtype and on the device of ``batch.pos``."""
    if kind not in DIRECTIONS:
        raise ValueError(f"directions must be one of {DIRECTIONS}, got {kind!r}")
    gen = torch.Generator().manual_seed(int(seed))
    pos = batch.pos
    u = torch.randn(pos.shape, generator=gen, dtype=torch.float64)
    if kind == "force":
        if batch.forces is None:
            raise ValueError("directions='force' needs reference forces in the batches; "
                             "use directions='random' for unlabelled data")
        f = batch.forces.detach().to("cpu", torch.float64)
        norm = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(
            0, batch.batch.cpu(), f.square().sum(1))
        has = (norm > 0).index_select(0, batch.batch.cpu()).unsqueeze(-1)
        u = torch.where(has, f, u)
    u = _per_frame_unit(u, batch.batch.cpu(), batch.num_graphs)
    return u.to(device=pos.device, dtype=pos.dtype)


def energy_forward(model: nn.Module, batch) -> Tensor:
    """The energy path of a force field (no force computation): ``model(batch,
    compute_forces=False)["energy"]``."""
    return model(batch, compute_forces=False)["energy"]


class _LinearTangent(torch.autograd.Function):
    """``F.linear(x, W, b)`` whose tangent is ``ẋ Wᵀ`` alone. Autograd's rule for a dual
    ``x`` and plain ``W, b`` also forms the zero tangents of ``W`` and ``b`` (a product
    with zeros and a broadcast bias copy), ~2.5× the primal's time instead of ~1×; this
    one makes the same ``ẋ Wᵀ`` product, so the tangent is the same to the bit (test)."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.weight = inputs[1]

    @staticmethod
    def jvp(ctx, x_t: Tensor, weight_t, bias_t) -> Tensor:
        return x_t.matmul(ctx.weight.t())


def _plain(t) -> bool:
    return t is None or fwad.unpack_dual(t).tangent is None


def _dual_parts(t) -> tuple[object, Tensor | None]:
    """``(primal, tangent or None)`` of an operand (a number is its own primal)."""
    if isinstance(t, Tensor):
        primal, tangent = fwad.unpack_dual(t)
        return primal, tangent
    return t, None


# Binary elementwise ops with an operand that may be a plain tensor or a number: the
# operator giving the primal from the two primals (the same kernel as the original call).
_BINARY = {
    torch.mul: operator.mul, Tensor.mul: operator.mul, Tensor.__mul__: operator.mul,
    Tensor.__rmul__: operator.mul,
    torch.add: operator.add, Tensor.add: operator.add, Tensor.__add__: operator.add,
    Tensor.__radd__: operator.add,
    torch.sub: operator.sub, Tensor.sub: operator.sub, Tensor.__sub__: operator.sub,
    torch.div: operator.truediv, Tensor.div: operator.truediv,
    Tensor.__truediv__: operator.truediv, Tensor.__div__: operator.truediv,
}
# ``Tensor.__rsub__(a, b)`` is ``b - a``; ``__rtruediv__`` is left to autograd (a plain
# numerator over a dual denominator is not linear in the tangent).
_SWAPPED = {Tensor.__rsub__: operator.sub}


def _binary_plain(func, args: tuple) -> Tensor | None:
    """``a ∘ b`` for ``∘ ∈ {+, −, ×, ÷}`` with exactly one dual operand, its tangent taken
    directly: ``±ṫ`` for a sum or difference, ``ṫ · b`` for a product, ``ṫ / b`` for a
    quotient by a plain ``b``. Autograd's rule forms the other operand's zero tangent as a
    ``ZeroTensor`` and runs it through its (slow, decomposed) rule: 5-16× the primal's
    time on ``[E, F]`` rows instead of ~1×. The tangent is the same product or copy, so
    the same to the bit (test). None when the rule does not apply."""
    op = _BINARY.get(func)
    if op is None:
        op = _SWAPPED.get(func)
        if op is None or len(args) != 2:
            return None
        args = (args[1], args[0])
    elif len(args) != 2:
        return None
    (pa, ta), (pb, tb) = _dual_parts(args[0]), _dual_parts(args[1])
    if (ta is None) == (tb is None):
        return None  # both plain or both dual: autograd's rule
    out = op(pa, pb)
    if op is operator.mul:
        tangent = ta * pb if tb is None else pa * tb
    elif op is operator.truediv:
        if ta is None:
            return None
        tangent = ta / pb
    else:
        tangent = torch.empty_like(out).copy_(ta if tb is None else tb)
        if op is operator.sub and ta is None:
            tangent.neg_()
    return fwad.make_dual(out, tangent)


def _layer_norm_plain(args: tuple, kwargs: dict) -> Tensor | None:
    """``F.layer_norm`` of a dual input with plain affine weights: the primal from the
    primal input (the same call), the tangent from autograd's rule without the affine
    part, times the weight. Autograd's rule with plain weights forms their zero tangents
    (``ZeroTensor`` products and sums) on top of the same ``(ṫ − mean ṫ) σ⁻¹ + …`` times
    the weight; without them it is the same values to the bit (test). None when the rule
    does not apply."""
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    call = dict(zip(names, args)) | kwargs
    x, weight, bias = call.get("input"), call.get("weight"), call.get("bias")
    if (weight is None and bias is None) or _plain(x) or not (_plain(weight) and _plain(bias)):
        return None
    shape, eps = call["normalized_shape"], call.get("eps", 1e-5)
    out = F.layer_norm(fwad.unpack_dual(x).primal, shape, weight, bias, eps)
    tangent = fwad.unpack_dual(F.layer_norm(x, shape, None, None, eps)).tangent
    if weight is not None:
        tangent = tangent * weight
    return fwad.make_dual(out, tangent)


class _TangentRules(TorchFunctionMode):
    """Direct tangent rules for the calls whose autograd rule does needless work (no grad
    mode only): ``F.linear`` with a dual input and plain weights through
    :class:`_LinearTangent`, ``+ − × ÷`` with one plain operand through
    :func:`_binary_plain`, ``F.layer_norm`` with plain affine weights through
    :func:`_layer_norm_plain`; every other call runs as it is. ``elementwise=False``
    keeps autograd's rules for the latter two (a reference for tests and benchmarks)."""

    def __init__(self, elementwise: bool = True):
        super().__init__()
        self.elementwise = elementwise

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_grad_enabled():
            return func(*args, **kwargs)
        if func is F.linear:
            x, weight, *rest = args
            bias = rest[0] if rest else kwargs.get("bias")
            if not _plain(x) and _plain(weight) and _plain(bias):
                return _LinearTangent.apply(x, weight, bias)
        elif func is F.layer_norm and self.elementwise:
            out = _layer_norm_plain(args, kwargs)
            if out is not None:
                return out
        elif self.elementwise and not kwargs:
            out = _binary_plain(func, args)
            if out is not None:
                return out
        return func(*args, **kwargs)


def run_with_tangent(model: nn.Module, batch, u: Tensor, forward=None) -> None:
    """Run ``forward(model, batch)`` with positions dual along ``u`` (default: the
    measuring forward, i.e. the energy path of a conservative model, the full forward with
    the direct force head otherwise).

    Hooks on the model's layers see dual tensors; :func:`split_dual` takes them apart.
    Must be called inside ``torch.autograd.forward_ad.dual_level()``. Linear maps take
    the tangent ``ẋ Wᵀ`` directly (:class:`_LinearTangent`) and sums, differences,
    products and quotients with one plain operand theirs (:func:`_binary_plain`), the
    same values.
    """
    pos = fwad.make_dual(batch.pos.detach(), u.to(batch.pos.dtype))
    with _TangentRules():
        (forward or default_forward)(model, replace(batch, pos=pos))


def split_dual(t: Tensor) -> tuple[Tensor, Tensor]:
    """``(primal, tangent)`` of a tensor seen inside a dual level; the tangent is zeros when
    the tensor does not depend on the positions."""
    primal, tangent = fwad.unpack_dual(t)
    if tangent is None:
        tangent = torch.zeros_like(primal)
    return primal.detach(), tangent.detach()
