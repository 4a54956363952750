"""GNNMerge's settings on PyTorch Geometric models: train sources, merge backbones, compare.

Every source is a PyG backbone (two convolutions, ReLU after each) plus its own head,
trained from its own random initialisation. A merge combines the *backbones* only; each task
is then evaluated with its source's unchanged head on the merged backbone (GNNMerge §8.2).

Settings (``setting``):

* ``in-domain``: one graph, its classes split into the first ⌈C/2⌉ and the rest; source k
  trains on the training nodes of its classes (labels re-indexed) and is tested on the test
  nodes of its classes.
* ``cross-domain``: two graphs with one feature space, each with its own classes (two SBM
  graphs drawn with the same class means; the Planetoid pair has no shared feature space
  here, see :func:`graphs_for`).
* ``nc-lp``: one graph; source 1 classifies nodes (all classes), source 2 predicts links
  (dot-product decoder, BCE with one negative per positive edge, AUC on held-out edges);
  both see the graph without the held-out edges.

Each source's statistics are its backbone's layer inputs on *all* nodes of its graph (the
task-agnostic, label-free alignment). ``normalized_accuracy`` is the mean over tasks of the
merged score over the source's score (accuracy; AUC for link prediction). Also recorded:
the sources' training time and that of one model trained on all tasks from scratch.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .atomic import write_text_atomically
from .collect import measure
from .methods import get as get_method
from .stats import Stats

DATASETS = ("cora", "citeseer", "sbm")
SETTINGS = ("in-domain", "cross-domain", "nc-lp")
BACKBONES = ("gcn", "sage", "gin", "gat")
# name in the results -> (registered method, its options); "gnnmerge++" is the closed form
# with equal per-model weighting, "gffmerge" the pooled (row-count weighted) one; a relative
# ridge because bag-of-words inputs leave directions without data (singular Grams); no
# cond₂ (an eigen-decomposition per layer would cost more than the solve).
METHODS: dict[str, tuple[str, dict]] = {
    "gnnmerge++": ("gffmerge", {"weighting": "per_model", "ridge": 1e-4,
                                "ridge_mode": "relative", "condition": False}),
    "gffmerge": ("gffmerge", {"weighting": "pooled", "ridge": 1e-4, "ridge_mode": "relative",
                              "condition": False}),
    "gnnmerge": ("gnnmerge", {}),
    "average": ("average", {}),
    "task_arithmetic": ("task_arithmetic", {}),
    "ties": ("ties", {}),
    "regmean": ("regmean", {"ridge": 1e-4, "ridge_mode": "relative", "condition": False}),
}
DEFAULT_METHOD = "gnnmerge++"


@dataclass(frozen=True)
class GnnExperimentConfig:
    """What :func:`run` does; every field has the default of ``gffmerge gnn-experiment``."""

    dataset: str = "cora"
    setting: str = "in-domain"
    backbone: str = "gcn"
    seeds: int = 3
    epochs: int = 200
    hidden: int = 128
    lr: float = 0.005
    weight_decay: float = 5e-4
    sbm_nodes: int = 20000
    all_tasks: bool = True  # also time one model trained on all tasks from scratch
    methods: tuple[str, ...] = tuple(METHODS)

    def __post_init__(self):
        for name, value, valid in (("dataset", self.dataset, DATASETS),
                                   ("setting", self.setting, SETTINGS),
                                   ("backbone", self.backbone, BACKBONES)):
            if value not in valid:
                raise ValueError(f"{name}={value!r} is not valid; choose one of "
                                 f"{', '.join(valid)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(METHODS)}")
        if self.seeds < 1 or self.epochs < 1 or self.hidden < 1:
            raise ValueError("seeds, epochs and hidden must be positive")


# ---------------------------------------------------------------- models
class Backbone(nn.Module):
    """Two PyG convolutions with a ReLU after each: ``gcn`` (GCNConv), ``sage`` (SAGEConv,
    mean), ``gin`` (GINConv over a two-Linear MLP), ``gat`` (GATConv, 4 heads)."""

    def __init__(self, kind: str, d_in: int, hidden: int):
        super().__init__()
        self.convs = nn.ModuleList([_conv(kind, d_in, hidden), _conv(kind, hidden, hidden)])

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x, edge_index).relu()
        return x


def _conv(kind: str, d_in: int, d_out: int) -> nn.Module:
    from torch_geometric.nn import MLP, GATConv, GCNConv, GINConv, SAGEConv

    if kind == "gcn":
        return GCNConv(d_in, d_out)
    if kind == "sage":
        return SAGEConv(d_in, d_out)
    if kind == "gin":
        return GINConv(MLP([d_in, d_out, d_out], norm=None))
    heads = 4
    return GATConv(d_in, d_out // heads, heads=heads)


@dataclass
class Task:
    """One task on one graph: node classification over ``classes`` (original labels), or
    link prediction (``classes`` empty)."""

    name: str
    graph: object
    classes: tuple[int, ...] = ()
    train_edges: Tensor | None = None  # message-passing edges (nc-lp: without held-out ones)
    test_pos: Tensor | None = None  # held-out edges [2, P] (link prediction)
    test_neg: Tensor | None = None

    @property
    def is_lp(self) -> bool:
        return not self.classes

    @property
    def edges(self) -> Tensor:
        return self.train_edges if self.train_edges is not None else self.graph.edge_index

    def node_labels(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Nodes of ``mask`` with a label in this task's classes, and re-indexed labels."""
        y = self.graph.y
        remap = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
        remap[list(self.classes)] = torch.arange(len(self.classes))
        keep = mask & (remap[y] >= 0)
        nodes = keep.nonzero().flatten()
        return nodes, remap[y[nodes]]


