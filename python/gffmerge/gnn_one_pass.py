"""The one-pass validation choice of :func:`gffmerge.gnn_select.choose`.

One pass per source gives every row option's statistics (:class:`OnePass`,
:mod:`gffmerge.gnn_rows`: the first unit's output from the sparse features, the later
units' rows in float64), one factorisation per system every ridge, and each candidate is
scored from its unit weights on the validation nodes only (:func:`fast_accuracy`: the
first unit's products on the validation nodes' two-hop support; no model is built until
the choice is made). Profiled (`benchmarks/results/gnn_choice_profile.md`, CPU s per
seed, one thread, 500-epoch sources): Cora GCN 0.27 s → 0.19 s, CiteSeer SAGE 0.78 s →
0.37 s; a third pass (kernel by gathered sums, Grams by ``gffmerge_ext.gram_``, the label
sets scored together) another 1.0-1.2x; a fourth (the dual kernel by the compiled
``gffmerge_ext.row_gram_``, the first-layer products by ``gffmerge_ext.csr_mm_``, the dual
targets and the ``all`` option's first-layer output from the sources' outputs) another
1.1-1.3x; a fifth (the features converted by ``gffmerge_ext.dense_csr_count_`` /
``dense_csr_fill_``, no coalesce sorts of rows already in order, the validation nodes one
object per choice, the chosen model written without the mean of what Θ overwrites) another
1.1-1.2x, bit for bit the same result. What remains is mostly the Choleskys (three
ridges x five systems) and the scoring's propagations and first-layer products (one per
distinct first-layer weight, six per choice).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .gnn_rows import (
    ROWS,
    Source,
    _augmented,
    check_units,
    nested_grams,
    option_path,
    row_nodes,
    source_rows,
)
from .gnn_tasks import Task
from .methods import get as get_method
from .models.groups import linear_units
from .solver.state import layer_theta, mean_written


class OnePass:
    """Every source's unit rows from one forward (:func:`gffmerge.gnn_rows.source_rows`),
    the nodes of each row option, and each option's Grams formed on first use (all
    options of a unit at once: :func:`gffmerge.gnn_rows.nested_grams`)."""

    def __init__(self, backbones: Sequence[nn.Module], tasks: Sequence[Task],
                 rows: Sequence[str] = ROWS):
        shared: dict = {}
        self.backbones, self.tasks = list(backbones), list(tasks)
        self._first: dict = {}  # first-layer products of the scoring
        self.views = check_units(self.backbones[0])  # once: a module walk per call otherwise
        infos = {n: u.info for n, u in linear_units(self.backbones[0]).items()}
        self.thetas = [{n: layer_theta(b.state_dict(), n)[:i.in_features + int(i.has_bias)]
                        for n, i in infos.items()} for b in self.backbones]
        self.passes = [source_rows(b, t.graph.x, t.edges, shared, self.thetas[k],
                                   self._first)
                       for k, (b, t) in enumerate(zip(backbones, tasks))]
        self._support: dict = {}
        self._labelled: dict = {}
        self._joined_nodes: dict = {}
        self.nodes = [{r: row_nodes(t, r) for r in rows} for t in tasks]
        self.order = [r for r in ("own", "own+nbr", "all") if r in rows]  # nested
        self._grams: dict = {}

    def grams_of(self, k: int, r: str):
        """``grams(unit)`` of source ``k`` on row option ``r`` (see :class:`Source`)."""
        def get(name: str) -> Tensor:
            unit = self.passes[k][name]
            sets = [self.nodes[k][o] for o in self.order]
            key = (id(unit), name, tuple(None if s is None else tuple(s.tolist())
                                         for s in sets))
            if key not in self._grams:
                self._grams[key] = (unit, dict(zip(self.order, nested_grams(unit, sets))))
            return self._grams[key][1][r]
        return get

    def path(self, r: str, ridges: Sequence[float], *, weighting: str = "per_model",
             prior: str = "mean") -> dict[str, list[Tensor]]:
        """Row option ``r``'s unit weights for every relative ridge of ``ridges``."""
        sources = [Source(b, self.passes[k], self.nodes[k][r], self.grams_of(k, r),
                          self.thetas[k], self.outputs(k)) for k, b in enumerate(self.backbones)]
        path = option_path(sources, ridges, weighting=weighting, prior=prior)
        self._mean_output(path)
        return path

    def _mean_output(self, path: dict[str, list[Tensor]]) -> None:
        """When the first unit's weights are the sources' mean (one object for every ridge:
        the ``all`` option with equal weights and the mean prior), its output is the mean of
        the sources' outputs (the unit is linear in its weights): kept for the scoring under
        that object, so no first-layer product is formed for it."""
        name, rows = next(iter(self.passes[0].items()))
        thetas = path.get(name)
        if not thetas or any(t is not thetas[0] for t in thetas):
            return
        theta = thetas[0]
        if any(p[name] is not rows for p in self.passes[1:]):
            return
        outs = [self.outputs(k).get(name) for k in range(len(self.backbones))]
        if any(o is None for o in outs) or (id(rows), id(theta), None) in self._first:
            return
        if not torch.equal(theta, torch.stack([th for th, _ in outs]).mean(0)):
            return
        self._first[(id(rows), id(theta), None)] = (torch.stack([o for _, o in outs]).mean(0),
                                                    theta)

    def outputs(self, k: int) -> dict[str, tuple[Tensor, Tensor]]:
        """Source ``k``'s first-unit output on all nodes for its own weights, as formed by
        its pass (:func:`~gffmerge.gnn_rows.source_rows`): ``{unit: (Θ, output)}``, empty
        when the pass kept none."""
        name, rows = next(iter(self.passes[k].items()))
        theta = self.thetas[k][name]
        hit = self._first.get((id(rows), id(theta), None))
        return {} if hit is None else {name: (theta, hit[0])}

    def own_thetas(self) -> list[dict[str, Tensor]]:
        """Each source's own unit weights (the objects its rows were formed with)."""
        return self.thetas

    def support(self, k: int, mask: str):
        """Where the scoring on ``mask`` needs the first unit of source ``k``: the nodes
        of ``mask`` of every classification task on the same first rows, with their
        neighbours (the first unit's output rows) and the neighbours of those (the input
        rows its products read): ``(nodes, mask)``, one object per first rows."""
        first = next(iter(self.passes[k].values()))
        key = (id(first), mask)
        if key not in self._support:
            nodes = [t.node_labels(getattr(t.graph, mask))[0]
                     for j, t in enumerate(self.tasks)
                     if not t.is_lp and next(iter(self.passes[j].values())) is first]
            src, dst = self.tasks[k].edges[0], self.tasks[k].edges[1]
            near = torch.zeros(first.num_rows, dtype=torch.bool)
            near[torch.cat(nodes)] = True
            hops = []
            for _ in range(2):
                near = near.clone()
                near[dst[near[src]]] = True
                near[src[near[dst]]] = True
                hops.append(near)
            self._support[key] = (hops[0].nonzero().flatten(), hops[1], first)
        return self._support[key][:2]

    def accuracies(self, thetas: dict[str, Tensor], heads, mask: str = "val_mask"
                   ) -> list[float | None]:
        """Per task, the accuracy of the backbone with unit weights ``thetas`` and the
        task's head on ``mask``'s nodes of its classes (None: link prediction). Tasks on
        the same first rows and edges are scored together: the later units' rows are
        formed once for all their nodes (row by row the same numbers)."""
        out: list[float | None] = [None] * len(self.tasks)
        groups: dict = {}
        for k, t in enumerate(self.tasks):
            if not t.is_lp:
                first = next(iter(self.passes[k].values()))
                groups.setdefault((id(first), id(t.edges)), []).append(k)
        for ks in groups.values():
            k = ks[0]
            labelled = [self.labelled(j, mask) for j in ks]
            accs = fast_accuracies(thetas, self.passes[k], self.backbones[0],
                                   [heads[j] for j in ks], self.tasks[k], mask, self._first,
                                   self.support(k, mask), labelled, self.views,
                                   self._joined(tuple(ks), mask, labelled))
            for j, a in zip(ks, accs):
                out[j] = a
        return out

    def _joined(self, ks: tuple[int, ...], mask: str, labelled: list) -> Tensor:
        """The nodes of ``labelled`` one after another, one object per group of tasks and
        mask: the last unit's propagation onto them is then kept between candidates (a new
        index tensor per call formed it again every time)."""
        if (ks, mask) not in self._joined_nodes:
            self._joined_nodes[(ks, mask)] = (labelled[0][0] if len(labelled) == 1
                                              else torch.cat([n for n, _ in labelled]))
        return self._joined_nodes[(ks, mask)]

    def labelled(self, k: int, mask: str) -> tuple[Tensor, Tensor]:
        """Task ``k``'s nodes of ``mask`` in its classes and their labels (one object,
        so that the propagation onto them is formed once)."""
        if (k, mask) not in self._labelled:
            self._labelled[(k, mask)] = self.tasks[k].node_labels(getattr(self.tasks[k].graph,
                                                                          mask))
        return self._labelled[(k, mask)]

    def scores(self, thetas: dict[str, Tensor], heads, reference, mask: str = "val_mask"
               ) -> float:
        """Mean over the classification tasks of accuracy / ``reference`` accuracy."""
        ratios = [a / max(ref, 1e-12) for a, ref in
                  zip(self.accuracies(thetas, heads, mask), reference) if a is not None]
        return sum(ratios) / len(ratios)

    def references(self, heads, mask: str = "val_mask") -> list[float | None]:
        """Each source's own accuracy on ``mask`` (same float64 evaluation)."""
        return [self.accuracies(th, heads, mask)[k] for k, th in enumerate(self.own_thetas())]


