"""``gffmerge experiment``: fine-tune, train jointly, merge with every method, compare.

The work is :func:`gffmerge.experiment.run`; this module parses the flags into an
:class:`~gffmerge.experiment.ExperimentConfig` (bad values fail there, before any work,
as one-line errors with exit code 2) and prints the table at the end.
"""

from __future__ import annotations

import argparse

from .common import rate_or_auto


def add_parser(subparsers, *, parents: list[argparse.ArgumentParser]) -> None:
    from ..experiment import ExperimentConfig

    d = ExperimentConfig.__dataclass_fields__
    p = subparsers.add_parser(
        "experiment", parents=parents,
        help="fine-tune one source per system from a foundation, train the joint model, "
             "merge with each method and compare them on the combined test split",
        description="Writes OUT/results.json (after every finished row), OUT/report.md and "
                    "OUT/methods.png; fine-tunes and the joint model are kept in "
                    "OUT/checkpoints and reused by a rerun with the same settings.")
    p.add_argument("--foundation", metavar="CKPT",
                   help="the pre-trained checkpoint every model starts from, or a foundation "
                        "adapter: chgnet, sevenn-0 (gffmerge[chgnet], [sevenn]) (default: "
                        "the shipped foundation of --model-kind for the systems' dataset)")
    p.add_argument("--model-kind", metavar="KIND",
                   help="architecture (gns, painn, schnet): without --foundation, picks the "
                        "shipped checkpoints/<dataset>/<kind>_foundation.pt (default gns); "
                        "with it, checks that the foundation is of this kind")
    p.add_argument("--systems", required=True, nargs="+", metavar="SYSTEM",
                   help="two or more shipped system names (lips20/Li3P) or data files")
    p.add_argument("--methods", metavar="A,B,...",
                   help="merge methods, comma-separated (default: every registered one; "
                        "see gffmerge methods)")
    p.add_argument("--train-frames", type=int, default=d["train_frames"].default,
                   help="training frames per system for every fine-tune and the joint model "
                        f"(default {d['train_frames'].default})")
    p.add_argument("--finetune-epochs", type=int, default=d["epochs"].default,
                   help=f"epochs of every fine-tune and the joint model (default "
                        f"{d['epochs'].default})")
    p.add_argument("--seed", type=int, default=d["seed"].default,
                   help="sampling, split and training seed (given --sources/--joint must "
                        "have been trained with it)")
    p.add_argument("--max-frames", type=int, default=d["max_frames"].default,
                   help="frames sampled per system before the 80/10/10 split (protocol: "
                        f"{d['max_frames'].default})")
    p.add_argument("--stats-batch-size", type=int, default=None, metavar="N",
                   help="frames per batch of the statistics passes (default: batches of about "
                        "1 024 atoms over the same frames; give N to measure in batches of N "
                        "up to the merge frames, as before)")
    p.add_argument("--repair", action="store_true",
                   help="also repair the default merge with a short fine-tune")
    p.add_argument("--repair-probe-epochs", type=int, default=1,
                   help="with --repair: probe-repair the default's pick and the best "
                        "candidate of every other family its search scored for this many "
                        "epochs, and repair the best on validation (0: the pick only; "
                        "default 1)")
    p.add_argument("--repair-lr", type=rate_or_auto, default="auto",
                   help="with --repair: the repair's learning rate, or auto (default): "
                        "5e-4 and 1e-3 probed from the chosen start, the best on "
                        "validation used")
    p.add_argument("--switch", action="store_true",
                   help="also evaluate the default merge and the paper recipe with each "
                        "system's own atom-embedding table")
    p.add_argument("--sources", nargs="+", metavar="CKPT",
                   help="merge these fine-tunes (one per system, in --systems order, "
                        "fine-tuned from the foundation) instead of fine-tuning here")
    p.add_argument("--joint", metavar="CKPT",
                   help="compare with this joint model instead of training one here")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    p.set_defaults(func=cmd_experiment)


def cmd_experiment(args) -> int:
    from pathlib import Path

    from ..experiment import ExperimentConfig, run
    from .common import CliError, emit

    names = None
    if args.methods is not None:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not names:
            raise CliError("--methods is empty: name at least one method, e.g. "
                           "--methods average,ties")
    cfg = ExperimentConfig(foundation=args.foundation, systems=list(args.systems),
                           out=args.out, methods=names, train_frames=args.train_frames,
                           epochs=args.finetune_epochs, seed=args.seed, repair=args.repair,
                           repair_probe_epochs=args.repair_probe_epochs,
                           repair_lr=args.repair_lr,
                           max_frames=args.max_frames, model_kind=args.model_kind,
                           switch=args.switch, stats_batch_size=args.stats_batch_size,
                           sources=args.sources, joint=args.joint)
    payload = run(cfg, progress=not (args.quiet or args.json))
    report = Path(args.out) / "report.md"
    emit(args, payload, report.read_text() + f"\nwrote {Path(args.out) / 'results.json'}, "
                                             f"{report} and the chart")
    return 0
