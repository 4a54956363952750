"""Accuracy of a force field on labelled frames, per system and overall.

Energy errors are per atom (meV/atom); force errors are over all Cartesian components
(meV/Å), as the GFFMerge evaluation scripts report them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from .data import AtomsDataset
from .models import ForceField

METRICS = ("energy_mae_mev_per_atom", "energy_rmse_mev_per_atom", "force_mae_mev_per_a",
           "force_rmse_mev_per_a")


class _Sums:
    def __init__(self):
        self.e_abs = self.e_sq = self.f_abs = self.f_sq = 0.0
        self.frames = self.components = self.atoms = 0

    def result(self) -> dict[str, float]:
        f, c = max(self.frames, 1), max(self.components, 1)
        return {"energy_mae_mev_per_atom": 1e3 * self.e_abs / f,
                "energy_rmse_mev_per_atom": 1e3 * (self.e_sq / f) ** 0.5,
                "force_mae_mev_per_a": 1e3 * self.f_abs / c,
                "force_rmse_mev_per_a": 1e3 * (self.f_sq / c) ** 0.5,
                "frames": self.frames, "atoms": self.atoms}


def evaluate(model: ForceField, dataset: AtomsDataset, *, batch_size: int = 8,
             device: torch.device | str | None = None, progress: bool = True
             ) -> dict[str, dict[str, float]]:
    """Errors of ``model`` on ``dataset``: ``{"all": {...}, "<system>": {...}}``.

    Each entry has energy MAE/RMSE per atom (meV/atom), force MAE/RMSE over components
    (meV/Å), and the number of frames and atoms.
    """
    from tqdm.auto import tqdm

    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset; check the split and systems")
    if not (dataset.has_energy and dataset.has_forces):
        raise ValueError("evaluation needs energy and force labels; this dataset lacks them")
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    sums: dict[str, _Sums] = defaultdict(_Sums)
    loader = dataset.batches_for(model, batch_size)
    try:
        for batch in tqdm(loader, desc="evaluate", unit="batch", leave=False,
                          disable=not progress):
            batch = batch.to(device)
            with torch.no_grad() if not model.conservative else torch.enable_grad():
                out = model(batch)
            de = ((out["energy"].detach() - batch.energy) / batch.natoms).cpu()
            df = (out["forces"].detach() - batch.forces).to(torch.float64).cpu()
            graph = batch.batch.cpu()
            g_abs = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(
                0, graph, df.abs().sum(1))
            g_sq = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(
                0, graph, df.square().sum(1))
            natoms = batch.natoms.cpu().tolist()
            for g, sid in enumerate(batch.system.cpu().tolist()):
                for key in (batch.system_names[sid], "all"):
                    s = sums[key]
                    s.e_abs += abs(de[g].item())
                    s.e_sq += de[g].item() ** 2
                    s.f_abs += g_abs[g].item()
                    s.f_sq += g_sq[g].item()
                    s.frames += 1
                    s.components += 3 * natoms[g]
                    s.atoms += natoms[g]
    finally:
        model.train(was_training)
    return {k: s.result() for k, s in sorted(sums.items(), key=lambda kv: kv[0] != "all")}


VAL_SCORES = ("per_system", "pooled")


def system_errors(model: ForceField, val_sets: Sequence[AtomsDataset]) -> list[dict[str, float]]:
    """:func:`evaluate`'s ``"all"`` entry of ``model`` on each validation set (one per
    source: its system's frames)."""
    return [evaluate(model, ds, progress=False)["all"] for ds in val_sets]


def combine_errors(rows: Sequence[dict[str, float]], how: str = "per_system"
                   ) -> tuple[float, float]:
    """One (force MAE meV/Å, energy MAE meV/atom) from per-system ``rows``.

    ``"per_system"``: the mean over systems of each system's MAE, so every system counts
    once whatever its cell size or number of frames (the merge should serve each system);
    ``"pooled"``: force errors pooled over all force components, energy errors over all
    frames, so a system with more atoms (or frames) weighs more.
    """
    if how not in VAL_SCORES:
        raise ValueError(f"unknown validation score {how!r}; choose one of "
                         f"{', '.join(map(repr, VAL_SCORES))}")
    if not rows:
        raise ValueError("no validation sets to score on; pass one per source")
    if how == "per_system":
        return (sum(r["force_mae_mev_per_a"] for r in rows) / len(rows),
                sum(r["energy_mae_mev_per_atom"] for r in rows) / len(rows))
    atoms = sum(r["atoms"] for r in rows)
    frames = sum(r["frames"] for r in rows)
    return (sum(r["force_mae_mev_per_a"] * r["atoms"] for r in rows) / max(atoms, 1),
            sum(r["energy_mae_mev_per_atom"] * r["frames"] for r in rows) / max(frames, 1))


def pooled_errors(model: ForceField, val_sets: Sequence[AtomsDataset]) -> tuple[float, float]:
    """Force MAE (meV/Å, pooled over the force components of all sets) and energy MAE
    (meV/atom, pooled over frames) of ``model`` on each source's validation frames."""
    return combine_errors(system_errors(model, val_sets), "pooled")
