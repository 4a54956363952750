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
from torch import Tensor, nn

from .collect import InputCache, measure
from .gnn_tasks import Task
from .methods import get as get_method
from .stats import Stats

ROWS = ("all", "own", "own+nbr")
CHOICE_RIDGES = (1e-4, 1e-2, 1.0)
"""Relative ridges the validation choice tries with every row option."""


def row_nodes(task: Task, rows: str) -> Tensor | None:
    """The destination nodes measured for ``task``'s source (None: all nodes)."""
    if rows not in ROWS:
        raise ValueError(f"rows={rows!r} is not valid; choose one of {', '.join(ROWS)}")
    if rows == "all" or task.is_lp:
        return None
    own = task.node_labels(task.graph.train_mask)[0]
    if rows == "own":
        return own
    mark = torch.zeros(task.graph.num_nodes, dtype=torch.bool)
    mark[own] = True
    src, dst = task.edges[0], task.edges[1]
    near = mark.clone()
    near[dst[mark[src]]] = True
    near[src[mark[dst]]] = True
    return near.nonzero().flatten()


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
    return _choose_one_pass(backbones, heads, tasks, options, rows, ridges)


def _choose_one_pass(backbones, heads, tasks, options, rows, ridges):
    from .gnn_rows import nested_grams, source_rows
    from .solver.state import layer_theta, mean_state_dict, write_back

    opts = get_method("gffmerge").options(**{**options, "ridge_mode": "relative"})
    t_all = time.process_time()
    shared: dict = {}
    passes = [source_rows(b, t.graph.x, t.edges, shared) for b, t in zip(backbones, tasks)]
    nodes = [{r: row_nodes(t, r) for r in rows} for t in tasks]
    order = sorted(rows, key=ROWS.index)  # own ⊂ own+nbr ⊂ all
    order = [r for r in ("own", "own+nbr", "all") if r in order]
    cache: dict = {}

    def grams_of(k: int, r: str):
        def get(name: str) -> Tensor:
            unit = passes[k][name]
            sets = [nodes[k][o] for o in order]
            key = (id(unit), name, tuple(None if s is None else tuple(s.tolist())
                                         for s in sets))
            if key not in cache:
                cache[key] = (unit, dict(zip(order, nested_grams(unit, sets))))
            return cache[key][1][r]
        return get

    measure_s = time.process_time() - t_all
    t1 = time.process_time()
    paths = {r: _path(r, backbones, passes, nodes, grams_of, ridges, opts) for r in rows}
    solve_s = time.process_time() - t1
    t2 = time.process_time()
    units = list(passes[0])
    own = [{n: layer_theta(b.state_dict(), n)[:passes[0][n].x.shape[1]] for n in units}
           for b in backbones]
    reference = [None if t.is_lp else fast_accuracy(own[k], passes[k], backbones[0], heads[k],
                                                    t)
                 for k, t in enumerate(tasks)]
    best, candidates = None, []
    for r in rows:
        for j, ridge in enumerate(ridges):
            thetas = {n: paths[r][n][j] for n in units}
            ratios = [fast_accuracy(thetas, passes[k], backbones[0], heads[k], t)
                      / max(reference[k], 1e-12) for k, t in enumerate(tasks) if not t.is_lp]
            score = sum(ratios) / len(ratios)
            candidates.append({"rows": r, "ridge": ridge, "score": score})
            if best is None or score > best[1]["score"]:
                best = (thetas, {"rows": r, "ridge": ridge, "score": score})
    score_s = time.process_time() - t2
    thetas, chosen = best
    model, _ = write_back(backbones[0], mean_state_dict(backbones), thetas)
    chosen.update(candidates=candidates, route="one pass", measure_seconds=measure_s,
                  solve_seconds=solve_s, score_seconds=score_s,
                  seconds=measure_s + solve_s / (len(rows) * len(ridges)),
                  selection_seconds=time.process_time() - t_all,
                  scored_on=[t.name for t in tasks if not t.is_lp])
    return model.eval(), chosen


def _path(r, backbones, passes, nodes, grams_of, ridges, opts):
    from .gnn_rows import Source, option_path

    sources = [Source(b, passes[k], nodes[k][r], grams_of(k, r))
               for k, b in enumerate(backbones)]
    return option_path(sources, ridges, weighting=opts.weighting, prior=opts.prior)


@torch.no_grad()
def fast_accuracy(thetas: dict[str, Tensor], rows: dict, backbone: nn.Module,
                  head: nn.Module, task: Task) -> float:
    """Validation accuracy of the backbone with unit weights ``thetas`` (``[in+1, out]``)
    and ``head``, in float64 from the first unit's measured rows (``rows``, which do not
    depend on the weights) on the validation nodes only: the last convolution's rows are
    formed for those nodes alone. Equals :func:`validation_accuracy` of the written model
    up to float rounding."""
    from .gnn_rows import _augmented, check_units
    from .models.pyg import node_rows

    nodes, labels = task.node_labels(task.graph.val_mask)
    if len(nodes) == 0:
        raise ValueError(f"task '{task.name}' has no validation nodes of its classes; the "
                         "validation choice needs some (use a graph with a val_mask)")
    views = check_units(backbone)
    names = list(views)
    first = rows[names[0]]
    if first.key is None:
        raise ValueError("the first unit's rows depend on the weights; use "
                         "choose_per_candidate")
    x = first.take(nodes) if len(names) == 1 else first.x
    h = (torch.sparse.mm(x, thetas[names[0]]) if first.sparse else x @ thetas[names[0]])
    h = h.relu()
    for i, name in enumerate(names[1:], start=1):
        last = i == len(names) - 1
        with node_rows(nodes if last else None):
            inp = views[name].gram_parts(h, task.edges)
        x = _augmented(inp, thetas[name].shape[0] == views[name].in_features + 1)
        h = (torch.sparse.mm(x, thetas[name]) if x.layout != torch.strided
             else x @ thetas[name]).relu()
    w = head.weight.detach().to(torch.float64)
    logits = h @ w.T + (0.0 if head.bias is None else head.bias.detach().to(torch.float64))
    return float((logits.argmax(-1) == labels).double().mean())
