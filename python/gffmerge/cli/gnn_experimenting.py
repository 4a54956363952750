"""``gffmerge gnn-experiment``: GNNMerge's settings on PyTorch Geometric models.

The work is :func:`gffmerge.gnn_experiment.run`; this module parses the flags into a
:class:`~gffmerge.gnn_experiment.GnnExperimentConfig` (bad values fail there, before any
work, as one-line errors) and prints the report at the end.
"""

from __future__ import annotations

import argparse

DATASETS = ("cora", "citeseer", "sbm")
SETTINGS = ("in-domain", "cross-domain", "nc-lp")
BACKBONES = ("gcn", "sage", "gin", "gat")


def add_parser(subparsers, *, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "gnn-experiment", parents=parents,
        help="train PyG sources on a graph setting, merge their backbones with each method "
             "and compare them (GNNMerge's settings)",
        description="Writes DIR/results.json, DIR/report.md and DIR/normalized_accuracy.png. "
                    "Needs the extra gffmerge[pyg].")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--setting", required=True, choices=SETTINGS)
    p.add_argument("--backbone", required=True, choices=BACKBONES)
    p.add_argument("--seeds", type=int, default=3, help="seeds (default 3)")
    p.add_argument("--epochs", type=int, default=200,
                   help="training epochs of every source and of the all-task model "
                        "(default 200)")
    p.add_argument("--hidden", type=int, default=128, help="hidden width (default 128)")
    p.add_argument("--sbm-nodes", type=int, default=20000,
                   help="nodes of each synthetic graph with --dataset sbm (default 20000)")
    p.add_argument("--methods", metavar="A,B,...",
                   help="methods, comma-separated (default: all of the experiment's)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    p.set_defaults(func=cmd_gnn_experiment)


def cmd_gnn_experiment(args) -> int:
    from pathlib import Path

    from ..gnn_experiment import METHODS, GnnExperimentConfig, run
    from ..gnn_experiment_report import render
    from .common import emit

    methods = tuple(METHODS)
    if args.methods is not None:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    cfg = GnnExperimentConfig(dataset=args.dataset, setting=args.setting,
                              backbone=args.backbone, seeds=args.seeds, epochs=args.epochs,
                              hidden=args.hidden, sbm_nodes=args.sbm_nodes, methods=methods)
    quiet = args.quiet or args.json
    results = run(cfg, args.out, log=(lambda _msg: None) if quiet else print)
    # the files are renamed into place when the command succeeds (all or nothing), so the
    # report is rendered again rather than read back
    out = Path(args.out)
    emit(args, results, render(results) + f"\nwrote {out / 'results.json'}, "
                                          f"{out / 'report.md'} and the chart")
    return 0
