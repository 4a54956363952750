"""GNS: an ORB-style attention interaction network with a direct force head.

Architecture (after ORB v2, Neumann et al. 2024, ``MoleculeGNS`` /
``AttentionInteractionNetwork``), at a size meant for CPU training:

* node encoder: ``Embedding(Z) -> Linear -> SiLU -> Linear -> LayerNorm``;
* edge encoder: Gaussian RBFs of the distance ``-> Linear -> SiLU -> Linear -> LayerNorm``;
* ``n_layers`` interaction blocks, each

  - edge update ``e' = e + LN(Linear(SiLU(EdgeConcatLinear([e, h_sender, h_receiver]))))``,
  - sigmoid attention gates ``a_recv = sigmoid(Linear(e')) fc(r)``,
    ``a_send = sigmoid(Linear(e')) fc(r)`` with a cosine cutoff ``fc``,
  - node update ``h' = h + LN(Linear(SiLU(ConcatLinear([h, sum_{e into i} a_recv e',
    sum_{e out of i} a_send e']))))``;

* energy head: per-atom MLP ``h -> scalar``, summed with the reference energies,
  scale and shift of :class:`~gffmerge.models.base.ForceField`;
* direct (non-conservative) force head, see below.

Symmetry (a deliberate difference from ORB). ORB feeds raw edge directions into the
edge features and learns rotational symmetry from data augmentation. Here the model is
exactly E(3)-symmetric, so symmetry tests are exact and the merge is never asked to
preserve an approximate symmetry: edge features are invariant (RBFs of the distance
only), and the unit vector ``u_e`` (receiver -> sender, as
:meth:`AtomsBatch.edge_vectors`) enters only in the force head::

    s_e = MLP(e'_final) * fc(r_e),    F_i = sum_{e: receiver(e) = i} s_e u_e,

after which the per-graph mean force is subtracted (so forces sum to zero per graph)
and the result is multiplied by ``scale``. ``s_e > 0`` pulls atom ``i`` towards its
neighbour. Every message from an edge to a node, and the force head, carries ``fc(r)``,
so edges beyond ``cutoff`` have no effect even if the neighbour list is longer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gffmerge.data.batch import AtomsBatch

from .base import MAX_Z, ForceField
from .layers import CosineCutoff, EdgeConcatLinear, GaussianRBF, mlp
from .registry import register_model


class AttentionInteraction(nn.Module):
    """One GNS interaction block (edge update, attention gates, node update)."""

    def __init__(self, latent_dim: int, hidden_dim: int):
        super().__init__()
        # Edge MLP on [e, h_sender, h_receiver]; the concatenation is never built.
        self.edge_in = EdgeConcatLinear(latent_dim, latent_dim, hidden_dim)
        self.edge_act = nn.SiLU()
        self.edge_out = nn.Linear(hidden_dim, latent_dim)
        self.edge_norm = nn.LayerNorm(latent_dim)
        self.receive_attn = nn.Linear(latent_dim, 1)
        self.send_attn = nn.Linear(latent_dim, 1)
        # Node MLP on [h, received, sent]: node-level rows, first layer a ConcatLinear (no
        # concatenation; same parameter names as the plain MLP, so old checkpoints load).
        self.node_mlp = mlp([3 * latent_dim, hidden_dim, latent_dim], nn.SiLU, layer_norm=True,
                            in_sizes=(latent_dim, latent_dim, latent_dim))

    def forward(self, h: Tensor, e: Tensor, fc: Tensor, edge_index: Tensor
                ) -> tuple[Tensor, Tensor]:
        sender, receiver = edge_index
        e = e + self.edge_norm(self.edge_out(self.edge_act(self.edge_in(e, h, edge_index))))
        a_recv = torch.sigmoid(self.receive_attn(e)) * fc.unsqueeze(-1)
        a_send = torch.sigmoid(self.send_attn(e)) * fc.unsqueeze(-1)
        received = torch.zeros_like(h).index_add_(0, receiver, a_recv * e)
        sent = torch.zeros_like(h).index_add_(0, sender, a_send * e)
        h = h + self.node_mlp(h, received, sent)
        return h, e


@register_model
class GNS(ForceField):
    """Attention GNS with invariant features and a direct, equivariant force head.

    Config: ``latent_dim`` (64), ``hidden_dim`` (64, MLP hidden width), ``n_layers`` (3),
    ``n_rbf`` (20, Gaussians on [0, cutoff]), ``cutoff`` (5.0 Å), ``max_z`` (118).
    """

    name = "gns"
    conservative = False

    def __init__(self, latent_dim: int = 64, hidden_dim: int = 64, n_layers: int = 3,
                 n_rbf: int = 20, cutoff: float = 5.0, max_z: int = MAX_Z):
        super().__init__(cutoff=cutoff, max_z=max_z)
        self.config = dict(latent_dim=latent_dim, hidden_dim=hidden_dim, n_layers=n_layers,
                           n_rbf=n_rbf, cutoff=float(cutoff), max_z=max_z)
        self.embedding = nn.Embedding(max_z + 1, latent_dim)
        self.node_encoder = mlp([latent_dim, hidden_dim, latent_dim], nn.SiLU, layer_norm=True)
        self.rbf = GaussianRBF(n_rbf, cutoff)
        self.cutoff_fn = CosineCutoff(cutoff)
        self.edge_encoder = mlp([n_rbf, hidden_dim, latent_dim], nn.SiLU, layer_norm=True)
        self.layers = nn.ModuleList(AttentionInteraction(latent_dim, hidden_dim)
                                    for _ in range(n_layers))
        self.energy_head = mlp([latent_dim, hidden_dim, 1], nn.SiLU)
        self.force_head = mlp([latent_dim, hidden_dim, 1], nn.SiLU)  # edge-level

    def atomwise(self, batch: AtomsBatch, direct_forces: bool) -> tuple[Tensor, Tensor | None]:
        vec = batch.edge_vectors()
        r = vec.norm(dim=-1)
        fc = self.cutoff_fn(r)
        h = self.node_encoder(self.embedding(batch.z))
        e = self.edge_encoder(self.rbf(r))
        for layer in self.layers:
            h, e = layer(h, e, fc, batch.edge_index)
        energy = self.energy_head(h).squeeze(-1)
        if not direct_forces:
            return energy, None
        return energy, self._forces(batch, e, vec, r, fc)

    def _forces(self, batch: AtomsBatch, e: Tensor, vec: Tensor, r: Tensor, fc: Tensor
                ) -> Tensor:
        """[N, 3] ``sum_{e into i} s_e u_e`` minus its per-graph mean (before ``scale``)."""
        s = self.force_head(e) * fc.unsqueeze(-1)  # [E, 1]
        f_edge = s * (vec / r.unsqueeze(-1))
        forces = vec.new_zeros(batch.num_atoms, 3).index_add_(0, batch.edge_index[1], f_edge)
        total = forces.new_zeros(batch.num_graphs, 3).index_add_(0, batch.batch, forces)
        mean = total / batch.natoms.to(forces.dtype).unsqueeze(-1)
        return forces - mean.index_select(0, batch.batch)