def choose_one_pass(backbones, heads, tasks, options: dict, rows: Sequence[str],
                    ridges: Sequence[float]) -> tuple[nn.Module, dict]:
    """:func:`gffmerge.gnn_select.choose` on the one-pass route (same candidates, order,
    ties and result). Propagation matrices are reused within the choice only."""
    from .models.pyg import kept_propagations

    with kept_propagations():
        return _choose_one_pass(backbones, heads, tasks, options, rows, ridges)


def _choose_one_pass(backbones, heads, tasks, options, rows, ridges):
    import time

    opts = get_method("gffmerge").options(**{**options, "ridge_mode": "relative"})
    t_all = time.process_time()
    one = OnePass(backbones, tasks, rows)
    measure_s = time.process_time() - t_all
    t1 = time.process_time()
    paths = {r: one.path(r, ridges, weighting=opts.weighting, prior=opts.prior) for r in rows}
    solve_s = time.process_time() - t1
    t2 = time.process_time()
    reference = one.references(heads)
    best, candidates = None, []
    for r in rows:
        for j, ridge in enumerate(ridges):
            thetas = {n: p[j] for n, p in paths[r].items()}
            score = one.scores(thetas, heads, reference)
            candidates.append({"rows": r, "ridge": ridge, "score": score})
            if best is None or score > best[1]["score"]:
                best = (thetas, {"rows": r, "ridge": ridge, "score": score})
    score_s = time.process_time() - t2
    thetas, chosen = best
    model, _ = mean_written(backbones, thetas)
    chosen.update(candidates=candidates, route="one pass", measure_seconds=measure_s,
                  solve_seconds=solve_s, score_seconds=score_s,
                  seconds=measure_s + solve_s / (len(rows) * len(ridges)),
                  selection_seconds=time.process_time() - t_all,
                  scored_on=[t.name for t in tasks if not t.is_lp])
    return model.eval(), chosen