def train_source(task: Task, kind: str, cfg: GnnExperimentConfig, seed: int
                 ) -> tuple[Backbone, nn.Module | None, float]:
    """Backbone (+ linear head for classification) trained on ``task`` from the random
    initialisation of ``seed``; returns them and the training seconds."""
    torch.manual_seed(seed)
    g = task.graph
    backbone = Backbone(kind, g.num_features, cfg.hidden)
    head = None if task.is_lp else nn.Linear(cfg.hidden, len(task.classes))
    params = list(backbone.parameters()) + ([] if head is None else list(head.parameters()))
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if not task.is_lp:
        nodes, labels = task.node_labels(g.train_mask)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        backbone.train()
        opt.zero_grad()
        h = backbone(g.x, task.edges)
        if head is not None:
            loss = F.cross_entropy(head(h[nodes]), labels)
        else:
            pos = task.edges
            neg = torch.randint(0, g.num_nodes, pos.shape, generator=gen)
            loss = (F.binary_cross_entropy_with_logits(_score(h, pos), torch.ones(pos.shape[1]))
                    + F.binary_cross_entropy_with_logits(_score(h, neg),
                                                         torch.zeros(neg.shape[1])))
        loss.backward()
        opt.step()
    return backbone.eval(), head, time.perf_counter() - t0


