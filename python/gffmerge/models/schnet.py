"""SchNet (Schütt et al., J. Chem. Phys. 148, 241722 (2018); NeurIPS 2017).

Continuous-filter convolutions: every interaction block updates the atom features
``x`` with ``v_i = sum_j (W_in x_j) * Wf(r_ij)``, where the filter ``Wf`` is an MLP on
Gaussian radial features times a cosine cutoff, then ``x_i += f2out(v_i)``. An atom-wise
MLP reads out per-atom energies; forces are ``-dE/dpos``.
"""

from __future__ import annotations

from torch import Tensor, nn

from gffmerge.data.batch import AtomsBatch

from .base import MAX_Z, ForceField
from .layers import CosineCutoff, GaussianRBF, ShiftedSoftplus, mlp
from .registry import register_model


class SchNetInteraction(nn.Module):
    """One interaction block: ``x -> x + f2out(cfconv(in2f(x)))``."""

    def __init__(self, n_atom_basis: int, n_filters: int, n_rbf: int):
        super().__init__()
        self.filter_net = mlp([n_rbf, n_filters, n_filters], ShiftedSoftplus)  # edge-level
        self.in2f = nn.Linear(n_atom_basis, n_filters, bias=False)
        self.f2out = mlp([n_filters, n_atom_basis, n_atom_basis], ShiftedSoftplus)

    def forward(self, x: Tensor, rbf: Tensor, fc: Tensor, edge_index: Tensor) -> Tensor:
        sender, receiver = edge_index
        w = self.filter_net(rbf) * fc.unsqueeze(-1)  # [E, F]
        msg = self.in2f(x).index_select(0, sender) * w
        v = x.new_zeros(x.shape[0], msg.shape[1]).index_add_(0, receiver, msg)
        return x + self.f2out(v)


@register_model
class SchNet(ForceField):
    """SchNet with conservative forces.

    Config: ``n_atom_basis`` (64), ``n_filters`` (64), ``n_interactions`` (3),
    ``n_rbf`` (20, Gaussians on [0, cutoff]), ``cutoff`` (5.0 Å), ``max_z`` (118).
    """

    name = "schnet"
    conservative = True

    def __init__(self, n_atom_basis: int = 64, n_filters: int = 64, n_interactions: int = 3,
                 n_rbf: int = 20, cutoff: float = 5.0, max_z: int = MAX_Z):
        super().__init__(cutoff=cutoff, max_z=max_z)
        self.config = dict(n_atom_basis=n_atom_basis, n_filters=n_filters,
                           n_interactions=n_interactions, n_rbf=n_rbf, cutoff=float(cutoff),
                           max_z=max_z)
        self.embedding = nn.Embedding(max_z + 1, n_atom_basis)
        self.rbf = GaussianRBF(n_rbf, cutoff)
        self.cutoff_fn = CosineCutoff(cutoff)
        self.interactions = nn.ModuleList(
            SchNetInteraction(n_atom_basis, n_filters, n_rbf) for _ in range(n_interactions))
        self.readout = mlp([n_atom_basis, n_atom_basis // 2, 1], ShiftedSoftplus)

    def atomwise(self, batch: AtomsBatch, direct_forces: bool) -> tuple[Tensor, None]:
        r = batch.edge_vectors().norm(dim=-1)
        rbf, fc = self.rbf(r), self.cutoff_fn(r)
        x = self.embedding(batch.z)
        for block in self.interactions:
            x = block(x, rbf, fc, batch.edge_index)
        return self.readout(x).squeeze(-1), None
