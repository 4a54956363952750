"""CHGNet (``pip install 'gffmerge[chgnet]'``): plain ``nn.Linear`` MLPs and gated MLPs.

:class:`ChgnetForceField` runs the package's own :class:`chgnet.model.CHGNet` layers on
graphs from the package's own :class:`~chgnet.graph.CrystalGraphConverter` (built once per
frame from gffmerge's positions and cell, then cached by frame key). Positions enter the
graph as ``pos @ lattice⁻¹``, so forces ``−∂E/∂pos`` and forward-mode tangents flow through
CHGNet's own bond and angle featurisation. The energy is CHGNet's site energies plus
``atomic_energies`` (which start as CHGNet's composition model, ``AtomRef``); the magnetic
moment head runs in every forward so the collector measures it too.

Every CHGNet linear is an ``nn.Linear``: the dense hooks measure them as they are.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor

from ..data.batch import AtomsBatch
from . import Adapter, Foreign, quiet, register_adapter

CHGNET_MAX_Z = 94  # AtomRef's width: H..Pu
_CACHE_SIZE = 20000


def _primal(t: Tensor) -> Tensor:
    return fwad.unpack_dual(t).primal.detach()


class _GraphCache:
    """CHGNet graphs by frame key, checked against the frame's positions on every hit."""

    def __init__(self, size: int = _CACHE_SIZE):
        self.size = size
        self.graphs: OrderedDict[tuple, tuple[Tensor, Any]] = OrderedDict()

    def get(self, key: tuple, pos: Tensor):
        hit = self.graphs.get(key)
        if hit is None or hit[0].shape != pos.shape or not torch.equal(hit[0], pos):
            return None
        self.graphs.move_to_end(key)
        return hit[1]

    def put(self, key: tuple, pos: Tensor, graph) -> None:
        self.graphs[key] = (pos.clone(), graph)
        while len(self.graphs) > self.size:
            self.graphs.popitem(last=False)


_CACHE = _GraphCache()


def crystal_graph(net, z: Tensor, pos: Tensor, cell: Tensor, pbc: Tensor, key: str = ""):
    """The CHGNet graph of one frame by CHGNet's own converter (cached by ``key`` when
    given). A non-periodic frame is put in a cubic box wider than the atom-graph cutoff."""
    conv = net.graph_converter
    ckey = (conv.atom_graph_cutoff, conv.bond_graph_cutoff, key)
    pos = pos.detach().cpu()
    if key:
        hit = _CACHE.get(ckey, pos)
        if hit is not None:
            return hit
    from pymatgen.core import Lattice, Structure

    p = pos.to(torch.float64)
    if bool(pbc.all()):
        lattice = cell.detach().cpu().to(torch.float64).numpy()
    elif not bool(pbc.any()):
        side = float((p.max(0).values - p.min(0).values).max()) + 2 * conv.atom_graph_cutoff + 1
        lattice = (torch.eye(3, dtype=torch.float64) * side).numpy()
    else:
        raise ValueError("CHGNet needs fully periodic or non-periodic frames, got pbc="
                         f"{pbc.tolist()}; give every direction a cell")
    structure = Structure(Lattice(lattice), z.cpu().tolist(), p.numpy(),
                          coords_are_cartesian=True)
    graph = conv(structure, graph_id=key or None)
    graph.lattice = graph.lattice.detach()
    graph.atom_frac_coord = graph.atom_frac_coord.detach()
    if key:
        _CACHE.put(ckey, pos, graph)
    return graph


def load_pretrained(variant: str = "0.3.0"):
    """The pre-trained CHGNet ``variant`` from the weights in the package's wheel, as
    ``CHGNet.load`` builds it but without moving it to a device (so that it can also be
    built as a shape-only skeleton, as :func:`gffmerge.checkpoint.load_checkpoint` does)."""
    import chgnet
    from chgnet.model import CHGNet

    found = sorted((Path(chgnet.__file__).parent / "pretrained" / variant).glob("*.pth.tar"))
    if len(found) != 1:
        raise ValueError(f"CHGNet variant {variant!r} is not among the weights the chgnet "
                         "package ships (0.3.0, 0.2.0, r2scan)")
    with quiet():
        return CHGNet.from_file(str(found[0]), mlp_out_bias=variant == "0.2.0",
                                version=variant)


