"""Node-classification graphs: Planetoid citation graphs from local raw files, and a
synthetic stochastic block model with class-dependent features (for large-graph runs).

Both return a ``torch_geometric.data.Data`` with ``x [N, d]`` float32, ``edge_index [2, E]``
int64 (both directions of every undirected edge), ``y [N]`` int64 and boolean
``train_mask``/``val_mask``/``test_mask``. PyTorch Geometric is the optional extra
``gffmerge[pyg]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from .paths import data_dir

PLANETOID = ("cora", "citeseer")
_RAW = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def _require_pyg():
    try:
        import torch_geometric  # noqa: F401
    except ImportError:
        raise ImportError("graph data needs PyTorch Geometric: pip install "
                          "'gffmerge[pyg]' (or torch_geometric)") from None


def load_planetoid(name: str, root: str | os.PathLike | None = None):
    """Cora or CiteSeer with the standard Planetoid split (20 training nodes per class, 500
    validation, 1000 test), read by PyG's Planetoid reader from the raw files
    ``ind.<name>.*`` in ``root`` (default: ``<data dir>/planetoid``). Nothing is downloaded.
    """
    _require_pyg()
    from torch_geometric.io import read_planetoid_data

    key = name.lower()
    if key not in PLANETOID:
        raise ValueError(f"unknown Planetoid graph '{name}'; shipped: {', '.join(PLANETOID)}")
    folder = Path(root) if root is not None else data_dir() / "planetoid"
    missing = [f"ind.{key}.{s}" for s in _RAW if not (folder / f"ind.{key}.{s}").is_file()]
    if missing:
        raise FileNotFoundError(f"Planetoid raw file(s) {', '.join(missing[:3])} missing in "
                                f"{folder}; copy the raw ind.{key}.* files there (see "
                                "data/README.md) or set $GFFMERGE_DATA")
    return read_planetoid_data(str(folder), key)


def sbm_graph(num_nodes: int, *, num_classes: int = 6, avg_degree: float = 10.0,
              p_in: float = 0.8, num_features: int = 32, signal: float = 1.0,
              feature_seed: int = 0, seed: int = 0, train_per_class: int = 20,
              num_val: int = 500, num_test: int = 1000, dtype=torch.float32,
              adj_t: bool = False):
    """A stochastic block model: ``num_classes`` equal-probability blocks, about
    ``avg_degree · N / 2`` undirected edges of which a fraction ``p_in`` join nodes of the
    same block, and features ``x_v = signal · μ_{y_v} + ε`` with ``ε ~ N(0, I)``.

    The class means ``μ`` depend only on ``feature_seed``: graphs drawn with different
    ``seed`` and the same ``feature_seed`` share one feature space (cross-domain merges).
    Memory is O(N·d + E): edges are drawn in chunks and stored once, in both directions.
    A Planetoid-like split: ``train_per_class`` training nodes per class, ``num_val`` and
    ``num_test`` others (on a graph with fewer other nodes, all of them in that proportion).

    ``adj_t=True``: the graph as PyG's sparse ``adj_t`` instead of ``edge_index`` (for large
    graphs: convolutions then aggregate without ``[E, d]`` messages), a ``torch.sparse_csr``
    tensor ``[N, N]`` with entry ``(i, j)`` for the edge ``j → i``, float32 values counting
    repeated draws of one edge (so sums over neighbours equal the ``edge_index`` graph's),
    built from the drawn edges without forming ``edge_index``; the same draws, features and
    split as ``adj_t=False``.
    """
    _require_pyg()
    from torch_geometric.data import Data

    if num_nodes < num_classes * (train_per_class + 1):
        raise ValueError(f"num_nodes={num_nodes} is too small for {num_classes} classes with "
                         f"{train_per_class} training nodes each")
    g = torch.Generator().manual_seed(int(seed))
    gf = torch.Generator().manual_seed(int(feature_seed) + 7919)
    means = torch.randn(num_classes, num_features, generator=gf)
    y = torch.randint(0, num_classes, (num_nodes,), generator=g)
    order = torch.argsort(y, stable=True)  # nodes grouped by class
    counts = torch.bincount(y, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    m = int(round(avg_degree * num_nodes / 2))
    src = torch.empty(m, dtype=torch.int64)
    dst = torch.empty(m, dtype=torch.int64)
    step = 1 << 22
    for s in range(0, m, step):
        e = min(m, s + step)
        a = torch.randint(0, num_nodes, (e - s,), generator=g)
        inside = torch.rand(e - s, generator=g) < p_in
        ya = y[a]
        r = torch.rand(e - s, generator=g, dtype=torch.float64)
        same = order[starts[ya] + (r * counts[ya]).long().clamp_max(counts[ya] - 1)]
        other = torch.randint(0, num_nodes, (e - s,), generator=g)
        src[s:e] = a
        dst[s:e] = torch.where(inside, same, other)
    if adj_t:
        graph = {"adj_t": _csr_adj_t(src, dst, num_nodes)}
    else:
        graph = {"edge_index": torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])}
    del src, dst
    x = torch.empty(num_nodes, num_features, dtype=dtype)
    for s in range(0, num_nodes, step):
        e = min(num_nodes, s + step)
        x[s:e] = (signal * means[y[s:e]] + torch.randn(e - s, num_features, generator=g)
                  ).to(dtype)
    perm = torch.randperm(num_nodes, generator=g)
    train = torch.zeros(num_nodes, dtype=torch.bool)
    for c in range(num_classes):
        train[perm[y[perm] == c][:train_per_class]] = True
    rest = perm[~train[perm]]
    if num_val + num_test > len(rest):  # small graphs: the rest, split in that proportion
        num_val = len(rest) * num_val // (num_val + num_test)
        num_test = len(rest) - num_val
    val = torch.zeros(num_nodes, dtype=torch.bool)
    test = torch.zeros(num_nodes, dtype=torch.bool)
    val[rest[:num_val]] = True
    test[rest[num_val:num_val + num_test]] = True
    return Data(x=x, **graph, y=y, train_mask=train, val_mask=val, test_mask=test)


def _csr_adj_t(src: Tensor, dst: Tensor, n: int) -> Tensor:
    """The CSR ``adj_t [n, n]`` of the undirected edges ``src – dst`` (both directions;
    values: multiplicities). Entries are sorted as ``row · n + col`` keys, so the peak is a
    few int64 arrays of the directed edge count, never a ``[2, E]`` index pair."""
    m = src.shape[0]
    key = torch.empty(2 * m, dtype=torch.int64)
    torch.add(dst * n, src, out=key[:m])  # row = destination, column = source
    torch.add(src * n, dst, out=key[m:])
    key, counts = torch.unique(key, sorted=True, return_counts=True)
    rows = torch.div(key, n, rounding_mode="floor")
    crow = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(rows, minlength=n), 0, out=crow[1:])
    del rows
    col = key.remainder_(n)
    return torch.sparse_csr_tensor(crow, col, counts.to(torch.float32), (n, n),
                                   check_invariants=False)
