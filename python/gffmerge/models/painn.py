"""PaiNN (Schütt, Unke, Gastegger, ICML 2021): polarizable atom interaction network.

Atoms carry invariant scalars ``s [N, F]`` and equivariant vectors ``v [N, 3, F]``.
The message block mixes neighbours through a filter on ``sin(n pi r / r_c) / r``
radial features times a cosine cutoff; the update block mixes the feature channels of
the vectors with bias-free ``nn.Linear`` maps ``U`` and ``V``, applied directly to the
rank-3 ``[N, 3, F]`` tensors (acting on the last axis keeps them equivariant, and the
merge flattens such inputs to ``N * 3`` rows). Forces are ``-dE/dpos``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gffmerge.data.batch import AtomsBatch

from .base import MAX_Z, ForceField
from .layers import CosineCutoff, SineRBF, mlp
from .registry import register_model

# Added under the square root of |V v|: its gradient is infinite at v = 0, which is
# where every vector feature starts.
_NORM_EPS = 1e-8


class PaiNNMessage(nn.Module):
    """``ds_i = sum_j x^s_ij``, ``dv_i = sum_j x^vv_ij v_j + x^vs_ij u_ij``."""

    def __init__(self, n_features: int, n_rbf: int):
        super().__init__()
        self.n_features = n_features
        self.phi = mlp([n_features, n_features, 3 * n_features], nn.SiLU)
        self.filter = nn.Linear(n_rbf, 3 * n_features)  # edge-level

    def forward(self, s: Tensor, v: Tensor, rbf: Tensor, fc: Tensor, unit: Tensor,
                edge_index: Tensor) -> tuple[Tensor, Tensor]:
        sender, receiver = edge_index
        x = self.phi(s).index_select(0, sender) * (self.filter(rbf) * fc.unsqueeze(-1))
        x_vv, x_s, x_vs = x.split(self.n_features, dim=-1)
        dv = x_vv.unsqueeze(1) * v.index_select(0, sender) + x_vs.unsqueeze(1) * unit.unsqueeze(-1)
        ds = torch.zeros_like(s).index_add_(0, receiver, x_s)
        dv = torch.zeros_like(v).index_add_(0, receiver, dv)
        return s + ds, v + dv


class PaiNNUpdate(nn.Module):
    """``dv = a_vv U v``, ``ds = a_sv <U v, V v> + a_ss`` with ``a = MLP([s, |V v|])``."""

    def __init__(self, n_features: int):
        super().__init__()
        self.n_features = n_features
        self.U = nn.Linear(n_features, n_features, bias=False)  # rank-3 input [N, 3, F]
        self.V = nn.Linear(n_features, n_features, bias=False)  # rank-3 input [N, 3, F]
        self.mlp = mlp([2 * n_features, n_features, 3 * n_features], nn.SiLU)

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        uv, vv = self.U(v), self.V(v)
        vv_norm = torch.sqrt(vv.square().sum(dim=1) + _NORM_EPS)
        a_vv, a_sv, a_ss = self.mlp(torch.cat([s, vv_norm], dim=-1)).split(self.n_features, -1)
        ds = a_sv * (uv * vv).sum(dim=1) + a_ss
        return s + ds, v + a_vv.unsqueeze(1) * uv


@register_model
class PaiNN(ForceField):
    """PaiNN with conservative forces.

    Config: ``n_features`` (64), ``n_interactions`` (3), ``n_rbf`` (20),
    ``cutoff`` (5.0 Å), ``max_z`` (118).
    """

    name = "painn"
    conservative = True

    def __init__(self, n_features: int = 64, n_interactions: int = 3, n_rbf: int = 20,
                 cutoff: float = 5.0, max_z: int = MAX_Z):
        super().__init__(cutoff=cutoff, max_z=max_z)
        self.config = dict(n_features=n_features, n_interactions=n_interactions, n_rbf=n_rbf,
                           cutoff=float(cutoff), max_z=max_z)
        self.n_features = n_features
        self.embedding = nn.Embedding(max_z + 1, n_features)
        self.rbf = SineRBF(n_rbf, cutoff)
        self.cutoff_fn = CosineCutoff(cutoff)
        self.messages = nn.ModuleList(PaiNNMessage(n_features, n_rbf)
                                      for _ in range(n_interactions))
        self.updates = nn.ModuleList(PaiNNUpdate(n_features) for _ in range(n_interactions))
        self.readout = mlp([n_features, n_features // 2, 1], nn.SiLU)

    def atomwise(self, batch: AtomsBatch, direct_forces: bool) -> tuple[Tensor, None]:
        vec = batch.edge_vectors()
        r = vec.norm(dim=-1)
        unit = vec / r.unsqueeze(-1)
        rbf, fc = self.rbf(r), self.cutoff_fn(r)
        s = self.embedding(batch.z)
        v = s.new_zeros(s.shape[0], 3, self.n_features)
        for message, update in zip(self.messages, self.updates, strict=True):
            s, v = message(s, v, rbf, fc, unit, batch.edge_index)
            s, v = update(s, v)
        return self.readout(s).squeeze(-1), None