class ChgnetForceField(Foreign):
    """A CHGNet foundation as a gffmerge force field (module docstring).

    ``variant`` names the pre-trained weights the package ships (``"0.3.0"``, ``"0.2.0"``,
    ``"r2scan"``); a checkpoint stores only the variant and the state dict.
    """

    name = "chgnet"
    adapter = "chgnet"
    conservative = True

    def __init__(self, variant: str = "0.3.0"):
        net = load_pretrained(variant)
        super().__init__(cutoff=float(net.graph_converter.atom_graph_cutoff),
                         max_z=CHGNET_MAX_Z)
        refs = torch.zeros(CHGNET_MAX_Z + 1, dtype=torch.float64)
        if net.composition_model is not None:
            refs[1:] = net.composition_model.fc.weight.detach()[0].to(torch.float64)
        net.composition_model = None  # its energies live in atomic_energies
        self.net = net
        self.config = {"variant": variant}
        self.set_energy_normalisation(refs)

    def atomwise(self, batch: AtomsBatch, direct_forces: bool) -> tuple[Tensor, None]:
        from chgnet.model.model import BatchedGraph

        counts = batch.natoms.tolist()
        keys = batch.frame_keys if len(batch.frame_keys) == len(counts) else [""] * len(counts)
        graphs, start = [], 0
        for g, n in enumerate(counts):
            pos = batch.pos[start:start + n]
            topo = crystal_graph(self.net, batch.z[start:start + n], _primal(pos),
                                 batch.cell[g], batch.pbc[g], keys[g])
            graph = copy.copy(topo)
            lattice = topo.lattice.to(pos.device, pos.dtype)
            graph.lattice = lattice
            graph.atom_frac_coord = pos @ torch.linalg.inv(lattice)
            for name in ("atomic_number", "atom_graph", "neighbor_image",
                         "directed2undirected", "undirected2directed", "bond_graph"):
                setattr(graph, name, getattr(topo, name).to(pos.device))
            graphs.append(graph)
            start += n
        bg = BatchedGraph.from_graphs(graphs, bond_basis_expansion=self.net.bond_basis_expansion,
                                      angle_basis_expansion=self.net.angle_basis_expansion)
        pred = self.net._compute(bg, compute_magmom=True, return_site_energies=True)
        return torch.cat(pred["site_energies"]), None


@register_adapter
class ChgnetAdapter(Adapter):
    """CHGNet 0.3.0 (the default variant), weights from the ``chgnet`` wheel."""

    name = "chgnet"
    package = "chgnet"
    extra = "chgnet"
    model_class = ChgnetForceField
    default_variant = "0.3.0"

    def native_dict(self, model: ChgnetForceField) -> dict[str, Any]:
        """``{"state_dict", "model_args"}`` of the CHGNet equal to ``model``: its network
        with ``atomic_energies`` (and the per-atom ``shift``) as the ``AtomRef`` weights."""
        if not isinstance(model, ChgnetForceField):
            raise TypeError(f"the chgnet adapter exports ChgnetForceField, got "
                            f"{type(model).__name__}")
        if float(model.scale) != 1.0:
            raise ValueError(f"a CHGNet cannot hold an energy scale ({float(model.scale)}); "
                             "export models whose scale is 1")
        state = {k: v.detach().cpu().clone() for k, v in model.net.state_dict().items()}
        refs = model.atomic_energies.detach().cpu()[1:] + float(model.shift)
        state["composition_model.fc.weight"] = refs.to(torch.float32).reshape(1, -1)
        return {"state_dict": state, "model_args": dict(model.net.model_args)}

    def export(self, model: ChgnetForceField, path: str | Path) -> Path:
        """A file ``CHGNet.from_file(path)`` loads (``{"model": {"state_dict",
        "model_args"}}``), for ``CHGNetCalculator(model=...)``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.native_dict(model)}, path)
        return path

    def load_native(self, path: str | Path):
        from chgnet.model import CHGNet

        with quiet():
            return CHGNet.from_file(str(path)).eval()

    def calculator(self, path: str | Path):
        from chgnet.model import CHGNetCalculator

        with quiet():
            return CHGNetCalculator(model=self.load_native(path), use_device="cpu")
