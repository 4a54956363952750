"""What a checkpoint file is, read from its own record (``gffmerge info``): architecture and
size, how it was made (trained, merged, repaired) and from what, its foundation, its
training run and its test errors. Nothing is built and no weight is read."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import read_header
from .lineage import foundation_sha256
from .provenance import file_sha256


def _test_errors(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    test = metrics.get("test")
    if not isinstance(test, Mapping) or not isinstance(test.get("all"), Mapping):
        return None
    keep = ("energy_mae_mev_per_atom", "force_mae_mev_per_a", "frames")
    out = {"combined": {k: test["all"][k] for k in keep if k in test["all"]}}
    systems = {name: {k: row[k] for k in keep if k in row} for name, row in test.items()
               if name != "all" and isinstance(row, Mapping)}
    if len(systems) > 1:
        out["systems"] = systems
    return out


def _merged_on(data: Any) -> list[str] | None:
    """The data a merge measured its sources on (``gffmerge merge`` records one list of
    names or files per source)."""
    if not isinstance(data, list):
        return None
    names = [str(d) for entry in data for d in (entry if isinstance(entry, list) else [entry])
             if d]
    return names or None


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """The record of the checkpoint at ``path`` as a plain dict (fields it lacks are left
    out); ``foundation_sha256`` is the recorded one or the one its ``init`` chain leads to
    here (:func:`gffmerge.lineage.foundation_sha256`)."""
    path = Path(path)
    header = read_header(path)
    meta = header["metadata"]
    cfg = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), Mapping) else {}
    info: dict[str, Any] = {
        "path": str(path), "sha256": file_sha256(path), "model": header["model_name"],
        "state_values": header["state_values"], "dtype": header["dtype"],
        "embedding_switch": header["switch"] or None, "role": meta.get("role"),
        "systems": cfg.get("systems") or _merged_on(meta.get("data")),
        "init": meta.get("init"),
        "foundation_sha256": foundation_sha256(path, meta),
        "method": meta.get("method"), "sources": meta.get("sources"), "base": meta.get("base"),
        "repaired_from": (meta["repaired_from"].get("path")
                          if isinstance(meta.get("repaired_from"), Mapping) else None),
        "epochs": metrics.get("epochs_run", len(meta.get("history") or []) or None),
        "best_epoch": metrics.get("best_epoch"), "stopped_by": metrics.get("stopped_by"),
        "interrupted": meta.get("interrupted") or None,
        "phases": len(meta["phases"]) if isinstance(meta.get("phases"), list) else None,
        "wall_minutes": (round(meta["wall_seconds"] / 60, 1)
                         if isinstance(meta.get("wall_seconds"), (int, float)) else None),
        "test": _test_errors(metrics), "warnings": meta.get("warnings") or None,
    }
    return {k: v for k, v in info.items() if v is not None}


def describe_text(info: Mapping[str, Any]) -> str:
    """``info`` from :func:`describe` as a few lines for a terminal."""
    made = info.get("role") or "unknown role"
    switch = ", with an embedding switch" if "embedding_switch" in info else ""
    lines = [f"{info['path']}: {info['model']} {made}, {info['state_values']:,} values "
             f"({info['dtype']}{switch}), sha256 {info['sha256'][:12]}"]
    if "systems" in info:
        lines.append(f"  systems: {', '.join(map(str, info['systems']))}")
    if "init" in info:
        lines.append(f"  started from: {info['init']}")
    if "method" in info:
        lines.append(f"  merged with {info['method']} from: "
                     f"{', '.join(map(str, info.get('sources') or []))}"
                     + (f" (base {info['base']})" if info.get("base") else ""))
    if "repaired_from" in info:
        lines.append(f"  repaired from: {info['repaired_from']}")
    if "foundation_sha256" in info:
        lines.append(f"  foundation: {info['foundation_sha256'][:12]}")
    elif not any(k in info for k in ("init", "method", "repaired_from")):
        lines.append("  foundation: itself (trained from scratch)")
    else:
        lines.append("  foundation: not known (not recorded, or its start is not found here)")
    if "epochs" in info:
        run = f"  training: {info['epochs']} epochs"
        if isinstance(info.get("best_epoch"), int) and info["best_epoch"] >= 0:
            run += f", best {info['best_epoch']}"
        if "stopped_by" in info:
            run += f", stopped by {info['stopped_by']}"
        if "phases" in info:
            run += f", {info['phases']} phases"
        if "wall_minutes" in info:
            run += f", {info['wall_minutes']} min"
        lines.append(run + (" (interrupted)" if info.get("interrupted") else ""))
    test = info.get("test")
    if test:
        c = test["combined"]
        text = "  test: " + ", ".join(
            f"{label} {c[key]:.1f} {unit}" for key, label, unit in (
                ("force_mae_mev_per_a", "force MAE", "meV/Å"),
                ("energy_mae_mev_per_atom", "energy MAE", "meV/atom")) if key in c)
        for name, row in (test.get("systems") or {}).items():
            if "force_mae_mev_per_a" in row:
                text += f"; {name} {row['force_mae_mev_per_a']:.1f}"
        lines.append(text)
    for w in info.get("warnings") or ():
        lines.append(f"  merge warning: {w}")
    return "\n".join(lines)
