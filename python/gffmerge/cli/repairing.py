"""``gffmerge repair``: parse the command line and call :func:`gffmerge.repair.repair`.

Hook it into the command line with ``add_parser(subparsers)``; ``run(args)`` returns the exit
code under the CLI's error policy (:func:`gffmerge.cli.common.run_command`: 0, or 2 with a
one-line message on stderr for a user error). The repaired checkpoint is written
atomically, only after training.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from .common import EXIT_BAD_INPUT, add_global_flags, load_models, rate_or_auto, run_command

__all__ = ["EXIT_BAD_INPUT", "add_parser", "run"]


def add_parser(subparsers, *, parents: list[argparse.ArgumentParser] | None = None
               ) -> argparse.ArgumentParser:
    """Add the ``repair`` subcommand. ``parents`` (e.g. the parser holding ``--quiet`` and
    ``--json``) are passed on; without them the subcommand defines those two flags itself."""
    p = subparsers.add_parser(
        "repair", parents=list(parents or []),
        help="fine-tune a merged model briefly on its sources' training data",
        description="Fine-tune a merged checkpoint on at most --frames training frames of the "
                    "given systems (evenly spread), keeping the best-validation model.")
    if not parents:
        add_global_flags(p)
    p.add_argument("--model", required=True, help="merged checkpoint (.pt)")
    p.add_argument("--data", required=True, nargs="+",
                   help="shipped system names (rmd17/ethanol) or data files")
    p.add_argument("--frames", type=int, default=250,
                   help="training frames in all, evenly spread over the systems (default 250)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--scope", default="all",
                   help="what is trained: heads (output layers), last:N (last N linear layers "
                        "in forward order) or all (default: all)")
    p.add_argument("--lr", type=rate_or_auto, default=5e-4,
                   help="learning rate (default 5e-4), or auto: 5e-4 and 1e-3 each "
                        "probed for twice --probe-epochs from the chosen start, the best on "
                        "validation used")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--val-frames", type=int, help="cap on validation frames (default: all)")
    p.add_argument("--max-frames", type=int, default=1250,
                   help="frames sampled per system (protocol: 1250, seed 42)")
    p.add_argument("--seed", type=int, default=42, help="sampling, split and training seed")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--starts", nargs="+", metavar="CKPT",
                   help="other checkpoints the repair may start from (e.g. the average, "
                        "another merge): each, --model included, is repaired for "
                        "--probe-epochs first, the best two again for twice as long, and "
                        "the full repair starts from the one best on validation")
    p.add_argument("--probe-epochs", type=int, default=1,
                   help="epochs of each start's probe repair with --starts, and half the "
                        "length of each rate's probe with --lr auto (default 1)")
    p.add_argument("-o", "--output", required=True, help="repaired checkpoint (.pt)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Repair ``args.model`` as the flags say; returns the exit code."""
    return run_command(args, _run, "repair")


def _foundation(path: str, meta: dict) -> dict:
    """The repaired model's lineage: the foundation its start descends from, when known."""
    from ..lineage import foundation_sha256

    sha = foundation_sha256(path, meta)
    return {} if sha is None else {"foundation_sha256": sha}


def _run(args: argparse.Namespace) -> int:
    from ..repair import parse_scope, repair

    parse_scope(args.scope)  # a bad scope fails before any data is read
    if Path(args.output).resolve() == Path(args.model).resolve():
        raise ValueError(f"-o {args.output} would overwrite the input model; write the "
                         "repaired model to a new file")
    if (args.starts is not None or args.lr == "auto") and args.probe_epochs < 1:
        raise ValueError(f"--probe-epochs must be >= 1, got {args.probe_epochs}")
    given = [args.model, *(args.starts or [])]
    names = [Path(p).name for p in given]
    if len(set(map(lambda p: Path(p).resolve(), given))) != len(given):
        raise ValueError("--starts names a checkpoint twice (or --model again); give each "
                         "start once")
    if Path(args.output).resolve() in {Path(p).resolve() for p in given}:
        raise ValueError(f"-o {args.output} would overwrite an input model; write the "
                         "repaired model to a new file")
    loaded, metas = load_models(given)
    model, meta = loaded[0], metas[0]
    starts = {(n if names.count(n) == 1 else str(p)): m
              for n, p, m in zip(names[1:], given[1:], loaded[1:], strict=True)}
    source = {"path": str(args.model),
              **{k: meta[k] for k in ("role", "method", "options", "sources") if k in meta}}
    result = repair(model, list(args.data), frames=args.frames, epochs=args.epochs,
                    scope=args.scope, lr=args.lr, batch_size=args.batch_size,
                    val_frames=args.val_frames, seed=args.seed, max_frames=args.max_frames,
                    threads=args.threads, output=args.output, progress=not args.quiet,
                    metadata={"repaired_from": _plain(source), **_foundation(args.model, meta)},
                    starts=starts or None,
                    probe_epochs=args.probe_epochs)
    test = result.metrics.get("test", {}).get("all", {})
    payload = {"output": str(args.output), "seconds": result.seconds,
               "scope": args.scope, "trainable_parameters": len(result.trainable),
               "frames_per_system": result.frames_per_system,
               "start_val_loss": result.start_val_loss, "best_val_loss": result.best_val_loss,
               "best_epoch": result.metrics.get("best_epoch"), "metrics": result.metrics,
               "start": result.start, "probe_val_loss": result.probe_val_loss,
               "final_probe_val_loss": result.final_probe_val_loss,
               "lr": result.options.lr,
               "lr_probe_val_loss": {str(k): v for k, v in result.lr_probe_val_loss.items()}}
    start = args.model if result.start == "given" else result.start
    text = (f"repaired {Path(start).name} ({args.scope}, {len(result.trainable)} "
            f"parameter tensors) on {sum(result.frames_per_system.values())} frames in "
            f"{result.seconds:.1f} s: validation loss {result.start_val_loss:.4g} -> "
            f"{result.best_val_loss:.4g} (best epoch {result.metrics.get('best_epoch')}"
            + (f", lr {result.options.lr:g} chosen on validation" if args.lr == "auto" else "")
            + "); "
            f"test force MAE {test.get('force_mae_mev_per_a', float('nan')):.1f} meV/Å "
            f"-> {args.output}")
    if args.json:
        print(json.dumps(payload, indent=2, default=_json_default))
    elif not args.quiet:
        print(text)
    return 0


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, Path):
        return str(v)
    return repr(v)