@torch.no_grad()
def fast_accuracy(thetas: dict[str, Tensor], rows: dict, backbone: nn.Module,
                  head: nn.Module, task: Task, mask: str = "val_mask",
                  cache: dict | None = None, support: tuple | None = None,
                  labelled: tuple | None = None,
                  views: dict | None = None) -> float:
    """Accuracy on the ``mask`` nodes (of ``task``'s classes; default: validation) of the
    backbone with unit weights ``thetas`` (``[in+1, out]``) and ``head``, in float64 from
    the first unit's measured rows (``rows``, which do not depend on the weights): the
    last convolution's rows are formed for those nodes alone. Equals
    :func:`~gffmerge.gnn_select.validation_accuracy` of the written model up to float
    rounding. ``cache``: first-layer products kept across calls (the same rows and
    weights give the same product). ``support`` (two units, first rows formed on demand):
    ``(nodes, input rows)`` of :meth:`OnePass.support`, where the first unit's output is
    formed (exact on the ``mask`` nodes' neighbours; zero elsewhere, never read).
    ``labelled``: the task's ``mask`` nodes and labels (default: formed here). ``views``:
    :func:`~gffmerge.gnn_rows.check_units` of ``backbone`` (default: formed here)."""
    return fast_accuracies(thetas, rows, backbone, [head], task, mask, cache, support,
                           None if labelled is None else [labelled], views)[0]


