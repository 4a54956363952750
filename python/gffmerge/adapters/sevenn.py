"""SevenNet-0 (``pip install 'gffmerge[sevenn]'``): e3nn, NequIP-style, no ``nn.Linear``.

:class:`SevennForceField` builds the package's own model from the checkpoint its wheel
ships (``7net-0``), then replaces every e3nn ``o3.Linear`` by an
:class:`~gffmerge.adapters.irreps.IrrepsLinear` (one ``nn.Linear`` per output irrep block,
so the collector measures per-irrep Grams and the merge stays equivariant) and every radial
``FullyConnectedNet`` layer by a :class:`~gffmerge.adapters.irreps.ScaledDense`; both
compute exactly the maps they replace; a NequIP-style self-connection (a tensor product with
the one-hot species, ``self_connection_type: nequip``) becomes a
:class:`~gffmerge.adapters.species.SpeciesLinear`, solved per species (the shipped
checkpoints use the ``linear`` self-connection, an ``o3.Linear``). Graphs come from the
package's own builder (``sevenn.train.dataload.unlabeled_atoms_to_graph``, cached per
frame); edge vectors are
recomputed from gffmerge's positions, so forces ``−∂E/∂pos`` and forward-mode tangents flow
through SevenNet's own layers. The energy is SevenNet's per-atom energy (after its
species-wise rescale) plus ``atomic_energies`` (zero for the foundation).

:meth:`SevennAdapter.export` writes the weights back in e3nn's raw layout into a freshly
built SevenNet and saves a checkpoint that ``SevenNetCalculator(path)`` loads.
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
from .irreps import convert_e3nn, write_e3nn
from .species import convert_species, write_species

# modules of the package's sequential model that gffmerge replaces: edge vectors from
# gffmerge's positions, forces by gffmerge's autograd, the total from the per-atom energies
_SKIP = ("edge_preprocess", "reduce_total_enegy", "reduce_total_energy", "force_output")
_CACHE_SIZE = 20000
_GRAPHS: OrderedDict[tuple, tuple[Tensor, Tensor, Tensor]] = OrderedDict()


def _checkpoint(name: str):
    from sevenn.util import load_checkpoint

    with quiet():
        return load_checkpoint(name)


def build_native(variant: str = "7net-0"):
    """The package's own model for ``variant`` (a pretrained name or a checkpoint path)."""
    import warnings

    cp = _checkpoint(variant)
    # built on the CPU even inside gffmerge's shape-only (meta device) checkpoint skeleton:
    # sevenn's builder asks the device of the tensors it makes
    with torch.device("cpu"), quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cp.build_model()
    return model, cp


def sevenn_edges(z: Tensor, pos: Tensor, cell: Tensor, pbc: Tensor, cutoff: float,
                 key: str = "") -> tuple[Tensor, Tensor]:
    """``(edge_index [2, E] (centre, neighbour), cell_shift [E, 3])`` of one frame by
    SevenNet's own graph builder (cached by ``key`` when given)."""
    pos = pos.detach().cpu()
    ckey = (float(cutoff), key)
    if key:
        hit = _GRAPHS.get(ckey)
        if hit is not None and hit[0].shape == pos.shape and torch.equal(hit[0], pos):
            _GRAPHS.move_to_end(ckey)
            return hit[1], hit[2]
    import ase
    from sevenn.train.dataload import unlabeled_atoms_to_graph

    atoms = ase.Atoms(numbers=z.cpu().numpy(), positions=pos.double().numpy(),
                      cell=cell.detach().cpu().double().numpy(), pbc=pbc.cpu().numpy())
    graph = unlabeled_atoms_to_graph(atoms, cutoff, with_shift=True)
    from sevenn import _keys as KEY

    edges = torch.as_tensor(graph[KEY.EDGE_IDX], dtype=torch.int64)
    shift = torch.as_tensor(graph[KEY.CELL_SHIFT], dtype=torch.float64)
    if key:
        _GRAPHS[ckey] = (pos.clone(), edges, shift)
        while len(_GRAPHS) > _CACHE_SIZE:
            _GRAPHS.popitem(last=False)
    return edges, shift


