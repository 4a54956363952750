"""The GNN experiment: settings, metrics, results in the issue's shape, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torch_geometric")
from gffmerge.cli import main  # noqa: E402
from gffmerge.gnn_experiment import (  # noqa: E402
    GnnExperimentConfig,
    auc,
    run,
    run_seed,
    split_edges,
)


def test_in_domain_cora_merge_beats_average_on_both_label_sets():
    cfg = GnnExperimentConfig(dataset="cora", setting="in-domain", backbone="gcn", seeds=1,
                              epochs=20, hidden=16, all_tasks=False,
                              methods=("gnnmerge++", "average"))
    res = run_seed(cfg, seed=0)
    assert list(res.sources) == ["classes 0-3", "classes 4-6"]
    merged, average = res.methods["gnnmerge++"], res.methods["average"]
    for task in res.sources:
        assert merged["tasks"][task]["accuracy"] > average["tasks"][task]["accuracy"], task
    assert merged["normalized_accuracy"] > average["normalized_accuracy"]


def test_auc_counts_pairs_and_ties():
    assert auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert auc(torch.tensor([2.0, 0.0]), torch.tensor([1.0])) == 0.5


def test_split_edges_holds_out_both_directions():
    from gffmerge.data.graphs import sbm_graph

    g = sbm_graph(500, num_classes=2, avg_degree=6, seed=0, num_val=50, num_test=50)
    train, test, neg = split_edges(g, seed=0)
    held = set(map(tuple, test.T.tolist()))
    kept = set(map(tuple, train.T.tolist()))
    assert held and not any((a, b) in kept or (b, a) in kept for a, b in held)
    assert neg.shape == test.shape


def test_nc_lp_on_sbm_writes_results_in_the_issue_shape(tmp_path):
    cfg = GnnExperimentConfig(dataset="sbm", setting="nc-lp", backbone="sage", seeds=1,
                              epochs=5, hidden=16, sbm_nodes=600,
                              methods=("gnnmerge++", "average"))
    results = run(cfg, tmp_path, log=lambda _m: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["default_method"] == "gnnmerge++"
    entry = saved["methods"]["gnnmerge++"]
    assert set(entry) >= {"normalized_accuracy", "tasks", "seconds"}
    assert 0.0 < entry["normalized_accuracy"] < 2.0
    assert set(entry["tasks"]) == {"node classification", "link prediction"}
    assert "auc" in entry["tasks"]["link prediction"]
    assert "accuracy" in entry["tasks"]["node classification"]
    assert saved["all_tasks_training_seconds"] > 0 and saved["sources_training_seconds"] > 0
    assert (tmp_path / "report.md").read_text().startswith("# GNN merge: sbm, nc-lp, sage")
    assert results["methods"].keys() == saved["methods"].keys()


def test_cli_runs_and_keeps_its_files(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["gnn-experiment", "--dataset", "sbm", "--setting", "in-domain", "--backbone",
                 "gin", "--seeds", "1", "--epochs", "2", "--hidden", "8", "--sbm-nodes",
                 "400", "--methods", "gnnmerge++,average", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "## Targets" in capsys.readouterr().out
    for name in ("results.json", "report.md", "normalized_accuracy.png"):
        assert (out / name).is_file(), name
    assert set(json.loads((out / "results.json").read_text())["methods"]) == {
        "gnnmerge++", "average"}


def test_cli_cross_domain_on_planetoid_is_a_one_line_error(tmp_path, capsys):
    code = main(["gnn-experiment", "--dataset", "cora", "--setting", "cross-domain",
                 "--backbone", "gcn", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--dataset sbm" in err and len(err.splitlines()) == 1


def test_cross_domain_sbm_merges_two_graphs_of_one_feature_space():
    cfg = GnnExperimentConfig(dataset="sbm", setting="cross-domain", backbone="gcn", seeds=1,
                              epochs=5, hidden=16, sbm_nodes=600, all_tasks=False,
                              methods=("gnnmerge++/all", "gffmerge", "average"))
    res = run_seed(cfg, seed=0)
    assert list(res.sources) == ["graph A classes 0-2", "graph B classes 3-5"]
    for name in cfg.methods:
        assert set(res.methods[name]["tasks"]) == set(res.sources)
        assert 0.0 <= res.methods[name]["normalized_accuracy"] <= 2.0
    # equal-size graphs: equal per-model weighting and pooling give the same merge
    assert res.methods["gnnmerge++/all"]["tasks"] == res.methods["gffmerge"]["tasks"]