@torch.no_grad()
def fast_accuracies(thetas: dict[str, Tensor], rows: dict, backbone: nn.Module,
                    heads: Sequence[nn.Module], task: Task, mask: str = "val_mask",
                    cache: dict | None = None, support: tuple | None = None,
                    labelled: Sequence[tuple] | None = None,
                    views: dict | None = None, nodes: Tensor | None = None) -> list[float]:
    """:func:`fast_accuracy` of several heads on the same rows and graph (``task``'s edges),
    head ``i`` on the nodes and labels ``labelled[i]`` (default: ``task``'s ``mask`` nodes
    for every head): the units are evaluated once, the last one on all those nodes
    together (the rows of a node do not depend on the other nodes: the same numbers as
    one call per head). ``nodes``: ``labelled``'s nodes one after another, when the caller
    keeps them as one object (the propagation onto them is then kept between calls inside
    :func:`~gffmerge.models.pyg.kept_propagations`)."""
    from .models.pyg import node_rows

    if labelled is None:
        labelled = [task.node_labels(getattr(task.graph, mask))] * len(heads)
    for own, _ in labelled:
        if len(own) == 0:
            raise ValueError(f"task '{task.name}' has no {mask} nodes of its classes; the "
                             "validation choice needs some (use a graph with a val_mask)")
    if nodes is None:
        nodes = (labelled[0][0] if len(labelled) == 1
                 else torch.cat([n for n, _ in labelled]))
    elif sum(len(n) for n, _ in labelled) != len(nodes):
        raise ValueError("nodes must be labelled's nodes one after another")
    views = check_units(backbone) if views is None else views
    names = list(views)
    first = rows[names[0]]
    if first.key is None:
        raise ValueError("the first unit's rows depend on the weights; use "
                         "choose_per_candidate")
    if len(names) == 1:
        x = first.take(nodes)
        h = (torch.sparse.mm(x, thetas[names[0]]) if first.sparse else x @ thetas[names[0]])
    else:
        theta = thetas[names[0]]
        if len(names) != 2 or first._src is None:
            support = None
        full, key = (id(first), id(theta), None), (id(first), id(theta), mask)
        if cache is not None and (full in cache or key in cache):
            h = cache[full if full in cache else key][0]
        elif support is None:
            h = first.matmul(theta)
            if cache is not None:  # Θ kept alive with the entry: its id stays unique
                cache[full] = (h, theta)
        else:
            h = theta.new_zeros(first.num_rows, theta.shape[1])
            h[support[0]] = first.matmul(theta, support[0], support[1])
            if cache is not None:
                cache[key] = (h, theta)
    h = h.relu()
    for i, name in enumerate(names[1:], start=1):
        last = i == len(names) - 1
        with node_rows(nodes if last else None):
            inp = views[name].gram_parts(h, task.edges)
        x = _augmented(inp, thetas[name].shape[0] == views[name].in_features + 1)
        h = (torch.sparse.mm(x, thetas[name]) if x.layout != torch.strided
             else x @ thetas[name]).relu()
    out, start = [], 0
    for head, (n, labels) in zip(heads, labelled):
        hk = h[start:start + len(n)]
        start += len(n)
        w = head.weight.detach().to(torch.float64)
        logits = hk @ w.T + (0.0 if head.bias is None
                             else head.bias.detach().to(torch.float64))
        out.append(float((logits.argmax(-1) == labels).double().mean()))
    return out