class SevennForceField(Foreign):
    """SevenNet (default ``7net-0``) as a gffmerge force field (module docstring)."""

    name = "sevenn"
    adapter = "sevenn-0"
    conservative = True

    def __init__(self, variant: str = "7net-0"):
        from sevenn import _keys as KEY

        super().__init__(cutoff=5.0, max_z=118)
        with torch.device("cpu"):  # a real model even inside a meta-device skeleton
            net, cp = build_native(variant)
            self.cutoff = float(cp.config[KEY.CUTOFF])
            self.replaced = convert_e3nn(net)
            self.replaced.update(convert_species(net))  # NequIP-style self-connections
            for name in _SKIP:
                if name in net._modules:
                    del net._modules[name]
            net.set_is_batch_data(True)
            # a deep copy registers the constants of e3nn's traced tensor products as
            # buffers; copying once here gives every copy (sources, merges) one state layout
            self.net = copy.deepcopy(net)
        self.config = {"variant": variant}

    def atomwise(self, batch: AtomsBatch, direct_forces: bool) -> tuple[Tensor, None]:
        from sevenn import _keys as KEY

        counts = batch.natoms.tolist()
        keys = batch.frame_keys if len(batch.frame_keys) == len(counts) else [""] * len(counts)
        edges, shifts, start = [], [], 0
        primal = fwad.unpack_dual(batch.pos).primal.detach()
        for g, n in enumerate(counts):
            e, s = sevenn_edges(batch.z[start:start + n], primal[start:start + n],
                                batch.cell[g], batch.pbc[g], self.cutoff, keys[g])
            edges.append(e + start)
            shifts.append(s)
            start += n
        device, dtype = batch.pos.device, batch.pos.dtype
        edge_index = torch.cat(edges, 1).to(device)
        shift = torch.cat(shifts).to(device, dtype)
        src, dst = edge_index
        vec = (batch.pos[dst] - batch.pos[src]
               + torch.einsum("ek,ekl->el", shift, batch.cell.to(dtype)[batch.batch[src]]))
        data = {KEY.ATOMIC_NUMBERS: batch.z, KEY.NODE_FEATURE: batch.z, KEY.POS: batch.pos,
                KEY.EDGE_IDX: edge_index, KEY.EDGE_VEC: vec, KEY.BATCH: batch.batch,
                KEY.NUM_ATOMS: batch.natoms}
        out = self.net(data)
        return out[KEY.ATOMIC_ENERGY].reshape(-1), None


@register_adapter
class SevennAdapter(Adapter):
    """SevenNet-0 (11 July 2024), weights from the ``sevenn`` wheel."""

    name = "sevenn-0"
    package = "sevenn"
    extra = "sevenn"
    model_class = SevennForceField
    default_variant = "7net-0"

    def native_checkpoint(self, model: SevennForceField) -> dict[str, Any]:
        """The package's checkpoint dict of the SevenNet equal to ``model``."""
        if not isinstance(model, SevennForceField):
            raise TypeError(f"the sevenn-0 adapter exports SevennForceField, got "
                            f"{type(model).__name__}")
        if float(model.scale) != 1.0:
            raise ValueError(f"a SevenNet cannot hold an energy scale ({float(model.scale)}); "
                             "export models whose scale is 1")
        from sevenn import _keys as KEY

        native, cp = build_native(model.config["variant"])
        write_e3nn(model.net, native)
        write_species(model.net, native)
        # per-element references (and the per-atom shift) into the species-wise shift
        refs = model.atomic_energies.detach().cpu() + float(model.shift)
        type_map = {int(k): int(v) for k, v in cp.config[KEY.TYPE_MAP].items()}
        rescale = native.get_submodule("rescale_atomic_energy")
        with torch.no_grad():
            for z in torch.nonzero(refs).flatten().tolist():
                if z not in type_map:
                    raise ValueError(f"element Z = {z} has a reference energy but SevenNet "
                                     "has no species index for it")
                rescale.shift[type_map[z]] += refs[z].to(rescale.shift.dtype)
        # the package's checkpoint with the new weights; they are in this sevenn's layout,
        # so the config says this version (else the loader patches old layouts again)
        import sevenn

        payload = cp.get_checkpoint_dict()
        payload["config"] = {**payload["config"], "version": sevenn.__version__}
        payload["model_state_dict"] = {k: v.detach().cpu().clone()
                                       for k, v in native.state_dict().items()}
        payload["optimizer_state_dict"] = {}
        payload["scheduler_state_dict"] = {}
        return payload

    def export(self, model: SevennForceField, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.native_checkpoint(model), path)
        return path

    def load_native(self, path: str | Path):
        return build_native(str(path))[0]

    def calculator(self, path: str | Path):
        import warnings

        from sevenn.calculator import SevenNetCalculator

        with quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SevenNetCalculator(str(path), device="cpu")
