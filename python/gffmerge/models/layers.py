"""Building blocks shared by the force-field models.

Every learnable linear map is an ``nn.Linear`` (or a subclass), so the closed-form
merge sees it; radial bases and cutoffs have no parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .parts import Dense, Gathered, GramInput


class ShiftedSoftplus(nn.Module):
    """``softplus(x) - log 2``: SchNet's activation, zero at the origin."""

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x) - math.log(2.0)


class CosineCutoff(nn.Module):
    """``0.5 (cos(pi r / r_c) + 1)`` for ``r < r_c``, else 0.

    Continuous with a continuous first derivative at ``r_c``, so energies stay smooth
    when a neighbour crosses the cutoff and edges beyond it contribute nothing.
    """

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: Tensor) -> Tensor:
        fc = 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0)
        return fc * (r < self.cutoff).to(r.dtype)


class GaussianRBF(nn.Module):
    """``exp(-(r - mu_k)^2 / (2 sigma^2))`` with ``n_rbf`` centres evenly on ``[0, r_c]``.

    ``sigma`` is the spacing of the centres. The centres are a non-persistent buffer:
    they follow from the config and stay out of the state dict.
    """

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        if n_rbf < 2:
            raise ValueError(f"n_rbf must be at least 2, got {n_rbf}")
        self.n_rbf = int(n_rbf)
        self.cutoff = float(cutoff)
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_rbf), persistent=False)
        self.coeff = -0.5 / (cutoff / (n_rbf - 1)) ** 2

    def forward(self, r: Tensor) -> Tensor:
        """[E] distances in Å -> [E, n_rbf]."""
        return torch.exp(self.coeff * (r.unsqueeze(-1) - self.centers) ** 2)


