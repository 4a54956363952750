"""``gffmerge methods``, ``solve``, ``merge`` and ``demo``: listing and running merge methods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import CliError, dataset, emit, load_models, method_options


def cmd_methods(args) -> int:
    from .. import methods

    rows = []
    for name in methods.available():
        spec = methods.get(name)
        rows.append({"name": name, "description": spec.description,
                     "reference": spec.reference, "needs_stats": spec.needs_stats,
                     "needs": spec.needs_for().names(),
                     "default": name == methods.DEFAULT_METHOD,
                     "options": [{"name": o.name, "type": o.type, "default": o.default,
                                  "choices": list(o.choices), "help": o.help}
                                 for o in spec.option_infos()]})
    lines = []
    for r in rows:
        mark = " (default)" if r["default"] else ""
        lines.append(f"{r['name']}{mark}: {r['description']}\n  reference: {r['reference']}\n"
                     f"  needs: {', '.join(r['needs']) or 'only the models'}")
        for o in r["options"]:
            choices = f" {{{', '.join(map(str, o['choices']))}}}" if o["choices"] else ""
            lines.append(f"    {o['name']} ({o['type']}{choices}, default {o['default']!r})"
                         f"  {o['help']}")
    emit(args, {"methods": rows}, "\n".join(lines))
    return 0


def _save_merged(args, result, sources: list[str], extra: dict) -> None:
    from ..checkpoint import save_checkpoint

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
    emit(args, payload, text)


def _base_model(method: str, needs, base: str | None, ckpts: list[str], metas: list[dict]):
    """The ``--base`` model when the method needs one, after checking from the sources'
    metadata that they were fine-tuned from it (None when the method needs none)."""
    if not needs.base_model:
        return None
    if not base:
        raise CliError(f"method '{method}' needs --base CKPT: the pre-trained checkpoint the "
                       "sources were fine-tuned from")
    from ..checkpoint import load_checkpoint
    from ..lineage import check_shared_base

    check_shared_base(base, list(zip(ckpts, metas)))
    return load_checkpoint(base)[0]


def cmd_solve(args) -> int:
    from .. import methods
    from ..stats import Stats

    models, metas = load_models(args.model)
    opts = method_options(args.method, args.option)
    spec = methods.get(args.method)
    needs = spec.needs_for(spec.options(**opts))
    if needs.gradients:
        raise CliError(f"method '{args.method}' computes gradients on each model's labelled "
                       "data: use gffmerge merge --data ... instead of solve")
    base = _base_model(args.method, needs, args.base, args.model, metas)
    stats = None
    if needs.stats:
        if not args.stats:
            raise CliError(f"method '{args.method}' needs --stats (one file per model, or one "
                           "file holding all models)")
        stats = Stats.concat(Stats.load(p) for p in args.stats)
    result = spec(models, stats, base=base, **opts)
    _save_merged(args, result, args.model, {"stats": args.stats or [], "base": args.base})
    _merge_summary(args, result)
    return 0


def _merge_config(path: str) -> dict:
    import yaml

    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict) or "models" not in cfg:
        raise CliError(f"{path}: a merge config needs 'models: [{{model: CKPT, data: ...}}]'")
    return cfg


def cmd_merge(args) -> int:
    from .. import merge as run_merge

    method = args.method
    ckpts, datas, limit = list(args.model or []), [[d] for d in (args.data or [])], args.limit
    cfg_params: dict[str, Any] = {}
    if args.config:
        cfg = _merge_config(args.config)
        method = method or cfg.get("merge_method")
        cfg_params = dict(cfg.get("parameters") or {})
        ckpts = [str(m["model"]) for m in cfg["models"]]
        datas = [m["data"] if isinstance(m.get("data"), list) else [m.get("data")]
                 for m in cfg["models"]]
        limit = cfg.get("limit", limit)
        args.output = args.output or cfg.get("output")
        args.base = args.base or cfg.get("base_model")
    from .. import methods

    method = method or methods.DEFAULT_METHOD
    opts = {**method_options(method, cfg_params), **method_options(method, args.option)}
    if not args.output:
        raise CliError("no output path: pass -o merged.pt (or 'output:' in the config)")
    if not ckpts:
        raise CliError("no models: pass --model CKPT ... or --config merge.yaml")
    models, metas = load_models(ckpts)
    spec = methods.get(method)
    needed = spec.needs_for(spec.options(**opts))
    base = _base_model(method, needed, args.base, ckpts, metas)
    needs = needed.stats or needed.gradients or needed.data
    if needed.data and limit is not None:  # such methods budget frames themselves
        opts.setdefault("frames", limit)
        limit = None
    if needs and len(datas) != len(models):
        raise CliError(f"{len(models)} models but {len(datas)} --data entries: give each "
                       "model its own data, in the same order")
    loaders = None
    if needs:
        loaders = [dataset([d for d in ds if d], args.split, args).batches_for(
            m, args.batch_size) for ds, m in zip(datas, models)]
    val_data = None
    if needed.data and args.split == "train":  # validation frames of the same systems
        val_data = [dataset([d for d in ds if d], "val", args) for ds in datas]
    result = run_merge(models, loaders, method=method, limit=limit, progress=not args.quiet,
                       labels=[Path(c).stem for c in ckpts], base=base, val_data=val_data,
                       **opts)
    _save_merged(args, result, ckpts, {"data": [str(d) for d in datas], "base": args.base})
    _merge_summary(args, result)
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo

    return run_demo(args)