def train_all_tasks(tasks: Sequence[Task], kind: str, cfg: GnnExperimentConfig, seed: int
                    ) -> float:
    """Seconds to train one backbone with every task's head jointly from scratch (the
    retraining a merge avoids): summed losses, same epochs and optimiser."""
    torch.manual_seed(seed)
    backbone = Backbone(kind, tasks[0].graph.num_features, cfg.hidden)
    heads = nn.ModuleList([nn.Linear(cfg.hidden, max(1, len(t.classes))) for t in tasks])
    opt = torch.optim.Adam(list(backbone.parameters()) + list(heads.parameters()), lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    prepared = [None if t.is_lp else t.node_labels(t.graph.train_mask) for t in tasks]
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        opt.zero_grad()
        loss = 0.0
        for t, head, lab in zip(tasks, heads, prepared):
            h = backbone(t.graph.x, t.edges)
            if lab is not None:
                loss = loss + F.cross_entropy(head(h[lab[0]]), lab[1])
            else:
                neg = torch.randint(0, t.graph.num_nodes, t.edges.shape, generator=gen)
                loss = loss + F.binary_cross_entropy_with_logits(
                    _score(h, t.edges), torch.ones(t.edges.shape[1])) + \
                    F.binary_cross_entropy_with_logits(_score(h, neg),
                                                       torch.zeros(neg.shape[1]))
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def _score(h: Tensor, pairs: Tensor) -> Tensor:
    return (h[pairs[0]] * h[pairs[1]]).sum(-1)


def auc(pos: Tensor, neg: Tensor) -> float:
    """Area under the ROC curve of scores ``pos`` against ``neg`` (ties count one half)."""
    scores = torch.cat([pos, neg]).double()
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average ranks of ties
    uniq, inv = torch.unique(scores, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, ranks)
    cnt = torch.bincount(inv, minlength=len(uniq)).double()
    ranks = (sums / cnt)[inv]
    n_p, n_n = len(pos), len(neg)
    return float((ranks[:n_p].sum() - n_p * (n_p + 1) / 2) / (n_p * n_n))


@torch.no_grad()
def evaluate(backbone: nn.Module, head: nn.Module | None, task: Task) -> float:
    """Test accuracy (classification) or AUC (link prediction) of ``backbone`` + ``head``."""
    backbone.eval()
    h = backbone(task.graph.x, task.edges)
    if task.is_lp:
        return auc(_score(h, task.test_pos), _score(h, task.test_neg))
    nodes, labels = task.node_labels(task.graph.test_mask)
    if len(nodes) == 0:
        raise ValueError(f"task '{task.name}' has no test nodes; use a larger graph")
    return float((head(h[nodes]).argmax(-1) == labels).double().mean())


# ---------------------------------------------------------------- data and tasks
def graphs_for(cfg: GnnExperimentConfig, seed: int) -> list:
    """One graph (in-domain, nc-lp) or two graphs with one feature space (cross-domain)."""
    from .data.graphs import load_planetoid, sbm_graph

    if cfg.dataset == "sbm":
        count = 2 if cfg.setting == "cross-domain" else 1
        return [sbm_graph(cfg.sbm_nodes, seed=1000 * seed + k, feature_seed=seed)
                for k in range(count)]
    if cfg.setting == "cross-domain":
        raise ValueError("cross-domain needs graphs with one feature space: Cora and CiteSeer "
                         "have different bag-of-words vocabularies (GNNMerge used shared "
                         "SentenceBERT text features, not shipped); use --dataset sbm")
    return [load_planetoid(cfg.dataset)]


def tasks_for(cfg: GnnExperimentConfig, graphs: list, seed: int) -> list[Task]:
    g = graphs[0]
    n_classes = int(g.y.max()) + 1
    half = -(-n_classes // 2)
    if cfg.setting == "in-domain":
        return [Task(f"classes 0-{half - 1}", g, tuple(range(half))),
                Task(f"classes {half}-{n_classes - 1}", g, tuple(range(half, n_classes)))]
    if cfg.setting == "cross-domain":
        # each graph its own half of the classes: different graphs, different label sets
        return [Task(f"graph A classes 0-{half - 1}", graphs[0], tuple(range(half))),
                Task(f"graph B classes {half}-{n_classes - 1}", graphs[1],
                     tuple(range(half, n_classes)))]
    train_edges, test_pos, test_neg = split_edges(g, seed)
    return [Task("node classification", g, tuple(range(n_classes)), train_edges),
            Task("link prediction", g, (), train_edges, test_pos, test_neg)]


def split_edges(g, seed: int, test_fraction: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Hold out ``test_fraction`` of the undirected node pairs joined by an edge (both
    directions, and every copy of a repeated edge, removed from the message-passing graph)
    and as many random node pairs as negatives."""
    ei = g.edge_index
    ei = ei[:, ei[0] != ei[1]]
    und = torch.unique(torch.stack([ei.min(0).values, ei.max(0).values]), dim=1)
    gen = torch.Generator().manual_seed(seed + 17)
    perm = torch.randperm(und.shape[1], generator=gen)
    n_test = max(1, int(test_fraction * und.shape[1]))
    test, keep = und[:, perm[:n_test]], und[:, perm[n_test:]]
    train = torch.cat([keep, keep.flip(0)], dim=1)
    neg = torch.randint(0, g.num_nodes, (2, n_test), generator=gen)
    return train, test, neg


# ---------------------------------------------------------------- merging
def _zero_like(model: nn.Module) -> nn.Module:
    zero = copy.deepcopy(model)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    return zero


def merge_all(backbones: Sequence[nn.Module], tasks: Sequence[Task],
              methods: Sequence[str]) -> dict[str, tuple[nn.Module, float]]:
    """Every method's merged backbone and its seconds (measure + solve for the methods on
    statistics). Task arithmetic and TIES have no common pre-trained model here (the
    sources start from different random initialisations): their base is the zero model."""
    t0 = time.perf_counter()
    stats = Stats.concat([measure(b, [(t.graph.x, t.edges)], progress=False,
                                  label=t.name) for b, t in zip(backbones, tasks)])
    measure_s = time.perf_counter() - t0
    out = {}
    for name in methods:
        registered, options = METHODS[name]
        method = get_method(registered)
        needs = method.needs_for(method.options(**options))
        t1 = time.perf_counter()
        result = method(list(backbones), stats if needs.stats else None,
                        base=_zero_like(backbones[0]) if needs.base_model else None,
                        **options)
        seconds = time.perf_counter() - t1 + (measure_s if needs.stats else 0.0)
        out[name] = (result.model, seconds)
    return out


# ---------------------------------------------------------------- the run
@dataclass
class SeedResult:
    seed: int
    sources: dict[str, dict] = field(default_factory=dict)
    all_tasks_seconds: float = 0.0
    methods: dict[str, dict] = field(default_factory=dict)


def run_seed(cfg: GnnExperimentConfig, seed: int) -> SeedResult:
    graphs = graphs_for(cfg, seed)
    tasks = tasks_for(cfg, graphs, seed)
    res = SeedResult(seed)
    backbones, heads = [], []
    for k, task in enumerate(tasks):
        b, h, secs = train_source(task, cfg.backbone, cfg, seed=100 * seed + 10 * k + 1)
        backbones.append(b)
        heads.append(h)
        score = evaluate(b, h, task)
        res.sources[task.name] = {"metric": "auc" if task.is_lp else "accuracy",
                                  "score": score, "seconds": secs}
    if cfg.all_tasks:
        res.all_tasks_seconds = train_all_tasks(tasks, cfg.backbone, cfg, seed=100 * seed + 99)
    for name, (merged, secs) in merge_all(backbones, tasks, cfg.methods).items():
        per_task = {}
        ratios = []
        for task, head in zip(tasks, heads):
            score = evaluate(merged, head, task)
            metric = "auc" if task.is_lp else "accuracy"
            per_task[task.name] = {metric: score}
            ratios.append(score / res.sources[task.name]["score"])
        res.methods[name] = {"normalized_accuracy": sum(ratios) / len(ratios),
                             "tasks": per_task, "seconds": secs}
    return res


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / max(1, len(values) - 1))
    return m, s


def summarize(cfg: GnnExperimentConfig, seeds: Sequence[SeedResult]) -> dict:
    """``results.json``: per-method means over seeds in the issue's shape, plus the seeds."""
    methods = {}
    for name in cfg.methods:
        runs = [s.methods[name] for s in seeds]
        tasks = {}
        for task in runs[0]["tasks"]:
            tasks[task] = {metric: _mean_std([r["tasks"][task][metric] for r in runs])[0]
                           for metric in runs[0]["tasks"][task]}
        na, na_std = _mean_std([r["normalized_accuracy"] for r in runs])
        methods[name] = {"normalized_accuracy": na, "normalized_accuracy_std": na_std,
                         "tasks": tasks,
                         "seconds": _mean_std([r["seconds"] for r in runs])[0]}
    sources = {}
    for task in seeds[0].sources:
        metric = seeds[0].sources[task]["metric"]
        sources[task] = {metric: _mean_std([s.sources[task]["score"] for s in seeds])[0],
                         "seconds": _mean_std([s.sources[task]["seconds"] for s in seeds])[0]}
    source_s = _mean_std([sum(v["seconds"] for v in s.sources.values()) for s in seeds])[0]
    return {"config": asdict(cfg), "default_method": DEFAULT_METHOD, "methods": methods,
            "sources": sources, "sources_training_seconds": source_s,
            "all_tasks_training_seconds": _mean_std([s.all_tasks_seconds for s in seeds])[0],
            "seeds": [asdict(s) for s in seeds]}


def run(cfg: GnnExperimentConfig, out: str | Path, *, log=print) -> dict:
    """Run every seed, then write ``out/results.json``, ``out/report.md`` and
    ``out/normalized_accuracy.png``; returns the results."""
    from .gnn_experiment_report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = []
    for seed in range(cfg.seeds):
        t0 = time.perf_counter()
        seeds.append(run_seed(cfg, seed))
        log(f"seed {seed}: done in {time.perf_counter() - t0:.1f} s")
    results = summarize(cfg, seeds)
    write_text_atomically(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_report(results, out)
    return results
