"""``gffmerge measure``: per-layer statistics of one checkpoint on its data (torchrun-aware)."""

from __future__ import annotations

import os
from pathlib import Path

from .common import DEFAULT_BATCH, CliError, dataset, emit, load_models

PARTIAL_SUFFIX = ".partial"


def partial_path(output: str | os.PathLike) -> Path:
    """Where ``measure -o OUT`` keeps its unfinished sums: ``OUT.partial`` (one per process
    under torchrun, see :func:`gffmerge.collect.partial.rank_path`)."""
    output = Path(output)
    return output.with_name(output.name + PARTIAL_SUFFIX)


def cmd_measure(args) -> int:
    from ..collect.partial import ResumeError

    try:
        return _measure(args)
    except ResumeError as exc:
        raise CliError(exc.cli_message) from None


def _measure(args) -> int:
    from ..collect import MeasureOptions, measure
    from ..distributed import init_from_env, launched_by_torchrun, measure_distributed

    (model,), _ = load_models([args.model])
    ds = dataset(args.data, args.split, args)
    from ..collect.budget import frames_per_batch  # small molecules: an atom budget per batch
    if args.batch_size is not None:
        batch = args.batch_size  # as asked
    elif args.limit is None:
        batch = frames_per_batch(ds, DEFAULT_BATCH)
    else:
        batch = DEFAULT_BATCH  # a frame limit is checked after each batch: keep it small
    loader = ds.batches_for(model, batch)
    if args.save_every is not None and args.save_every < 1:
        raise CliError(f"--save-every must be a number of batches >= 1, got {args.save_every}")
    keep = partial_path(args.output)
    options = MeasureOptions(limit=args.limit, cross=args.cross, label=Path(args.model).stem,
                             description=ds.describe(), layers=args.layers, dense=args.dense,
                             progress=not args.quiet,
                             partial=None if args.resume else keep,
                             resume=keep if args.resume else None,
                             partial_every=args.save_every or 50)
    rank = 0
    if launched_by_torchrun():
        import torch.distributed as dist

        device = None
        if torch_cuda_available():
            import torch

            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        rank, world = init_from_env(device)
        try:
            stats = measure_distributed(model, loader, options=options, device=device,
                                        progress=options.progress and rank == 0)
        finally:
            dist.destroy_process_group()
    else:
        stats = measure(model, loader, options=options)
    if rank != 0:
        return 0
    path = stats.save(args.output)
    ms = stats.models[0]
    total_rows = sum(ls.rows for ls in ms.layers.values())
    emit(args, {"output": str(path), "graphs": ms.graphs, "layers": len(ms.layers),
                 "rows": total_rows, "seconds": ms.seconds},
          f"measured {ms.graphs} graphs, {len(ms.layers)} layers in {ms.seconds:.1f} s "
          f"-> {path}")
    return 0


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
