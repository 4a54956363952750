"""The argument parser: every subcommand, its flags and the function it calls."""

from __future__ import annotations

import argparse

from .common import Parser, add_data_options, add_global_flags
from .experimenting import add_parser as add_experiment_parser
from .gnn_experimenting import add_parser as add_gnn_experiment_parser
from .measuring import cmd_measure
from .merging import cmd_demo, cmd_merge, cmd_methods, cmd_solve
from .repairing import add_parser as add_repair_parser
from .training import cmd_eval, cmd_info, cmd_train

BASE_HELP = ("the pre-trained checkpoint the sources were fine-tuned from (needed by "
             "task_arithmetic, ties, emr; the default merge then also tries starting from "
             "the foundation, task arithmetic (also per source) and TIES); checked against "
             "the sources' metadata. Default: the foundation every source records as its "
             "start, when it is found here")
NO_BASE_HELP = ("do not take the base from the sources' metadata (the default merge then "
                "searches merges of the sources only)")
ALLOW_FOUNDATIONS_HELP = ("merge sources that their metadata shows were fine-tuned from "
                          "different foundations (refused otherwise: their hidden features "
                          "do not correspond)")


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(add_help=False)
    add_global_flags(top)
    common = argparse.ArgumentParser(add_help=False)  # the same flags after the subcommand
    add_global_flags(common, inherited=True)
    parser = Parser(
        prog="gffmerge", parents=[top],
        description="Closed-form merging of fine-tuned GNN force fields.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", parents=[common], help="list merge methods and options")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("measure", parents=[common],
                       help="accumulate per-layer Gram statistics of one model on its data")
    p.add_argument("--model", required=True, help="checkpoint (.pt)")
    p.add_argument("--data", required=True, nargs="+",
                   help="shipped system names (lips20/beta-Li3PS4) or data files")
    add_data_options(p, "train")
    p.add_argument("--limit", type=int, help="graphs per model, checked after each batch")
    p.add_argument("--cross", action="store_true", help="also record Σ x̃yᵀ (target=cross)")
    p.add_argument("--layers", nargs="+", help="layer names or glob patterns to measure")
    p.add_argument("--dense", action="store_true",
                   help="dense hook on every layer's full input rows instead of the "
                        "structured providers (the reference; same stats, slower)")
    p.add_argument("-o", "--output", required=True, help="stats file (.safetensors)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUTPUT.partial (same model, data "
                        "and options; an error when there is none)")
    p.add_argument("--save-every", type=int, metavar="BATCHES",
                   help="write OUTPUT.partial every BATCHES batches (default 50; also every "
                        "60 s and on Ctrl-C/SIGTERM)")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("solve", parents=[common], help="merge checkpoints from saved stats")
    p.add_argument("--model", required=True, nargs="+", help="source checkpoints, in order")
    p.add_argument("--stats", nargs="+", help="stats files, in the same order")
    p.add_argument("--method", default="gffmerge")
    p.add_argument("--base", metavar="CKPT", help=BASE_HELP)
    p.add_argument("--no-base", action="store_true", help=NO_BASE_HELP)
    p.add_argument("--allow-different-foundations", action="store_true",
                   help=ALLOW_FOUNDATIONS_HELP)
    p.add_argument("-O", "--option", action="append", metavar="KEY=VALUE",
                   help="method option, e.g. -O prior=mean -O ridge=1e-4")
    p.add_argument("-o", "--output", required=True, help="merged checkpoint (.pt)")
    p.add_argument("--report", help="write the per-layer report (markdown)")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("merge", parents=[common], help="measure and solve in one step")
    p.add_argument("--model", nargs="+", help="source checkpoints, in order")
    p.add_argument("--data", nargs="+", help="one data name/file per model, same order")
    p.add_argument("--config", help="YAML in the mergekit shape (merge_method, models, "
                                    "parameters)")
    p.add_argument("--method", help="merge method (default: the package default, "
                                     "progressive; the paper's recipe is gffmerge; "
                                     "see `gffmerge methods`)")
    p.add_argument("--base", metavar="CKPT", help=BASE_HELP)
    p.add_argument("--no-base", action="store_true", help=NO_BASE_HELP)
    p.add_argument("--allow-different-foundations", action="store_true",
                   help=ALLOW_FOUNDATIONS_HELP)
    p.add_argument("-O", "--option", action="append", metavar="KEY=VALUE")
    p.add_argument("--limit", type=int, help="graphs per model, checked after each batch")
    p.add_argument("--grid", choices=["auto"],
                   help="choose the options of ties, task_arithmetic or fisher from the "
                        "paper's grid by the validation force MAE of each --data (never test)")
    add_data_options(p, "train")
    p.add_argument("-o", "--output", help="merged checkpoint (.pt)")
    p.add_argument("--report", help="write the per-layer report (markdown)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("eval", parents=[common], help="energy/force errors of checkpoints")
    p.add_argument("--model", required=True, nargs="+")
    p.add_argument("--data", required=True, nargs="+")
    add_data_options(p, "test")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", parents=[common],
                       help="what checkpoints (model, size, lineage, training, test errors) "
                            "and stats files (models, layers, rows, data) hold",
                       description="Read each checkpoint's own record (no model is built): "
                                   "its architecture and size, how it was made and from what, "
                                   "the foundation it descends from, its training run and its "
                                   "test errors; for a stats file (.safetensors), the models "
                                   "it holds sums of, their data, layers and row counts.")
    p.add_argument("model", nargs="+", metavar="FILE",
                   help="checkpoints (.pt) or stats files (.safetensors)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", parents=[common],
                       help="pretrain a foundation, fine-tune a source, or train the joint model")
    p.add_argument("--config", help="YAML with TrainConfig fields (flags override it)")
    p.add_argument("--role", choices=["foundation", "finetune", "joint"])
    p.add_argument("--systems", nargs="+")
    p.add_argument("--model", help="architecture for a foundation: gns, painn, schnet")
    p.add_argument("-M", "--model-option", action="append", metavar="KEY=VALUE",
                   help="model constructor option, e.g. -M latent_dim=64")
    p.add_argument("--init", help="checkpoint to start from (finetune, joint)")
    for name, typ in (("epochs", int), ("batch-size", int), ("lr", float), ("patience", int),
                      ("train-frames", int), ("val-frames", int), ("max-minutes", float),
                      ("seed", int), ("energy-weight", float), ("force-weight", float),
                      ("threads", int), ("max-frames", int), ("lr-patience", int),
                      ("min-delta", float)):
        p.add_argument(f"--{name}", type=typ)
    p.add_argument("--schedule", choices=["cosine", "plateau"],
                   help="cosine: decay to the floor at the last epoch; plateau: cut the "
                        "learning rate when validation stalls, stop after --patience epochs")
    p.add_argument("--monitor", choices=["val_loss", "val_force_mae"],
                   help="what picks the best epoch and counts as improvement")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_train)

    add_repair_parser(sub, parents=[common])

    p = sub.add_parser("demo", parents=[common], help="merge shipped fine-tunes of systems "
                                                      "that differ and compare methods")
    p.add_argument("--out", default="demo_out", help="folder for report.md and the chart")
    p.add_argument("--retrain", action="store_true",
                   help="retrain the chosen pairs' foundation, fine-tunes and joint model "
                        "from data first, with the shipped recipes (hours on 2 cores)")
    p.add_argument("--synthetic", action="store_true",
                   help="the tiny self-contained MLP demo (no data, no checkpoints)")
    p.add_argument("--frames", type=int, help="limit test frames per system (quick runs)")
    p.add_argument("--limit", type=int, help="graphs measured per source model")
    p.add_argument("--pair", nargs="+", metavar="NAME",
                   help="demo pairs to run: rmd17 (ethanol/malonaldehyde), lips20 (Li3P/P2S5); "
                        "default: all")
    p.set_defaults(func=cmd_demo)

    add_experiment_parser(sub, parents=[common])
    add_gnn_experiment_parser(sub, parents=[common])
    return parser
