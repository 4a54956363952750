"""Per-system atom-embedding tables at inference: the embedding switch.

A merged model has one atom-embedding table (``Embedding(Z) -> [d]``) for every system.
The switch keeps each source model's own table next to it and, per batch, embeds every atom
with the table of the system its graph belongs to, as the batch's label says
(``AtomsBatch.system`` indexing ``AtomsBatch.system_names``). Everything else is the merged
model's. Example::

    switched = EmbeddingSwitch.from_sources(merged, [ethanol_model, malon_model],
                                            ["rmd17/ethanol", "rmd17/malonaldehyde"])
    out = switched(batch)                  # batch from load_dataset([...]).batches_for(...)
    save_checkpoint("switched.pt", switched)  # load_checkpoint gives the switch back

A batch that mixes known systems gets a per-atom selection; a batch with no label, or with
a system that has no table, is an error (``unknown="merged"`` uses the merged model's own
table for those atoms instead). System names match exactly or, when unique, by the part after
the last ``/`` (``"ethanol"`` for ``"rmd17/ethanol"``).

In a checkpoint the switch is a section next to the merged model's plain state dict, so the
file also loads as the plain merged model in code that does not know the switch.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gffmerge.data.batch import AtomsBatch

from .base import ForceField

Unknown = Literal["error", "merged"]
SECTION_VERSION = 1


class SystemEmbedding(nn.Module):
    """An atom embedding with one table per system; the rows are picked per atom.

    ``weight`` [V, d] is the merged model's table (used for atoms whose selection is -1),
    ``tables`` [S, V, d] the per-system tables. The owning :class:`EmbeddingSwitch` sets the
    per-atom selection around each forward; called without one, this module raises. The
    selection lives on the module for the duration of one forward, so one switched model
    must not run forwards in several threads at once (copy it per thread).
    """

    def __init__(self, weight: Tensor, tables: Tensor):
        super().__init__()
        if tables.dim() != 3 or tables.shape[1:] != weight.shape:
            raise ValueError(f"embedding tables must be [systems, {weight.shape[0]}, "
                             f"{weight.shape[1]}] to match the model's embedding, got "
                             f"{tuple(tables.shape)}")
        self.weight = nn.Parameter(weight.detach().clone())
        self.tables = nn.Parameter(tables.detach().clone().to(weight.dtype))
        self._selection: Tensor | None = None

    @property
    def num_embeddings(self) -> int:
        return int(self.weight.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.weight.shape[1])

    def forward(self, z: Tensor) -> Tensor:
        sel = self._selection
        if sel is None:
            raise RuntimeError("SystemEmbedding needs a per-atom system selection: call the "
                               "model through its EmbeddingSwitch, not the inner model")
        if sel.shape != z.shape:
            raise RuntimeError(f"system selection has shape {tuple(sel.shape)} but the atoms "
                               f"are {tuple(z.shape)}")
        if bool((sel < 0).any()):
            stacked = torch.cat([self.weight.unsqueeze(0), self.tables])
            return stacked[sel + 1, z]
        return self.tables[sel, z]

    def extra_repr(self) -> str:
        return (f"{self.tables.shape[0]} systems, {self.num_embeddings}, "
                f"{self.embedding_dim}")


class EmbeddingSwitch(ForceField):
    """A force field whose atom embedding is chosen per system from the batch's label.

    ``model``: the merged force field (copied; the original is left untouched).
    ``tables``: system name -> embedding table [V, d] (the source model's
    ``embedding.weight``), in the order the systems are indexed. ``attribute``: the model's
    ``nn.Embedding`` attribute (``embedding`` in SchNet, PaiNN and GNS). ``unknown``:
    ``"error"`` (default) or ``"merged"`` for atoms of unlabelled or unknown systems.

    Predictions, dtype, device, ``cutoff`` and ``conservative`` are the wrapped model's;
    ``self.base`` is that model with its embedding replaced by a :class:`SystemEmbedding`.
    """

    name = "switch"

    def __init__(self, model: ForceField, tables: Mapping[str, Tensor], *,
                 attribute: str = "embedding", unknown: Unknown = "error"):
        nn.Module.__init__(self)  # the energy buffers stay the wrapped model's
        if not isinstance(model, ForceField) or isinstance(model, EmbeddingSwitch):
            raise TypeError(f"EmbeddingSwitch wraps a plain gffmerge ForceField, got "
                            f"{type(model).__name__}")
        if unknown not in ("error", "merged"):
            raise ValueError(f"unknown must be 'error' or 'merged', got {unknown!r}")
        if not tables:
            raise ValueError("EmbeddingSwitch needs at least one system table")
        embedding = getattr(model, attribute, None)
        if not isinstance(embedding, nn.Embedding):
            raise ValueError(f"{type(model).__name__}.{attribute} is "
                             f"{type(embedding).__name__}, not an nn.Embedding; pass "
                             "attribute= naming the model's atom embedding")
        names = tuple(str(n) for n in tables)
        weight = embedding.weight
        stacked = []
        for name, table in tables.items():
            table = torch.as_tensor(table)
            if table.shape != weight.shape:
                raise ValueError(f"embedding table of system {name!r} has shape "
                                 f"{tuple(table.shape)}; the model's {attribute} is "
                                 f"{tuple(weight.shape)} (same architecture and max_z needed)")
            stacked.append(table.detach().to(weight.device, weight.dtype))
        base = copy.deepcopy(model)
        setattr(base, attribute, SystemEmbedding(weight, torch.stack(stacked)))
        self.base = base
        self.systems: tuple[str, ...] = names
        self.attribute = attribute
        self.unknown: Unknown = unknown
        self.conservative = model.conservative
        self.cutoff = model.cutoff
        self.max_z = model.max_z
        self.config = dict(model.config)

    @classmethod
    def from_sources(cls, merged: ForceField, sources: Sequence[ForceField],
                     systems: Sequence[str], **kwargs: Any) -> EmbeddingSwitch:
        """The switch over ``merged`` with ``sources[k]``'s embedding for ``systems[k]``."""
        if len(sources) != len(systems):
            raise ValueError(f"{len(sources)} source models but {len(systems)} system names: "
                             "give one system name per source, in the same order")
        attribute = kwargs.get("attribute", "embedding")
        tables = {}
        for name, src in zip(systems, sources, strict=True):
            if name in tables:
                raise ValueError(f"system {name!r} is named twice; system names must be "
                                 "unique")
            emb = getattr(src, attribute, None)
            if not isinstance(emb, nn.Embedding):
                raise ValueError(f"source for {name!r} ({type(src).__name__}) has no "
                                 f"nn.Embedding '{attribute}'")
            tables[name] = emb.weight
        return cls(merged, tables, **kwargs)

    # -- system lookup -------------------------------------------------------------

    @property
    def embedding(self) -> SystemEmbedding:
        return getattr(self.base, self.attribute)

    def system_index(self, system: str | int) -> int:
        """The table index of a system name (exact, else unique basename) or index."""
        if isinstance(system, bool) or not isinstance(system, str | int):
            raise TypeError(f"system must be a name or an index, got {type(system).__name__}")
        if isinstance(system, int):
            if not 0 <= system < len(self.systems):
                raise ValueError(f"system index {system} is out of range: this model has "
                                 f"{len(self.systems)} embedding tables {list(self.systems)}")
            return system
        found = self._find(system)
        if found is None:
            raise ValueError(f"no embedding table for system {system!r}; this model has "
                             f"{list(self.systems)} (pass one of these names or an index)")
        return found

    def _find(self, name: str) -> int | None:
        if name in self.systems:
            return self.systems.index(name)
        short = [k for k, s in enumerate(self.systems)
                 if s.rsplit("/", 1)[-1] == name.rsplit("/", 1)[-1]]
        if len(short) > 1:
            raise ValueError(f"system {name!r} matches several tables "
                             f"{[self.systems[k] for k in short]}; use the full name")
        return short[0] if short else None

    def atom_tables(self, batch: AtomsBatch) -> Tensor:
        """[N] int64 table index of each atom (-1: the merged table, if ``unknown='merged'``)."""
        if batch.system is None or not batch.system_names:
            if self.unknown == "merged":
                return torch.full_like(batch.z, -1)
            raise ValueError("this model picks atom embeddings per system but the batch "
                             "carries no system label; build batches with AtomsDataset, or "
                             f"give the calculator system= (one of {list(self.systems)})")
        present = torch.unique(batch.system).tolist()
        lookup = torch.full((len(batch.system_names),), -1, dtype=torch.int64)
        missing = []
        for sid in present:
            if not 0 <= sid < len(batch.system_names):
                raise ValueError(f"batch system id {sid} is outside its system_names "
                                 f"{list(batch.system_names)}")
            found = self._find(batch.system_names[sid])
            if found is None:
                missing.append(batch.system_names[sid])
            else:
                lookup[sid] = found
        if missing and self.unknown == "error":
            raise ValueError(f"no embedding table for system(s) {missing} in this batch; "
                             f"the model has tables for {list(self.systems)} (build the "
                             "switch with those systems, or unknown='merged' to use the "
                             "merged table)")
        lookup = lookup.to(batch.system.device)
        return lookup[batch.system][batch.batch]

    @contextlib.contextmanager
    def selected(self, batch: AtomsBatch) -> Iterator[None]:
        """Inside this context the inner embedding uses ``batch``'s per-atom tables."""
        emb = self.embedding
        previous = emb._selection
        emb._selection = self.atom_tables(batch).to(batch.z.device)
        try:
            yield
        finally:
            emb._selection = previous

    # -- ForceField interface --------------------------------------------------------

    @property
    def atomic_energies(self) -> Tensor:
        return self.base.atomic_energies

    @property
    def scale(self) -> Tensor:
        return self.base.scale

    @property
    def shift(self) -> Tensor:
        return self.base.shift

    def set_energy_normalisation(self, *args, **kwargs) -> None:
        self.base.set_energy_normalisation(*args, **kwargs)

    def atomwise(self, batch: AtomsBatch, direct_forces: bool) -> tuple[Tensor, Tensor | None]:
        with self.selected(batch):
            return self.base.atomwise(batch, direct_forces)

    def forward(self, batch: AtomsBatch, compute_forces: bool = True) -> dict[str, Tensor]:
        with self.selected(batch):
            return self.base(batch, compute_forces)

    def measure_forward(self, batch: AtomsBatch) -> dict[str, Tensor]:
        with self.selected(batch):
            return self.base.measure_forward(batch)

    def _apply(self, fn, recurse=True):
        return nn.Module._apply(self, fn, recurse)

    def extra_repr(self) -> str:
        return f"systems={list(self.systems)}, unknown={self.unknown!r}"

    # -- checkpoint ------------------------------------------------------------------

    def plain_state_dict(self) -> dict[str, Tensor]:
        """The merged model's own state dict (its embedding is the merged table)."""
        tables_key = f"{self.attribute}.tables"
        return {k: v for k, v in self.base.state_dict().items() if k != tables_key}

    def checkpoint_section(self) -> dict[str, Any]:
        """The switch as plain containers and tensors (stored next to the state dict)."""
        return {"version": SECTION_VERSION, "systems": list(self.systems),
                "attribute": self.attribute, "unknown": self.unknown,
                "tables": self.embedding.tables.detach().cpu().clone()}

    @classmethod
    def from_checkpoint_section(cls, model: ForceField, section: Any) -> EmbeddingSwitch:
        """Rebuild the switch over ``model`` (already loaded) from :meth:`checkpoint_section`."""
        if not isinstance(section, dict):
            raise ValueError(f"the embedding-switch section is a {type(section).__name__}, "
                             "not a dict")
        version = section.get("version")
        if not isinstance(version, int) or version > SECTION_VERSION:
            raise ValueError(f"embedding-switch section version {version!r}; this gffmerge "
                             f"reads up to {SECTION_VERSION}, upgrade gffmerge")
        systems, tables = section.get("systems"), section.get("tables")
        if (not isinstance(systems, list | tuple) or not isinstance(tables, Tensor)
                or tables.dim() != 3 or tables.shape[0] != len(systems)):
            raise ValueError("the embedding-switch section needs 'systems' (names) and "
                             "'tables' [systems, V, d] of matching length")
        return cls(model, dict(zip(systems, tables, strict=True)),
                   attribute=str(section.get("attribute", "embedding")),
                   unknown=section.get("unknown", "error"))
