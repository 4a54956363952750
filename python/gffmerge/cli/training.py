"""``gffmerge eval`` and ``train``: energy/force errors of checkpoints, and training them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import (
    CliError,
    batch_size,
    check_keys,
    dataset,
    emit,
    load_models,
    parse_value,
    read_yaml,
)


def cmd_eval(args) -> int:
    from ..evaluate import evaluate

    results = {}
    for path in args.model:
        (model,), _ = load_models([path])
        ds = dataset(args.data, args.split, args)
        results[path] = evaluate(model, ds, batch_size=batch_size(args),
                                 progress=not args.quiet)
    lines = [f"{'model':<36} {'system':<24} {'E MAE meV/atom':>15} {'F MAE meV/Å':>12} "
             f"{'F RMSE meV/Å':>13} {'frames':>7}"]
    for path, res in results.items():
        for system, m in res.items():
            lines.append(f"{Path(path).name:<36} {system:<24} "
                         f"{m['energy_mae_mev_per_atom']:>15.2f} "
                         f"{m['force_mae_mev_per_a']:>12.1f} {m['force_rmse_mev_per_a']:>13.1f} "
                         f"{m['frames']:>7d}")
    emit(args, results, "\n".join(lines))
    return 0


def cmd_info(args) -> int:
    from ..checkpoint_info import describe, describe_text

    checkpoints, stats, lines = [], [], []
    for path in args.model:
        if Path(path).suffix == ".safetensors":
            stats.append(_stats_info(path))
            lines.append(_stats_text(stats[-1]))
        else:
            checkpoints.append(describe(path))
            lines.append(describe_text(checkpoints[-1]))
    emit(args, {"checkpoints": checkpoints, "stats": stats}, "\n".join(lines))
    return 0


def _stats_info(path: str) -> dict:
    from ..stats import Stats

    return {"path": str(path), **Stats.load(path).summary()}


def _stats_text(info: dict) -> str:
    cross = ", with cross sums" if info["cross"] else ""
    lines = [f"{info['path']}: statistics of {len(info['models'])} model(s) over "
             f"{info['layers']} linear layers (inputs {info['in_features_min']}-"
             f"{info['in_features_max']} wide{cross}), architecture {info['architecture']}"]
    for k, m in enumerate(info["models"]):
        lines.append(f"  [{k}] {m['label'] or m['fingerprint']}: {m['graphs']} graphs, "
                     f"{m['rows_min']}-{m['rows_max']} rows per layer, "
                     f"measured in {m['seconds']:.2f} s")
        lines.extend(f"      {line}" for d in m["data"] for line in str(d).splitlines())
    return "\n".join(lines)


def cmd_train(args) -> int:
    import dataclasses

    from ..train import TrainConfig, train

    values: dict[str, Any] = {}
    if args.config:
        loaded = read_yaml(args.config, "training config") or {}
        if not isinstance(loaded, dict):
            raise CliError(f"training config '{args.config}' must be a mapping of TrainConfig "
                           "fields (systems, role, epochs, ...)")
        check_keys(loaded, [f.name for f in dataclasses.fields(TrainConfig)], args.config)
        values.update(loaded)
    for key in ("systems", "role", "model", "init", "epochs", "batch_size", "lr", "patience",
                "train_frames", "val_frames", "max_minutes", "seed", "energy_weight",
                "force_weight", "threads", "max_frames", "schedule", "monitor", "lr_patience",
                "min_delta"):
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    for pair in args.model_option or []:
        key, eq, value = pair.partition("=")
        if not eq:
            raise CliError(f"-M expects KEY=VALUE, got '{pair}'")
        values.setdefault("model_config", {})[key.replace("-", "_")] = parse_value(value)
    try:
        cfg = TrainConfig(**values)
    except TypeError as exc:
        raise CliError(f"bad training config: {exc}") from exc
    if not cfg.init:
        _check_model_config(cfg.model, cfg.model_config)
    if cfg.init and Path(cfg.init).resolve() == Path(args.output).resolve():
        raise CliError(f"-o {args.output} would overwrite the --init checkpoint; write the "
                       "trained model to a new file")
    result = train(cfg, output=args.output, progress=not args.quiet)
    test = result.metrics.get("test", {}).get("all", {})
    emit(args, {"output": args.output, "seconds": result.seconds, "metrics": result.metrics},
          f"trained {cfg.role} in {result.seconds / 60:.1f} min "
          f"(best epoch {result.metrics.get('best_epoch')}); test: energy MAE "
          f"{test.get('energy_mae_mev_per_atom', float('nan')):.2f} meV/atom, force MAE "
          f"{test.get('force_mae_mev_per_a', float('nan')):.1f} meV/Å -> {args.output}")
    return 0


def _check_model_config(name: str, config: dict[str, Any]) -> None:
    """An unknown architecture or constructor option is a one-line error, before training."""
    import inspect

    from ..errors import closest
    from ..models.registry import MODELS

    if name not in MODELS:
        raise CliError(f"unknown model '{name}'{closest(name, MODELS)}; known models: "
                       f"{', '.join(sorted(MODELS))}")
    params = [p for p in inspect.signature(MODELS[name]).parameters if p != "self"]
    check_keys(config, params, f"model '{name}' (-M)")