class SineRBF(nn.Module):
    """PaiNN's radial basis ``sin(n pi r / r_c) / r`` for ``n = 1 .. n_rbf``."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        self.n_rbf = int(n_rbf)
        self.cutoff = float(cutoff)
        freqs = torch.arange(1, n_rbf + 1, dtype=torch.float32) * (math.pi / cutoff)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, r: Tensor) -> Tensor:
        """[E] distances in Å (> 0) -> [E, n_rbf]."""
        r = r.unsqueeze(-1)
        return torch.sin(self.freqs * r) / r


def mlp(dims: list[int], activation: type[nn.Module], layer_norm: bool = False,
        in_sizes: Sequence[int] | None = None) -> nn.Sequential:
    """``Linear -> act -> ... -> Linear`` through ``dims``, optionally ending in LayerNorm.

    With ``in_sizes`` (summing to ``dims[0]``) the first layer is a :class:`ConcatLinear`
    and the MLP is a :class:`PartsSequential` called with the parts, ``mlp(h, m1, m2)``;
    parameter names and initialisation are those of the plain MLP.
    """
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if i > 0:
            layers.append(activation())
        if i == 0 and in_sizes is not None:
            if sum(in_sizes) != d_in:
                raise ValueError(f"in_sizes {list(in_sizes)} sum to {sum(in_sizes)}, "
                                 f"not dims[0]={d_in}")
            layers.append(ConcatLinear(in_sizes, d_out))
        else:
            layers.append(nn.Linear(d_in, d_out))
    if layer_norm:
        layers.append(nn.LayerNorm(dims[-1]))
    return PartsSequential(*layers) if in_sizes is not None else nn.Sequential(*layers)


class PartsSequential(nn.Sequential):
    """``nn.Sequential`` whose first module takes several inputs (a :class:`ConcatLinear`'s
    parts); the rest are chained as usual. State-dict keys are those of ``nn.Sequential``."""

    def forward(self, *parts: Tensor) -> Tensor:
        modules = iter(self)
        x = next(modules)(*parts)
        for module in modules:
            x = module(x)
        return x


class ConcatLinear(nn.Linear):
    """``nn.Linear`` on ``torch.cat(parts, -1)`` without building the concatenation.

    The weight is the ``[out_features, sum(in_sizes)]`` matrix of ``nn.Linear`` on the
    concatenation (columns in part order, same initialisation, same state-dict keys), so
    a checkpoint of ``nn.Linear(sum(in_sizes), out)`` loads into it. The forward is
    ``b + Σ_k parts[k] W_kᵀ``. For the merge, :meth:`gram_parts` describes the input as
    dense parts (node-level rows: the Gram is formed from them without a concatenated
    copy) and :meth:`dense_input` builds the concatenation for the dense hook.
    """

    def __init__(self, in_sizes: Sequence[int], out_features: int, bias: bool = True,
                 device=None, dtype=None):
        in_sizes = tuple(int(s) for s in in_sizes)
        if not in_sizes or min(in_sizes) <= 0:
            raise ValueError(f"in_sizes must be positive widths, got {list(in_sizes)}")
        super().__init__(sum(in_sizes), out_features, bias=bias, device=device, dtype=dtype)
        self.in_sizes = in_sizes

    def weight_blocks(self) -> tuple[Tensor, ...]:
        """Views ``W_k [out, in_sizes[k]]``, one per part."""
        return tuple(self.weight.split(self.in_sizes, dim=1))

    def _check(self, parts: tuple[Tensor, ...]) -> None:
        if len(parts) != len(self.in_sizes):
            raise ValueError(f"ConcatLinear expects {len(self.in_sizes)} parts "
                             f"(widths {list(self.in_sizes)}), got {len(parts)}")
        lead = parts[0].shape[:-1]
        for k, (p, w) in enumerate(zip(parts, self.in_sizes, strict=True)):
            if p.dim() == 0 or p.shape[-1] != w or p.shape[:-1] != lead:
                raise ValueError(f"part {k} must have shape [{', '.join(map(str, lead))}"
                                 f"{', ' if len(lead) else ''}{w}], got {tuple(p.shape)}")

    def forward(self, *parts: Tensor) -> Tensor:
        """``parts[k] [..., in_sizes[k]]`` (same leading shape) -> ``[..., out_features]``."""
        self._check(parts)
        blocks = self.weight_blocks()
        out = F.linear(parts[0], blocks[0], self.bias)
        for p, w in zip(parts[1:], blocks[1:], strict=True):
            out = out + F.linear(p, w)
        return out

    def gram_parts(self, *parts: Tensor) -> GramInput:
        """The input as dense parts, for the structured Gram provider."""
        self._check(parts)
        return GramInput(tuple(Dense(p) for p in parts))

    def dense_input(self, *parts: Tensor) -> Tensor:
        """The explicit input ``torch.cat(parts, -1)``."""
        self._check(parts)
        return torch.cat(parts, dim=-1)

    def extra_repr(self) -> str:
        return (f"in_sizes={list(self.in_sizes)}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class _EdgeArgs(NamedTuple):
    """The arguments of :meth:`EdgeConcatLinear.forward`, validated, gates as ``[E, 1]``."""

    edge_attr: Tensor  # [E, edge_dim]
    node_feats: Tensor  # [N, node_dim]
    sender: Tensor  # [E] int64
    receiver: Tensor  # [E] int64
    sender_gate: Tensor | None  # [E, 1] or None
    receiver_gate: Tensor | None  # [E, 1] or None


def _as_gate(gate: Tensor | None, num_edges: int, name: str) -> Tensor | None:
    if gate is None:
        return None
    if gate.dim() == 1:
        gate = gate.unsqueeze(-1)
    if gate.shape != (num_edges, 1):
        raise ValueError(f"{name} must have shape [E] or [E, 1] with E={num_edges}, "
                         f"got {tuple(gate.shape)}")
    return gate


class EdgeConcatLinear(nn.Linear):
    """``nn.Linear`` on ``[e, g_s * h[sender], g_r * h[receiver]]`` without the concat.

    The weight is an ordinary ``[out_features, edge_dim + 2 * node_dim]`` matrix whose
    columns are laid out ``[edge | sender | receiver]``, exactly as for ``nn.Linear``
    applied to ``torch.cat([e, h[sender], h[receiver]], -1)``; initialisation is
    ``nn.Linear``'s for that fan-in. The forward projects the node features once per
    node and gathers the projections per edge::

        y = e W_eᵀ + g_s * (H W_sᵀ)[sender] + g_r * (H W_rᵀ)[receiver] + b

    which avoids the [E, edge_dim + 2 node_dim] tensor (E is often 30-50x N).

    For the merge: :meth:`gram_parts` describes the input as ``[dense e, gathered
    g_s·h[sender], gathered g_r·h[receiver]]`` so the structured provider forms the Gram
    from node-level products and scatter sums (:mod:`gffmerge.collect.providers`);
    the dense hook calls :meth:`dense_input` instead (``measure(..., dense=True)``).
    """

    def __init__(self, edge_dim: int, node_dim: int, out_features: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__(edge_dim + 2 * node_dim, out_features, bias=bias,
                         device=device, dtype=dtype)
        self.edge_dim = int(edge_dim)
        self.node_dim = int(node_dim)

    def weight_blocks(self) -> tuple[Tensor, Tensor, Tensor]:
        """Views ``(W_e [out, edge_dim], W_s [out, node_dim], W_r [out, node_dim])``."""
        w_e, w_s, w_r = self.weight.split([self.edge_dim, self.node_dim, self.node_dim], dim=1)
        return w_e, w_s, w_r

    def input_parts(self, edge_attr: Tensor, node_feats: Tensor, edge_index: Tensor,
                    sender_gate: Tensor | None = None,
                    receiver_gate: Tensor | None = None) -> _EdgeArgs:
        """The forward's arguments, validated and normalised (gates to [E, 1])."""
        num_edges = edge_index.shape[1]
        if edge_attr.shape != (num_edges, self.edge_dim):
            raise ValueError(f"edge_attr must have shape [E={num_edges}, {self.edge_dim}], "
                             f"got {tuple(edge_attr.shape)}")
        if node_feats.dim() != 2 or node_feats.shape[1] != self.node_dim:
            raise ValueError(f"node_feats must have shape [N, {self.node_dim}], "
                             f"got {tuple(node_feats.shape)}")
        return _EdgeArgs(
            edge_attr=edge_attr,
            node_feats=node_feats,
            sender=edge_index[0],
            receiver=edge_index[1],
            sender_gate=_as_gate(sender_gate, num_edges, "sender_gate"),
            receiver_gate=_as_gate(receiver_gate, num_edges, "receiver_gate"),
        )

    def gram_parts(self, edge_attr: Tensor, node_feats: Tensor, edge_index: Tensor,
                   sender_gate: Tensor | None = None,
                   receiver_gate: Tensor | None = None) -> GramInput:
        """The input as parts for the structured Gram provider (no [E, in] tensor)."""
        p = self.input_parts(edge_attr, node_feats, edge_index, sender_gate, receiver_gate)
        return GramInput((Dense(p.edge_attr),
                          Gathered(p.node_feats, p.sender, p.sender_gate),
                          Gathered(p.node_feats, p.receiver, p.receiver_gate)))

    def dense_input(self, edge_attr: Tensor, node_feats: Tensor, edge_index: Tensor,
                    sender_gate: Tensor | None = None,
                    receiver_gate: Tensor | None = None) -> Tensor:
        """The explicit [E, in_features] input ``[e, g_s * h[sender], g_r * h[receiver]]``."""
        p = self.input_parts(edge_attr, node_feats, edge_index, sender_gate, receiver_gate)
        h_s = p.node_feats.index_select(0, p.sender)
        h_r = p.node_feats.index_select(0, p.receiver)
        if p.sender_gate is not None:
            h_s = p.sender_gate * h_s
        if p.receiver_gate is not None:
            h_r = p.receiver_gate * h_r
        return torch.cat([p.edge_attr, h_s, h_r], dim=-1)

    def forward(self, edge_attr: Tensor, node_feats: Tensor, edge_index: Tensor,
                sender_gate: Tensor | None = None,
                receiver_gate: Tensor | None = None) -> Tensor:
        """[E, edge_dim], [N, node_dim], [2, E] (sender, receiver) -> [E, out_features]."""
        p = self.input_parts(edge_attr, node_feats, edge_index, sender_gate, receiver_gate)
        w_e, w_s, w_r = self.weight_blocks()
        out = F.linear(p.edge_attr, w_e, self.bias)
        # One GEMM for both node projections: [N, 2 * out].
        proj_s, proj_r = F.linear(p.node_feats, torch.cat([w_s, w_r], dim=0)).split(
            self.out_features, dim=1)
        msg_s = proj_s.index_select(0, p.sender)
        msg_r = proj_r.index_select(0, p.receiver)
        if p.sender_gate is not None:
            msg_s = p.sender_gate * msg_s
        if p.receiver_gate is not None:
            msg_r = p.receiver_gate * msg_r
        return out + msg_s + msg_r

    def extra_repr(self) -> str:
        return (f"edge_dim={self.edge_dim}, node_dim={self.node_dim}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")
