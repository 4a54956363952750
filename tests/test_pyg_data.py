"""Planetoid graphs from the shipped raw files, and the synthetic block-model graph."""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("torch_geometric")
from gffmerge.data.graphs import load_planetoid, sbm_graph  # noqa: E402


@pytest.mark.parametrize("name,nodes,features,classes", [("cora", 2708, 1433, 7),
                                                         ("citeseer", 3327, 3703, 6)])
def test_planetoid_sizes_and_standard_split(name, nodes, features, classes):
    g = load_planetoid(name)
    assert tuple(g.x.shape) == (nodes, features)
    assert int(g.y.max()) + 1 == classes
    assert int(g.train_mask.sum()) == 20 * classes
    assert int(g.val_mask.sum()) == 500 and int(g.test_mask.sum()) == 1000
    assert not bool((g.train_mask & g.test_mask).any())
    # 20 training nodes of every class
    assert torch.bincount(g.y[g.train_mask], minlength=classes).tolist() == [20] * classes
    assert g.edge_index.shape[0] == 2 and int(g.edge_index.max()) < nodes


def test_planetoid_missing_files_is_a_one_line_error(tmp_path):
    from gffmerge.data import data_dir

    shutil.copy(data_dir() / "planetoid" / "ind.cora.x", tmp_path)
    with pytest.raises(FileNotFoundError, match="ind.cora.tx") as exc:
        load_planetoid("cora", root=tmp_path)
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="unknown Planetoid"):
        load_planetoid("pubmed")


def test_sbm_graph_blocks_features_and_split():
    g = sbm_graph(3000, num_classes=4, avg_degree=8, p_in=0.9, num_features=5, seed=1)
    assert tuple(g.x.shape) == (3000, 5) and g.edge_index.shape[1] == 2 * 12000
    src, dst = g.edge_index
    same = (g.y[src] == g.y[dst]).double().mean().item()
    assert same > 0.85  # p_in plus chance agreement, far above 1/4
    # class-dependent features: class means are far apart relative to their standard error
    means = torch.stack([g.x[g.y == c].mean(0) for c in range(4)])
    assert torch.cdist(means, means).fill_diagonal_(1e9).min() > 0.5
    assert torch.bincount(g.y[g.train_mask], minlength=4).tolist() == [20] * 4
    assert int(g.test_mask.sum()) == 1000 and not bool((g.val_mask & g.test_mask).any())
    again = sbm_graph(3000, num_classes=4, avg_degree=8, p_in=0.9, num_features=5, seed=1)
    assert torch.equal(again.edge_index, g.edge_index) and torch.equal(again.x, g.x)
    other = sbm_graph(3000, num_classes=4, avg_degree=8, p_in=0.9, num_features=5, seed=2)
    assert not torch.equal(other.edge_index, g.edge_index)
    # same feature_seed: the same class means (one feature space)
    m2 = torch.stack([other.x[other.y == c].mean(0) for c in range(4)])
    assert (m2 - means).abs().max() < 0.2
    small = sbm_graph(600, num_classes=6, seed=0)  # 480 non-training nodes for 500 + 1000
    assert int(small.val_mask.sum()) == 160 and int(small.test_mask.sum()) == 320
