"""Species-conditioned linears: an e3nn tensor product with a one-hot species operand as
one :class:`~gffmerge.adapters.irreps.IrrepsLinear` per species.

NequIP-style self-connections (SevenNet's ``self_connection_type: nequip``, its package
default for new models; the SevenNet checkpoints the wheel ships use ``linear`` instead)
compute ``FullyConnectedTensorProduct(x, onehot(species))`` with a scalar operand. For an
atom of species ``v`` every path ``(i → k)`` reduces to

    y_k[w, m] = c_path · Σ_u W[u, v, w] · x_i[u, m],

an equivariant linear map of the atom's features with its own matrix per species
(``c_path``: e3nn's path and Clebsch–Gordan normalisation, measured from the product
itself; the operand's one nonzero value multiplies the output, 1 for a one-hot).
:class:`SpeciesLinear` holds these maps as one ``IrrepsLinear`` per species and
applies each to the rows of its atoms only, so the collector measures one Gram per
species and output irrep from the rows of that species, and the closed form solves one
system per species: the merged map stays species-conditioned and equivariant. A species
no frame contains gets no rows and keeps the sources' mean.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .irreps import IrrepsLinear


def _scalar_operand(tp) -> int:
    """The number of species of a tensor product whose second input is one scalar block."""
    irreps = tp.irreps_in2
    if len(irreps) != 1 or irreps[0].ir.l != 0 or irreps[0].ir.p != 1:
        raise ValueError(f"a species-conditioned linear needs a one-hot scalar operand "
                         f"(Nx0e), got {irreps}")
    return irreps[0].mul


class SpeciesLinear(nn.Module):
    """``FullyConnectedTensorProduct(x, onehot)`` as ``species[v]`` (an ``IrrepsLinear``)
    applied to the rows whose one-hot operand is ``v`` (module docstring)."""

    def __init__(self, irreps_in: str, irreps_out: str, n_species: int,
                 paths: list[list[int]]):
        super().__init__()
        self.species = nn.ModuleList(IrrepsLinear(irreps_in, irreps_out, paths)
                                     for _ in range(int(n_species)))
        self.irreps_in = self.species[0].irreps_in
        self.irreps_out = self.species[0].irreps_out

    @staticmethod
    def _path_scales(tp) -> list[float]:
        """``c_path`` of every instruction: the output at ``(w=0, m=0)`` of block ``k`` for
        the input basis vector ``(u=0, m=0)`` of block ``i`` and species 0, all weights 1."""
        probe = copy.deepcopy(tp).to(torch.float64)
        with torch.no_grad():
            probe.weight.fill_(1.0)
        s_in, s_out = tp.irreps_in1.slices(), tp.irreps_out.slices()
        scales = []
        for ins in tp.instructions:
            x = torch.zeros(1, tp.irreps_in1.dim, dtype=torch.float64)
            x[0, s_in[ins.i_in1].start] = 1.0
            onehot = torch.zeros(1, tp.irreps_in2.dim, dtype=torch.float64)
            onehot[0, 0] = 1.0
            with torch.no_grad():
                scales.append(float(probe(x, onehot)[0, s_out[ins.i_out].start]))
        return scales

    @classmethod
    def from_e3nn(cls, tp) -> SpeciesLinear:
        """The same map as ``tp`` (an e3nn ``FullyConnectedTensorProduct`` with internal,
        shared weights and a one-hot scalar operand) on one-hot operands."""
        n = _scalar_operand(tp)
        if not (getattr(tp, "internal_weights", True) and getattr(tp, "shared_weights", True)):
            raise ValueError("only tensor products with internal, shared weights convert")
        paths: list[list[int]] = [[] for _ in tp.irreps_out]
        for ins in tp.instructions:
            if ins.connection_mode != "uvw" or not ins.has_weight:
                raise ValueError(f"instruction {ins} is not a weighted 'uvw' path")
            paths[ins.i_out].append(ins.i_in1)
        out = cls(str(tp.irreps_in1), str(tp.irreps_out), n, paths)
        out = out.to(tp.weight.device, tp.weight.dtype)
        out.load_e3nn(tp)
        return out

    def _views(self, tp):
        offset = 0
        for ins, scale in zip(tp.instructions, self._path_scales(tp)):
            mul1, mul2, mul_out = ins.path_shape
            size = mul1 * mul2 * mul_out
            yield ins, scale, (offset, offset + size), (mul1, mul2, mul_out)
            offset += size

    def load_e3nn(self, tp) -> None:
        """Copy ``tp``'s weights (same instructions) into the per-species blocks."""
        with torch.no_grad():
            for ins, scale, (a, b), shape in self._views(tp):
                w = tp.weight[a:b].reshape(shape)  # [u, v, w]
                for v, lin in enumerate(self.species):
                    block = lin.blocks[str(ins.i_out)]
                    col = lin._column(ins.i_out, ins.i_in1)
                    block.weight[:, col:col + shape[0]] = (scale * w[:, v, :]).T.to(block.weight)

    def e3nn_weight(self, tp) -> Tensor:
        """``tp``'s raw flat weight holding this module's per-species maps."""
        weight = torch.empty_like(tp.weight)
        for ins, scale, (a, b), shape in self._views(tp):
            w = torch.empty(shape, dtype=weight.dtype, device=weight.device)
            for v, lin in enumerate(self.species):
                col = lin._column(ins.i_out, ins.i_in1)
                block = lin.blocks[str(ins.i_out)].weight.detach()
                w[:, v, :] = (block[:, col:col + shape[0]].T / scale).to(w)
            weight[a:b] = w.reshape(-1)
        return weight

    def forward(self, x: Tensor, onehot: Tensor) -> Tensor:
        if onehot.shape[-1] != len(self.species):
            raise ValueError(f"the operand has {onehot.shape[-1]} species columns, this "
                             f"layer {len(self.species)}")
        if bool(((onehot != 0).sum(-1) != 1).any()):
            raise ValueError("a species-conditioned linear needs a one-hot operand (one "
                             "nonzero per row)")
        species = onehot.argmax(-1)
        value = onehot.gather(-1, species[:, None]).to(x.dtype)  # 1 for a plain one-hot
        out = x.new_zeros(x.shape[0], self.irreps_out.dim)
        for v in torch.unique(species).tolist():
            rows = (species == v).nonzero().flatten()
            out = out.index_copy(0, rows, self.species[v](x[rows]))
        return out * value


def convert_species(module: nn.Module) -> dict[str, str]:
    """Replace, in place, every ``FullyConnectedTensorProduct`` with a one-hot scalar
    operand under ``module`` by a :class:`SpeciesLinear`; ``{name: "species"}``."""
    from e3nn.o3 import FullyConnectedTensorProduct

    done = {}
    for name, child in list(module.named_modules()):
        if not isinstance(child, FullyConnectedTensorProduct):
            continue
        try:
            _scalar_operand(child)
        except ValueError:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, SpeciesLinear.from_e3nn(child))
        done[name] = "species"
    return done


def write_species(converted: nn.Module, native: nn.Module) -> None:
    """Copy every :class:`SpeciesLinear` of ``converted`` (by :func:`convert_species`) into
    the tensor product of the same name in ``native`` (e3nn's raw layout)."""
    mods = dict(converted.named_modules())
    with torch.no_grad():
        for name, layer in native.named_modules():
            if isinstance(mods.get(name), SpeciesLinear):
                layer.weight.copy_(mods[name].e3nn_weight(layer))
