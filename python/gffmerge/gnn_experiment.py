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
the sources' training time and that of one model trained on all tasks from scratch. Times
are CPU seconds of the process (``time.process_time``: with one thread, the work done,
unlike wall time on a shared machine).
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
from torch import Tensor, nn

from .atomic import write_text_atomically
from .gnn_tasks import (  # noqa: F401  (re-exported)
    Backbone,
    Task,
    TrainedCache,
    auc,
    evaluate,
    train_all_tasks,
    train_source,
)
from .methods import get as get_method
from .stats import Stats

DATASETS = ("cora", "citeseer", "sbm")
SETTINGS = ("in-domain", "cross-domain", "nc-lp")
BACKBONES = ("gcn", "sage", "gin", "gat")
# name in the results -> (registered method, its options, rows): "gnnmerge++" is the closed
# form with equal per-model weighting whose rows and relative ridge are chosen on the
# validation nodes (rows "val", :mod:`gffmerge.gnn_select`; prior "mean": directions without
# data keep the average), "gnnmerge++/all" the same on all nodes with a fixed ridge (the
# earlier default), "gnnmerge++/own" on each source's labelled nodes (GNNMerge++'s code),
# "gffmerge" the pooled (row-count weighted) one; relative ridges because bag-of-words
# inputs leave directions without data (singular Grams); no cond₂ (an eigen-decomposition
# per layer would cost more than the solve).
_CLOSED = {"ridge_mode": "relative", "condition": False}
METHODS: dict[str, tuple[str, dict, str]] = {
    "gnnmerge++": ("gffmerge", {"weighting": "per_model", "prior": "mean", **_CLOSED}, "val"),
    "gnnmerge++/all": ("gffmerge", {"weighting": "per_model", "ridge": 1e-4, **_CLOSED},
                       "all"),
    "gnnmerge++/own": ("gffmerge", {"weighting": "per_model", "ridge": 1e-4, "prior": "mean",
                                    **_CLOSED}, "own"),
    "gffmerge": ("gffmerge", {"weighting": "pooled", "ridge": 1e-4, **_CLOSED}, "all"),
    "gnnmerge": ("gnnmerge", {}, "all"),
    "average": ("average", {}, "all"),
    "task_arithmetic": ("task_arithmetic", {}, "all"),
    "ties": ("ties", {}, "all"),
    "regmean": ("regmean", {"ridge": 1e-4, "ridge_mode": "relative", "condition": False},
                "all"),
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


def merge_all(backbones: Sequence[nn.Module], tasks: Sequence[Task], methods: Sequence[str],
              heads: Sequence[nn.Module | None] | None = None
              ) -> dict[str, tuple[nn.Module, float, dict | None]]:
    """Every method's merged backbone, its seconds (measure + solve for the methods on
    statistics; the whole validation choice for rows "val", which needs the sources'
    ``heads``) and the choice made (None unless chosen). Task arithmetic and TIES have no
    common pre-trained model here (the sources start from different random
    initialisations): their base is the zero model."""
    from .gnn_select import choose, measure_sources

    measured: dict[str, tuple[Stats, float]] = {}  # rows -> statistics, measuring seconds
    out = {}
    for name in methods:
        registered, options, rows = METHODS[name]
        method = get_method(registered)
        t1 = time.process_time()
        if rows == "val":
            if heads is None:
                raise ValueError(f"method '{name}' chooses its rows on validation nodes and "
                                 "needs the sources' heads")
            model, chosen = choose(backbones, heads, tasks, registered, options)
            out[name] = (model, time.process_time() - t1, chosen)
            continue
        needs = method.needs_for(method.options(**options))
        if needs.stats and rows not in measured:
            t0 = time.process_time()
            stats = measure_sources(backbones, tasks, rows)
            measured[rows] = (stats, time.process_time() - t0)
        measure_s = measured[rows][1] if needs.stats else 0.0
        t1 = time.process_time()
        result = method(list(backbones), measured[rows][0] if needs.stats else None,
                        base=_zero_like(backbones[0]) if needs.base_model else None,
                        **options)
        out[name] = (result.model, time.process_time() - t1 + measure_s, None)
    return out


# ---------------------------------------------------------------- the run
@dataclass
class SeedResult:
    seed: int
    sources: dict[str, dict] = field(default_factory=dict)
    all_tasks_seconds: float = 0.0
    methods: dict[str, dict] = field(default_factory=dict)


def run_seed(cfg: GnnExperimentConfig, seed: int, keep: str | Path | None = None
             ) -> SeedResult:
    """One seed: train (or, from ``keep``, reload) the sources, time the all-task model,
    merge with every method and score the merges."""
    graphs = graphs_for(cfg, seed)
    tasks = tasks_for(cfg, graphs, seed)
    res = SeedResult(seed)
    backbones, heads = [], []
    trained = TrainedCache(keep, {k: v for k, v in asdict(cfg).items()
                                  if k not in ("seeds", "methods", "all_tasks")})
    for k, task in enumerate(tasks):
        b, h, secs = trained.source(task, cfg.backbone, cfg, seed=100 * seed + 10 * k + 1)
        backbones.append(b)
        heads.append(h)
        score = evaluate(b, h, task)
        res.sources[task.name] = {"metric": "auc" if task.is_lp else "accuracy",
                                  "score": score, "seconds": secs}
    if cfg.all_tasks:
        res.all_tasks_seconds = trained.all_tasks(tasks, cfg.backbone, cfg,
                                                  seed=100 * seed + 99)
    for name, (merged, secs, chosen) in merge_all(backbones, tasks, cfg.methods,
                                                  heads).items():
        per_task = {}
        ratios = []
        for task, head in zip(tasks, heads):
            score = evaluate(merged, head, task)
            metric = "auc" if task.is_lp else "accuracy"
            per_task[task.name] = {metric: score}
            ratios.append(score / res.sources[task.name]["score"])
        res.methods[name] = {"normalized_accuracy": sum(ratios) / len(ratios),
                             "tasks": per_task, "seconds": secs}
        if chosen is not None:
            res.methods[name]["chosen"] = chosen
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
        if all("chosen" in r for r in runs):  # rows and ridge chosen on validation nodes
            methods[name]["chosen"] = [{k: r["chosen"][k] for k in ("rows", "ridge", "score")}
                                       for r in runs]
            methods[name]["chosen_seconds"] = _mean_std([r["chosen"]["seconds"]
                                                         for r in runs])[0]
            methods[name]["route"] = sorted({r["chosen"].get("route", "") for r in runs})
            parts = ("measure_seconds", "solve_seconds", "score_seconds")
            if all(p in r["chosen"] for r in runs for p in parts):  # the one-pass choice
                methods[name]["choice_seconds"] = {
                    p.split("_")[0]: _mean_std([r["chosen"][p] for r in runs])[0]
                    for p in parts}
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
    ``out/normalized_accuracy.png``; returns the results. The trained sources and the
    all-task training times are kept in ``out/sources`` (a rerun with the same settings
    merges again without retraining)."""
    from .gnn_experiment_report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = []
    for seed in range(cfg.seeds):
        t0 = time.perf_counter()
        seeds.append(run_seed(cfg, seed, keep=out / "sources"))
        log(f"seed {seed}: done in {time.perf_counter() - t0:.1f} s")
    results = summarize(cfg, seeds)
    write_text_atomically(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_report(results, out)
    return results
