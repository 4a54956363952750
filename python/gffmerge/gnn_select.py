"""Which nodes a GNN merge is measured on, and the choice of rows and ridge on validation.

GNNMerge's objective matches each source on *its own* nodes; measuring every node instead
is label-free but gives every source the same first-layer Gram (one graph, the same raw
features), so the first layer becomes the plain average. The rows are an option of the
closed-form merges of :mod:`gffmerge.gnn_experiment` (``rows``):

* ``all``: every node of the source's graph;
* ``own``: the source's labelled training nodes (GNNMerge++'s code; a link-prediction
  source has no labelled nodes: its training edges span the graph, so every node);
* ``own+nbr``: those nodes and their neighbours in the message-passing graph.

``rows="val"`` chooses the rows and the relative ridge together on the validation nodes
(the standard split's ``val_mask``, each source's classes, scored with the source's head
on the merged backbone relative to the source itself): never on test nodes. Only
node-classification tasks have validation nodes; a link-prediction task does not enter the
score (recorded in the choice).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from .collect import InputCache, measure
from .gnn_one_pass import choose_one_pass
from .gnn_rows import ROWS, row_nodes  # noqa: F401  (re-exported)
from .gnn_tasks import Task
from .methods import get as get_method
from .stats import Stats

CHOICE_RIDGES = (1e-4, 1e-2, 1.0)
"""Relative ridges the validation choice tries with every row option."""


def measure_sources(backbones: Sequence[nn.Module], tasks: Sequence[Task], rows: str
                    ) -> Stats:
    """Every source measured on its task's graph, on the rows ``rows`` (the first layer's
    Gram is formed once when the sources share its input rows)."""
    from .models.pyg import node_rows

    shared = InputCache()
    stats = []
    for b, t in zip(backbones, tasks):
        nodes = row_nodes(t, rows)

        def forward(model, batch, nodes=nodes):
            with node_rows(nodes):
                return model(*batch)

        stats.append(measure(b, [(t.graph.x, t.edges)], progress=False, label=t.name,
                             shared=shared, forward=forward))
    return Stats.concat(stats)


@torch.no_grad()
def validation_accuracy(backbone: nn.Module, head: nn.Module, task: Task) -> float:
    """Accuracy of ``backbone`` + ``head`` on the validation nodes of ``task``'s classes."""
    backbone.eval()
    nodes, labels = task.node_labels(task.graph.val_mask)
    if len(nodes) == 0:
        raise ValueError(f"task '{task.name}' has no validation nodes of its classes; the "
                         "validation choice needs some (use a graph with a val_mask)")
    h = backbone(task.graph.x, task.edges)
    return float((head(h[nodes]).argmax(-1) == labels).double().mean())


def validation_score(backbone: nn.Module, heads: Sequence[nn.Module | None],
                     tasks: Sequence[Task], reference: Sequence[float | None]) -> float:
    """Mean over the classification tasks of merged / source validation accuracy."""
    ratios = [validation_accuracy(backbone, h, t) / max(r, 1e-12)
              for h, t, r in zip(heads, tasks, reference) if not t.is_lp]
    return sum(ratios) / len(ratios)


def choose_per_candidate(backbones: Sequence[nn.Module], heads: Sequence[nn.Module | None],
           tasks: Sequence[Task], registered: str, options: dict, *,
           rows: Sequence[str] = ROWS, ridges: Sequence[float] = CHOICE_RIDGES
           ) -> tuple[nn.Module, dict]:
    """:func:`choose` by measuring, solving and scoring every candidate separately (the
    reference, and the route for backbones or methods the one-pass choice does not
    cover)."""
    if not any(not t.is_lp for t in tasks):
        raise ValueError("choosing rows and ridge on validation nodes needs a node-"
                         "classification task; give rows= and ridge= instead")
    t_all = time.process_time()
    reference = [None if t.is_lp else validation_accuracy(b, h, t)
                 for b, h, t in zip(backbones, heads, tasks)]
    method = get_method(registered)
    best, candidates = None, []
    for r in rows:
        t0 = time.process_time()
        stats = measure_sources(backbones, tasks, r)
        measure_s = time.process_time() - t0
        for ridge in ridges:
            t1 = time.process_time()
            model = method(list(backbones), stats, **{**options, "ridge": ridge,
                                                      "ridge_mode": "relative"}).model
            solve_s = time.process_time() - t1
            score = validation_score(model, heads, tasks, reference)
            candidates.append({"rows": r, "ridge": ridge, "score": score})
            if best is None or score > best[1]["score"]:
                best = (model, {"rows": r, "ridge": ridge, "score": score,
                                "seconds": measure_s + solve_s})
    model, chosen = best
    chosen["candidates"] = candidates
    chosen["selection_seconds"] = time.process_time() - t_all
    chosen["scored_on"] = [t.name for t in tasks if not t.is_lp]
    chosen["route"] = "per candidate"
    return model, chosen


def _one_pass_ok(backbones: Sequence[nn.Module], registered: str, options: dict) -> str:
    """Why the one-pass choice does not cover this merge ('' when it does)."""
    from .gnn_rows import check_units
    from .gnn_tasks import Backbone

    if registered != "gffmerge":
        return f"method '{registered}' (the one-pass choice solves gffmerge's closed form)"
    opts = get_method(registered).options(**{**options, "ridge_mode": "relative"})
    if opts.target != "weights" or opts.alpha != 1.0 or opts.fit_intercept != "auto":
        return "target, alpha or intercept other than the defaults"
    if not all(isinstance(b, Backbone) for b in backbones):
        return "a backbone that is not gffmerge.gnn_tasks.Backbone"
    try:
        check_units(backbones[0])
    except ValueError as err:
        return str(err)
    return ""


def choose(backbones: Sequence[nn.Module], heads: Sequence[nn.Module | None],
           tasks: Sequence[Task], registered: str, options: dict, *,
           rows: Sequence[str] = ROWS, ridges: Sequence[float] = CHOICE_RIDGES
           ) -> tuple[nn.Module, dict]:
    """The merge (``registered`` method with ``options``, the relative ridge replaced)
    whose rows and ridge score best on the validation nodes; ties keep the earlier
    candidate (``rows`` order, then ``ridges`` order). Returns the merged backbone and the
    choice: ``rows``, ``ridge``, ``score``, every candidate's score, the seconds of its
    parts and of the whole choice, and the ``route``.

    GCN / SAGE backbones (:class:`~gffmerge.gnn_tasks.Backbone`) merged by gffmerge's
    closed form take the one-pass route (:mod:`gffmerge.gnn_rows`): one forward per
    source gives every row option's statistics, one factorisation per system every
    ridge, and the candidates are scored from their weights on the validation nodes only;
    the candidates, scores and result are those of :func:`choose_per_candidate` (up to
    float rounding). Other merges take that route (recorded)."""
    if not any(not t.is_lp for t in tasks):
        raise ValueError("choosing rows and ridge on validation nodes needs a node-"
                         "classification task; give rows= and ridge= instead")
    why = _one_pass_ok(backbones, registered, options)
    if why:
        model, chosen = choose_per_candidate(backbones, heads, tasks, registered, options,
                                             rows=rows, ridges=ridges)
        chosen["route_reason"] = why
        return model, chosen
    return choose_one_pass(backbones, heads, tasks, options, rows, ridges)
