"""What a merge did, layer by layer: rows, conditioning, jitter, drift, fit residual, times."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass
class LayerReport:
    """Diagnostics of one solved (or skipped) linear layer."""

    name: str
    in_features: int
    out_features: int
    rows: list[int]  # per source model
    solved: bool = True  # False: no data reached the layer, it keeps the mean
    intercept: bool = False  # fitted with [x, 1] inputs
    ridge: float = 0.0  # absolute λ actually added
    cond: float = math.nan  # cond₂ of the regularised matrix
    jitter: float = 0.0  # extra diagonal added after a failed Cholesky
    fallback: str = ""  # "" or the method used when Cholesky failed
    rel_distance: float = math.nan  # ‖Θ − Θ̄‖ / ‖Θ̄‖ (Θ̄ = sources' mean)
    rel_residual: float = math.nan  # Σ_k ‖X̃_k(Θ − Θ_k)‖² / Σ_k ‖X̃_k Θ_k‖²


@dataclass
class MergeReport:
    """Report of one merge; ``layers`` lists every linear layer considered."""

    method: str
    options: dict
    num_models: int
    layers: list[LayerReport] = field(default_factory=list)
    averaged: list[str] = field(default_factory=list)  # state-dict keys set to the mean
    warnings: list[str] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)  # seconds: measure, solve, total

    @property
    def unreached(self) -> list[str]:
        return [lr.name for lr in self.layers if not lr.solved]

    def note_unsolved(self, infos: dict, never_called: Sequence[str]) -> None:
        """Add an unsolved row for each layer of ``infos`` (name → ``LinearInfo``) without a
        row yet, and a warning naming the layers the forward ``never_called``."""
        seen = {lr.name for lr in self.layers}
        for name, info in infos.items():
            if name not in seen:
                self.layers.append(LayerReport(name, info.in_features, info.out_features,
                                               [0] * self.num_models, solved=False))
        if never_called:
            self.warnings.append(f"{len(never_called)} layer(s) are never called by the "
                                 f"forward and keep the sources' mean: "
                                 f"{', '.join(never_called[:10])}")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v
        return json.dumps(clean(self.to_dict()), indent=2)

    def pick(self, labels: Sequence[str] | None = None) -> str:
        """What a validated search picked (methods that record ``chosen`` among
        ``anchors_tried``), in words: a merge with its ridge, β and start, the foundation,
        or one source by itself (named from ``labels``, the sources' names in order, when
        given); "" when nothing was chosen."""
        o = self.options or {}
        chosen = o.get("chosen")
        if not isinstance(chosen, str) or "anchors_tried" not in o:
            return ""
        if chosen == "base":
            return "the foundation"
        if chosen == "source":
            best = min((a for a in o["anchors_tried"] or () if a.get("kind") == "source"),
                       key=lambda a: a["val_force_mae_mev_per_a"], default=None)
            lams = list(((best or {}).get("params") or {}).get("lams") or ())
            k = lams.index(1.0) if 1.0 in lams else None
            who = (f"source {k}" + (f" ({labels[k]})" if labels and k < len(labels) else "")
                   if k is not None else "one source")
            return f"{who} by itself"
        what = chosen.replace("_", " ")
        if o.get("chosen_ridge") is not None:
            what += f", ridge {o['chosen_ridge']:g}, β {o.get('chosen_beta') or 0:g}"
        start = o.get("chosen_start")
        if start not in (None, "mean"):
            what += ", from " + {"base": "the foundation", "source": "one source",
                                 "ties": "TIES"}.get(start, str(start).replace("_", " "))
        return what

    def _picked(self) -> str:
        """What a validated search picked (methods that record ``chosen``), in one line."""
        o = self.options or {}
        what = self.pick()
        if not what:
            return ""
        n = len(o.get("anchors_tried") or ()) + len(o.get("grid") or ())
        score = o.get("val_force_mae_mev_per_a")
        line = f"Picked on validation: {what}"
        if isinstance(score, float) and math.isfinite(score):
            line += f" (score {score:.4g}, {o.get('val_score', 'per_system')})"
        line += f", among {n} candidates"
        stages = o.get("stages")
        if stages:
            line += f"; {len(stages)} stage(s)"
        return line + "."

    def to_markdown(self) -> str:
        """The search's pick (when there was one) and a table of the per-layer
        diagnostics."""
        lines = [f"# Merge report: {self.method} ({self.num_models} models)", ""]
        if self.times:
            lines.append("Times: " + ", ".join(f"{k} {v:.3f} s" for k, v in self.times.items()))
            lines.append("")
        picked = self._picked()
        if picked:
            lines += [picked, ""]
        lines += ["| layer | in→out | rows per model | cond₂ | jitter | ‖Θ−Θ̄‖/‖Θ̄‖ | residual |",
                  "|---|---|---|---|---|---|---|"]
        for lr in self.layers:
            rows = "/".join(str(r) for r in lr.rows)
            if not lr.solved:
                lines.append(f"| {lr.name} | {lr.in_features}→{lr.out_features} | {rows} | "
                             "— | — | (mean: no data) | — |")
                continue
            jit = f"{lr.jitter:.1e}" + (f" ({lr.fallback})" if lr.fallback else "")
            lines.append(f"| {lr.name} | {lr.in_features}→{lr.out_features} | {rows} | "
                         f"{lr.cond:.2e} | {jit} | {lr.rel_distance:.3g} | "
                         f"{lr.rel_residual:.3g} |")
        if self.warnings:
            lines += ["", "Warnings:", *[f"- {w}" for w in self.warnings]]
        return "\n".join(lines) + "\n"


@dataclass
class MergeResult:
    """The merged model and the report of how it was made."""

    model: object
    report: MergeReport
    # other candidates a method scored, by label (progressive, ``alternatives=True``)
    alternatives: dict[str, object] = field(default_factory=dict)
