"""The ``gffmerge`` command line: each subcommand parses arguments and calls the Python API."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A bad command line or input; printed as one line, exit code 2."""


# ---------------------------------------------------------------- shared helpers
def _emit(args, payload: dict, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=_json_default))
    elif not args.quiet:
        print(text)


def _json_default(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, Path):
        return str(v)
    return repr(v)


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _coerce(option, value: Any) -> Any:
    """Convert a command-line or YAML value to the option's type (YAML reads 1e-6 as text)."""
    try:
        if option.type == "float":
            return float(value)
        if option.type == "int":
            return int(value)
        if option.type == "bool" and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
    except (TypeError, ValueError):
        raise CliError(f"option '{option.name}' expects a {option.type}, got {value!r}") from None
    return value


def _method_options(method: str, pairs: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Typed options of ``method`` from KEY=VALUE strings or a mapping (YAML parameters)."""
    from . import methods

    spec = methods.get(method)
    types = {o.name: o for o in spec.option_infos()}
    if isinstance(pairs, dict):
        items = list(pairs.items())
    else:
        items = []
        for pair in pairs or []:
            if "=" not in pair:
                raise CliError(f"--option expects KEY=VALUE, got '{pair}'")
            key, value = pair.split("=", 1)
            items.append((key, _parse_value(value)))
    out = {}
    for key, value in items:
        key = str(key).strip().replace("-", "_")
        if key not in types:
            raise CliError(f"method '{method}' has no option '{key}'; its options are: "
                           f"{', '.join(sorted(types)) or '(none)'}")
        out[key] = _coerce(types[key], value)
    return out


def _load_models(paths: list[str]):
    from .checkpoint import load_checkpoint

    models, metas = [], []
    for p in paths:
        model, meta = load_checkpoint(p)
        models.append(model)
        metas.append(meta)
    return models, metas


def _dataset(names: list[str], split: str | None, args):
    from .data import load_dataset

    ds = load_dataset(names, max_frames=args.max_frames, seed=args.seed)
    if split and split != "all":
        ds = ds.split(split)
    if len(ds) == 0:
        raise CliError(f"no frames in split '{split}' of {', '.join(names)}")
    return ds


def _add_data_options(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--split", default=split, choices=["train", "val", "test", "all"],
                   help=f"which split of the data to use (default: {split})")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-frames", type=int, default=1250,
                   help="frames sampled per system (protocol: 1250, seed 42)")
    p.add_argument("--seed", type=int, default=42, help="sampling and split seed")


# ---------------------------------------------------------------- subcommands
def cmd_methods(args) -> int:
    from . import methods

    rows = []
    for name in methods.available():
        spec = methods.get(name)
        rows.append({"name": name, "description": spec.description,
                     "reference": spec.reference, "needs_stats": spec.needs_stats,
                     "options": [{"name": o.name, "type": o.type, "default": o.default,
                                  "choices": list(o.choices), "help": o.help}
                                 for o in spec.option_infos()]})
    lines = []
    for r in rows:
        lines.append(f"{r['name']}: {r['description']}\n  reference: {r['reference']}")
        for o in r["options"]:
            choices = f" {{{', '.join(map(str, o['choices']))}}}" if o["choices"] else ""
            lines.append(f"    {o['name']} ({o['type']}{choices}, default {o['default']!r})"
                         f"  {o['help']}")
    _emit(args, {"methods": rows}, "\n".join(lines))
    return 0


def cmd_measure(args) -> int:
    from .collect import measure
    from .distributed import init_from_env, launched_by_torchrun, measure_distributed

    (model,), _ = _load_models([args.model])
    ds = _dataset(args.data, args.split, args)
    loader = ds.batches_for(model, args.batch_size)
    options = dict(limit=args.limit, cross=args.cross, label=Path(args.model).stem,
                   description=ds.describe(), layers=args.layers, dense=args.dense)
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
            stats = measure_distributed(model, loader, device=device,
                                        progress=not args.quiet and rank == 0, **options)
        finally:
            dist.destroy_process_group()
    else:
        stats = measure(model, loader, progress=not args.quiet, **options)
    if rank != 0:
        return 0
    path = stats.save(args.output)
    ms = stats.models[0]
    total_rows = sum(ls.rows for ls in ms.layers.values())
    _emit(args, {"output": str(path), "graphs": ms.graphs, "layers": len(ms.layers),
                 "rows": total_rows, "seconds": ms.seconds},
          f"measured {ms.graphs} graphs, {len(ms.layers)} layers in {ms.seconds:.1f} s "
          f"-> {path}")
    return 0


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _save_merged(args, result, sources: list[str], extra: dict) -> None:
    from .checkpoint import save_checkpoint

    meta = {"role": "merged", "method": result.report.method,
            "options": result.report.options, "sources": sources,
            "times": result.report.times, "warnings": result.report.warnings, **extra}
    save_checkpoint(args.output, result.model, json.loads(json.dumps(meta, default=str)))
    if args.report:
        Path(args.report).write_text(result.report.to_markdown())


def _merge_summary(args, result) -> None:
    rep = result.report
    payload = {"output": args.output, "method": rep.method, "times": rep.times,
               "warnings": rep.warnings, "layers": len(rep.layers),
               "unreached": rep.unreached}
    text = (f"merged {rep.num_models} models with {rep.method}: {len(rep.layers)} linear "
            f"layers solved, {len(rep.averaged)} tensors averaged; "
            + ", ".join(f"{k} {v:.2f} s" for k, v in rep.times.items())
            + f" -> {args.output}")
    _emit(args, payload, text)


def cmd_solve(args) -> int:
    from . import methods
    from .stats import Stats

    models, _ = _load_models(args.model)
    opts = _method_options(args.method, args.option)
    spec = methods.get(args.method)
    stats = None
    if spec.needs_stats:
        if not args.stats:
            raise CliError(f"method '{args.method}' needs --stats (one file per model, or one "
                           "file holding all models)")
        stats = Stats.concat(Stats.load(p) for p in args.stats)
    result = spec(models, stats, **opts)
    _save_merged(args, result, args.model, {"stats": args.stats or []})
    _merge_summary(args, result)
    return 0


def _merge_config(path: str) -> dict:
    import yaml

    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict) or "models" not in cfg:
        raise CliError(f"{path}: a merge config needs 'models: [{{model: CKPT, data: ...}}]'")
    return cfg


def cmd_merge(args) -> int:
    from . import merge as run_merge

    method = args.method
    ckpts, datas, limit = list(args.model or []), [[d] for d in (args.data or [])], args.limit
    cfg_params: dict[str, Any] = {}
    if args.config:
        cfg = _merge_config(args.config)
        method = cfg.get("merge_method", method)
        cfg_params = dict(cfg.get("parameters") or {})
        ckpts = [str(m["model"]) for m in cfg["models"]]
        datas = [m["data"] if isinstance(m.get("data"), list) else [m.get("data")]
                 for m in cfg["models"]]
        limit = cfg.get("limit", limit)
        args.output = args.output or cfg.get("output")
    opts = {**_method_options(method, cfg_params), **_method_options(method, args.option)}
    if not args.output:
        raise CliError("no output path: pass -o merged.pt (or 'output:' in the config)")
    if not ckpts:
        raise CliError("no models: pass --model CKPT ... or --config merge.yaml")
    models, _ = _load_models(ckpts)
    from . import methods

    needs = methods.get(method).needs_stats
    if needs and len(datas) != len(models):
        raise CliError(f"{len(models)} models but {len(datas)} --data entries: give each "
                       "model its own data, in the same order")
    loaders = None
    if needs:
        loaders = [_dataset([d for d in ds if d], args.split, args).batches_for(
            m, args.batch_size) for ds, m in zip(datas, models)]
    result = run_merge(models, loaders, method=method, limit=limit, progress=not args.quiet,
                       labels=[Path(c).stem for c in ckpts], **opts)
    _save_merged(args, result, ckpts, {"data": [str(d) for d in datas]})
    _merge_summary(args, result)
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate

    results = {}
    for path in args.model:
        (model,), _ = _load_models([path])
        ds = _dataset(args.data, args.split, args)
        results[path] = evaluate(model, ds, batch_size=args.batch_size,
                                 progress=not args.quiet)
    lines = [f"{'model':<36} {'system':<24} {'E MAE meV/atom':>15} {'F MAE meV/Å':>12} "
             f"{'F RMSE meV/Å':>13} {'frames':>7}"]
    for path, res in results.items():
        for system, m in res.items():
            lines.append(f"{Path(path).name:<36} {system:<24} "
                         f"{m['energy_mae_mev_per_atom']:>15.2f} "
                         f"{m['force_mae_mev_per_a']:>12.1f} {m['force_rmse_mev_per_a']:>13.1f} "
                         f"{m['frames']:>7d}")
    _emit(args, results, "\n".join(lines))
    return 0


def cmd_train(args) -> int:
    from .train import TrainConfig, train

    values: dict[str, Any] = {}
    if args.config:
        import yaml

        values.update(yaml.safe_load(Path(args.config).read_text()) or {})
    for key in ("systems", "role", "model", "init", "epochs", "batch_size", "lr", "patience",
                "train_frames", "val_frames", "max_minutes", "seed", "energy_weight",
                "force_weight", "threads", "max_frames"):
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    for pair in args.model_option or []:
        key, _, value = pair.partition("=")
        values.setdefault("model_config", {})[key.replace("-", "_")] = _parse_value(value)
    try:
        cfg = TrainConfig(**values)
    except TypeError as exc:
        raise CliError(f"bad training config: {exc}") from exc
    result = train(cfg, output=args.output, progress=not args.quiet)
    test = result.metrics.get("test", {}).get("all", {})
    _emit(args, {"output": args.output, "seconds": result.seconds, "metrics": result.metrics},
          f"trained {cfg.role} in {result.seconds / 60:.1f} min "
          f"(best epoch {result.metrics.get('best_epoch')}); test: energy MAE "
          f"{test.get('energy_mae_mev_per_atom', float('nan')):.2f} meV/atom, force MAE "
          f"{test.get('force_mae_mev_per_a', float('nan')):.1f} meV/Å -> {args.output}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or text")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = argparse.ArgumentParser(
        prog="gffmerge", parents=[common],
        description="Closed-form merging of fine-tuned GNN force fields.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", parents=[common], help="list merge methods and options")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("measure", parents=[common],
                       help="accumulate per-layer Gram statistics of one model on its data")
    p.add_argument("--model", required=True, help="checkpoint (.pt)")
    p.add_argument("--data", required=True, nargs="+",
                   help="shipped system names (lips20/beta-Li3PS4) or data files")
    _add_data_options(p, "train")
    p.add_argument("--limit", type=int, help="graphs per model, checked after each batch")
    p.add_argument("--cross", action="store_true", help="also record Σ x̃yᵀ (target=cross)")
    p.add_argument("--layers", nargs="+", help="layer names or glob patterns to measure")
    p.add_argument("--dense", action="store_true",
                   help="dense hook on every layer's full input rows instead of the "
                        "structured providers (the reference; same stats, slower)")
    p.add_argument("-o", "--output", required=True, help="stats file (.safetensors)")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("solve", parents=[common], help="merge checkpoints from saved stats")
    p.add_argument("--model", required=True, nargs="+", help="source checkpoints, in order")
    p.add_argument("--stats", nargs="+", help="stats files, in the same order")
    p.add_argument("--method", default="gffmerge")
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
    p.add_argument("--method", default="gffmerge")
    p.add_argument("-O", "--option", action="append", metavar="KEY=VALUE")
    p.add_argument("--limit", type=int, help="graphs per model, checked after each batch")
    _add_data_options(p, "train")
    p.add_argument("-o", "--output", help="merged checkpoint (.pt)")
    p.add_argument("--report", help="write the per-layer report (markdown)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("eval", parents=[common], help="energy/force errors of checkpoints")
    p.add_argument("--model", required=True, nargs="+")
    p.add_argument("--data", required=True, nargs="+")
    _add_data_options(p, "test")
    p.set_defaults(func=cmd_eval)

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
                      ("threads", int), ("max-frames", int)):
        p.add_argument(f"--{name}", type=typ)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", parents=[common], help="merge the shipped LiPS20 models and "
                                                      "compare methods")
    p.add_argument("--out", default="demo_out", help="folder for report.md and the chart")
    p.add_argument("--retrain", action="store_true",
                   help="retrain foundation, fine-tunes and joint model from data first")
    p.add_argument("--synthetic", action="store_true",
                   help="the tiny self-contained MLP demo (no data, no checkpoints)")
    p.add_argument("--frames", type=int, help="limit test frames per system (quick runs)")
    p.add_argument("--limit", type=int, help="graphs measured per source model")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .errors import GffmergeError

    try:
        return int(args.func(args) or 0)
    except (CliError, GffmergeError, CheckpointError, FileNotFoundError, ValueError,
            KeyError, TypeError) as exc:
        if os.environ.get("GFFMERGE_DEBUG"):
            raise
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        one_line = "; ".join(line.strip() for line in msg.splitlines() if line.strip())
        print(f"gffmerge {args.command}: error: {one_line or repr(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print(f"gffmerge {args.command}: interrupted. {exc}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
