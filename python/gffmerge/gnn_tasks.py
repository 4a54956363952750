"""The models and tasks of ``gffmerge gnn-experiment``: a PyG backbone with one head per
task, its training, and its scores (accuracy; AUC for link prediction).

See :mod:`gffmerge.gnn_experiment` for the settings these serve.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TrainSettings(Protocol):
    """What training reads of a :class:`~gffmerge.gnn_experiment.GnnExperimentConfig`."""

    epochs: int
    hidden: int
    lr: float
    weight_decay: float


class Backbone(nn.Module):
    """Two PyG convolutions with a ReLU after each: ``gcn`` (GCNConv), ``sage`` (SAGEConv,
    mean), ``gin`` (GINConv over a two-Linear MLP), ``gat`` (GATConv, 4 heads).

    ``x`` may be a sparse CSR matrix (bag-of-words features, :func:`model_input`) for
    ``gcn`` and ``sage``: the first layer then multiplies the sparse features by its
    weights (same model and function, float32 rounding in another order; training on
    Cora / CiteSeer measured 2-9x faster)."""

    def __init__(self, kind: str, d_in: int, hidden: int):
        super().__init__()
        self.kind = kind
        self.convs = nn.ModuleList([_conv(kind, d_in, hidden), _conv(kind, hidden, hidden)])

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        for conv in self.convs:
            x = (conv(x, edge_index) if x.layout == torch.strided
                 else _sparse_conv(conv, x, edge_index)).relu()
        return x


SPARSE_INPUT = ("gcn", "sage")
"""Backbones whose first layer takes sparse features (:func:`model_input`)."""


def model_input(x: Tensor, kind: str) -> Tensor:
    """``x`` as the backbone's training input: a sparse CSR matrix for bag-of-words features
    (at most 10 % non-zero) of a ``gcn`` / ``sage`` backbone, else ``x`` itself."""
    from .models.pyg import SPARSE_DENSITY

    if kind not in SPARSE_INPUT or x.layout != torch.strided or x.dim() != 2:
        return x
    if int(torch.count_nonzero(x)) > SPARSE_DENSITY * x.numel():
        return x
    with warnings.catch_warnings():  # torch's notice that sparse CSR support is beta
        warnings.filterwarnings("ignore", message=r"Sparse CSR tensor support")
        return x.to_sparse_csr()


def _sparse_conv(conv: nn.Module, x: Tensor, edge_index: Tensor) -> Tensor:
    """``conv(x, edge_index)`` for sparse ``x``: GCNConv applies its Linear first (sparse
    product) as it always does; SAGEConv's neighbour aggregate (mean or sum: linear)
    commutes with ``lin_l``, so ``lin_l(agg(x)) = agg(x W_lᵀ) + b_l``."""
    from torch_geometric.nn import GCNConv, SAGEConv

    if isinstance(conv, GCNConv):
        return conv(x, edge_index)
    aggr = conv.aggr if isinstance(conv, SAGEConv) and isinstance(conv.aggr, str) else None
    if aggr not in ("mean", "add", "sum") or conv.project:
        raise ValueError(f"{type(conv).__name__} has no sparse-input path here; pass dense "
                         "features (model_input covers gcn and sage with linear aggregation)")
    with warnings.catch_warnings():  # torch's notice that sparse CSR support is beta
        warnings.filterwarnings("ignore", message=r"Sparse CSR tensor support")
        h = torch.sparse.mm(x, conv.lin_l.weight.T)
    out = conv.propagate(edge_index, x=(h, h), size=None)
    if conv.lin_l.bias is not None:
        out = out + conv.lin_l.bias
    if conv.root_weight:
        out = out + conv.lin_r(x)
    if conv.normalize:
        out = F.normalize(out, p=2.0, dim=-1)
    return out


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


def train_source(task: Task, kind: str, cfg: TrainSettings, seed: int
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
    t0 = time.process_time()
    x = model_input(g.x, kind)
    for _ in range(cfg.epochs):
        backbone.train()
        opt.zero_grad()
        h = backbone(x, task.edges)
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
    return backbone.eval(), head, time.process_time() - t0


def train_all_tasks(tasks: Sequence[Task], kind: str, cfg: TrainSettings, seed: int
                    ) -> float:
    """Seconds to train one backbone with every task's head jointly from scratch (the
    retraining a merge avoids): summed losses, same epochs, optimiser and inputs as the
    sources; tasks on the same graph and edges share one forward per epoch."""
    torch.manual_seed(seed)
    backbone = Backbone(kind, tasks[0].graph.num_features, cfg.hidden)
    heads = nn.ModuleList([nn.Linear(cfg.hidden, max(1, len(t.classes))) for t in tasks])
    opt = torch.optim.Adam(list(backbone.parameters()) + list(heads.parameters()), lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    prepared = [None if t.is_lp else t.node_labels(t.graph.train_mask) for t in tasks]
    t0 = time.process_time()
    inputs = {id(t.graph): model_input(t.graph.x, kind) for t in tasks}
    for _ in range(cfg.epochs):
        opt.zero_grad()
        loss = 0.0
        outputs: dict = {}
        for t, head, lab in zip(tasks, heads, prepared):
            key = (id(t.graph), id(t.edges))
            if key not in outputs:
                outputs[key] = backbone(inputs[id(t.graph)], t.edges)
            h = outputs[key]
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
    return time.process_time() - t0


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


class TrainedCache:
    """Trained sources and all-task training times kept in a folder, so that a rerun with
    the same output folder merges again without retraining (``key``: the training
    settings; files of other settings are not read)."""

    def __init__(self, folder, key: dict):
        import hashlib
        import json

        self.folder = None if folder is None else Path(folder)
        text = json.dumps(key, sort_keys=True, default=str)
        self.tag = hashlib.sha256(text.encode()).hexdigest()[:10]

    def _path(self, what: str):
        return self.folder / f"{what}-{self.tag}.pt"

    def source(self, task: Task, kind: str, cfg: TrainSettings, seed: int
               ) -> tuple[Backbone, nn.Module | None, float]:
        """:func:`train_source`, or the saved result of the same call."""
        path = None if self.folder is None else self._path(f"source-{seed}")
        if path is not None and path.is_file():
            saved = torch.load(path, weights_only=True)
            backbone = Backbone(kind, task.graph.num_features, cfg.hidden)
            backbone.load_state_dict(saved["backbone"])
            head = None
            if saved["head"] is not None:
                head = nn.Linear(cfg.hidden, len(task.classes))
                head.load_state_dict(saved["head"])
            return backbone.eval(), head, float(saved["seconds"])
        backbone, head, secs = train_source(task, kind, cfg, seed)
        if path is not None:
            self._save(path, {"backbone": backbone.state_dict(), "seconds": secs,
                              "head": None if head is None else head.state_dict()})
        return backbone, head, secs

    def all_tasks(self, tasks: Sequence[Task], kind: str, cfg: TrainSettings, seed: int
                  ) -> float:
        """:func:`train_all_tasks`, or the saved seconds of the same call."""
        path = None if self.folder is None else self._path(f"all-tasks-{seed}")
        if path is not None and path.is_file():
            return float(torch.load(path, weights_only=True)["seconds"])
        secs = train_all_tasks(tasks, kind, cfg, seed)
        if path is not None:
            self._save(path, {"seconds": secs})
        return secs

    @staticmethod
    def _save(path, obj) -> None:
        from .atomic import write_atomically

        # kept even when a later step fails: that is what the cache is for
        write_atomically(path, lambda tmp: torch.save(obj, tmp), defer=False)
