"""``gffmerge methods``, ``solve``, ``merge`` and ``demo``: listing and running merge methods."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from .common import (
    CliError,
    batch_size,
    check_keys,
    dataset,
    emit,
    load_models,
    method_options,
    read_yaml,
)

# Keys of a merge config (mergekit shape) and of each of its model entries.
CONFIG_KEYS = ("merge_method", "models", "parameters", "limit", "output", "base_model")
MODEL_KEYS = ("model", "data")


_NEEDS_TEXT = {"base_model": "base (--base)", "base_optional": "base if given (--base)"}


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
        needs = ", ".join(_NEEDS_TEXT.get(n, n) for n in r["needs"]) or "only the models"
        lines.append(f"{r['name']}{mark}: {r['description']}\n  reference: {r['reference']}\n"
                     f"  needs: {needs}")
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
    for label, path in alternative_paths(args.output, result.alternatives).items():
        save_checkpoint(path, result.alternatives[label], json.loads(json.dumps(
            {"role": "merge-alternative", "label": label, "merged": str(args.output),
             "method": result.report.method,
             "record": result.report.options.get("alternatives", {}).get(label),
             "sources": sources, **extra}, default=str)))
    if args.report:
        from ..atomic import write_text_atomically

        write_text_atomically(args.report, result.report.to_markdown())


def alternative_paths(output: str, alternatives: dict) -> dict[str, str]:
    """Where each of a merge's alternatives (``-O alternatives=true``) is written: beside
    the output, ``merged.pt`` -> ``merged.alt-average.pt``, ``merged.alt-foundation.pt``."""
    out = Path(output)
    return {label: str(out.with_name(f"{out.stem}.alt-{re.sub(r'[^A-Za-z0-9]+', '-', label)}"
                                     f"{out.suffix or '.pt'}"))
            for label in alternatives}


def _merge_summary(args, result, base: str | None = None, base_from: str | None = None
                   ) -> None:
    rep = result.report
    alts = alternative_paths(args.output, result.alternatives)
    payload = {"output": args.output, "method": rep.method, "times": rep.times,
               "warnings": rep.warnings, "layers": len(rep.layers),
               "unreached": rep.unreached, "alternatives": alts, "base": base,
               "base_from": base_from}
    text = (f"merged {rep.num_models} models with {rep.method}: {len(rep.layers)} linear "
            f"layers solved, {len(rep.averaged)} tensors averaged; "
            + ", ".join(f"{k} {v:.2f} s" for k, v in rep.times.items()  # wall times
                        if not k.endswith("_cpu") and (v >= 0.005 or k == "total"))
            + f" -> {args.output}")
    if base:
        text += f"; base {base}" + (" (recorded in the sources' metadata)"
                                    if base_from == "metadata" else "")
    picked = _picked(rep)
    if picked:
        payload["picked"] = picked
        text += f"\npicked on validation: {picked}"
    if alts:
        text += ("; other candidates (repair starts: gffmerge repair --starts ...): "
                 + ", ".join(alts.values()))
    emit(args, payload, text)


def _picked(report) -> str:
    """What a method that chooses on validation frames chose, in words ("" when it chose
    nothing): a grid's options, or the default's pick (:meth:`MergeReport.pick`) with its
    validation error and the average's."""
    options = report.options or {}
    chosen = options.get("chosen")
    if isinstance(chosen, dict):  # a grid (--grid auto): its options, not its records
        return ", ".join(f"{k}={v}" for k, v in chosen.items()
                         if isinstance(v, (str, int, float, bool)) or v is None)
    what = report.pick()
    if not what or options.get("val_force_mae_mev_per_a") is None:
        return ""
    score = {"per_system": "mean over the systems", "pooled": "pooled over the systems"}.get(
        options.get("val_score"), options.get("val_score") or "pooled")
    text = (f"{what}: validation force MAE {options['val_force_mae_mev_per_a']:.1f} meV/Å "
            f"({score})")
    average = [a["val_force_mae_mev_per_a"] for a in options.get("anchors_tried") or ()
               if a.get("kind") == "average"]
    if average:
        text += f", the average's {average[0]:.1f}"
    return text


def _base_model(method: str, needs, base: str | None, ckpts: list[str], metas: list[dict],
                args=None, models=None):
    """``(model, path, origin)`` of the base when the method needs or uses one: ``--base``
    (origin ``"--base"``), checked against the sources' metadata, else the foundation every
    source records as its ``init`` when it is found here (origin ``"metadata"``, told by
    :func:`_note_base`; ``--no-base`` turns this off); ``(None, None, None)`` when the method
    uses none or, using one optionally, finds none (origin ``"not found: <init>"`` when the
    sources record one that is not here)."""
    from ..lineage import check_shared_base, recorded_base

    no_base = bool(getattr(args, "no_base", False))
    if no_base and base:
        raise CliError(f"--base {base} and --no-base contradict each other: drop one")
    if not (needs.base_model or needs.base_optional):
        if base:
            raise CliError(f"method '{method}' does not use a base model: drop --base "
                           f"{base} (methods that do: the default, ties, task_arithmetic, "
                           "emr)")
        return None, None, None
    origin = "--base" if base else None
    if not base and not no_base:
        found = recorded_base(list(zip(ckpts, metas)))
        if found is not None:
            base, origin = str(found), "metadata"
    if not base:
        inits = sorted({str(m.get("init")) for m in metas if m.get("init")})
        if needs.base_optional and not needs.base_model:
            missing = inits and not no_base
            return None, None, f"not found: {', '.join(inits)}" if missing else None
        hint = (f" (the sources record {', '.join(inits)}, not found here)" if inits
                and not no_base else "")
        raise CliError(f"method '{method}' needs --base CKPT: the pre-trained checkpoint the "
                       f"sources were fine-tuned from{hint}")
    check_shared_base(base, list(zip(ckpts, metas)))
    model = load_models([base])[0][0]
    if origin == "metadata" and models:
        from ..architecture import architecture_signature

        if architecture_signature(model) != architecture_signature(models[0]):
            raise CliError(f"{base}, the foundation the sources record as their start, does "
                           "not have their architecture: pass the right one as --base CKPT, "
                           "or --no-base to merge without one")
    return model, base, origin


def _foundation_record(args, ckpts: list[str], metas: list[dict]) -> dict:
    """Refuse sources fine-tuned from different foundations unless
    ``--allow-different-foundations`` (then say so on stderr); the record of the
    foundation they share (``foundation_sha256``) for the merged checkpoint, when known."""
    from ..lineage import FoundationMismatchError, check_same_foundation

    try:
        shared = check_same_foundation(list(zip(ckpts, metas)))
    except FoundationMismatchError as exc:
        if not getattr(args, "allow_different_foundations", False):
            raise
        if not args.quiet:
            print(f"gffmerge {args.command}: warning: {exc}", file=sys.stderr)
        return {"foundations_differ": True}
    return {} if shared is None else {"foundation_sha256": shared}


def _note_base(args, base: str | None, origin: str | None) -> None:
    """One line on stderr, once the inputs are checked, when the base came from the
    sources' metadata rather than from ``--base``."""
    if args.quiet or args.json or origin is None:
        return
    if origin == "metadata":
        print(f"gffmerge {args.command}: note: using --base {base}, the foundation the "
              "sources record as their start (--no-base: merge without it)", file=sys.stderr)
    elif origin.startswith("not found: "):
        print(f"gffmerge {args.command}: note: the sources record "
              f"{origin.removeprefix('not found: ')} as their start, and no one foundation of "
              "all of them is found here: merging without one (pass it as --base CKPT to let "
              "the default also try it)", file=sys.stderr)


def cmd_solve(args) -> int:
    from .. import methods
    from ..stats import Stats

    models, metas = load_models(args.model)
    lineage = _foundation_record(args, args.model, metas)
    opts = method_options(args.method, args.option)
    spec = methods.get(args.method)
    needs = spec.needs_for(spec.options(**opts))
    if needs.gradients:
        raise CliError(f"method '{args.method}' computes gradients on each model's labelled "
                       "data: use gffmerge merge --data ... instead of solve")
    base, base_path, base_from = _base_model(args.method, needs, args.base, args.model,
                                             metas, args, models)
    stats = None
    if needs.stats:
        if not args.stats:
            raise CliError(f"method '{args.method}' needs --stats (one file per model, or one "
                           "file holding all models)")
        stats = Stats.concat(Stats.load(p) for p in args.stats)
    _note_base(args, base_path, base_from)
    result = spec(models, stats, base=base, **opts)
    _save_merged(args, result, args.model, {"stats": args.stats or [], "base": base_path,
                                            "base_from": base_from, **lineage})
    _merge_summary(args, result, base_path, base_from)
    return 0


def _merge_config(path: str) -> dict:
    """The merge config at ``path``, checked: known keys only, and every path in it (models,
    data files, output) relative to the config file's folder."""
    cfg = read_yaml(path, "merge config")
    if not isinstance(cfg, dict) or "models" not in cfg:
        raise CliError(f"{path}: a merge config needs 'models: [{{model: CKPT, data: ...}}]'")
    check_keys(cfg, CONFIG_KEYS, path)
    if not isinstance(cfg["models"], list) or not cfg["models"]:
        raise CliError(f"{path}: 'models' must be a list of {{model: CKPT, data: ...}} entries")
    if cfg.get("parameters") is not None and not isinstance(cfg["parameters"], dict):
        raise CliError(f"{path}: 'parameters' must be a mapping of method options")
    base = Path(path).parent
    models = []
    for k, entry in enumerate(cfg["models"]):
        if not isinstance(entry, dict) or "model" not in entry:
            raise CliError(f"{path}: models[{k}] must be a mapping with 'model: CKPT' (and "
                           "'data: ...')")
        check_keys(entry, MODEL_KEYS, f"{path}: models[{k}]")
        data = entry.get("data")
        data = data if isinstance(data, list) else [data]
        models.append({"model": str(_beside(base, entry["model"], always=True)),
                       "data": [None if d is None else _beside(base, d) for d in data]})
    cfg["models"] = models
    if cfg.get("output"):
        cfg["output"] = str(_beside(base, cfg["output"], always=True))
    if cfg.get("base_model"):
        cfg["base_model"] = str(_beside(base, cfg["base_model"], always=True))
    limit = cfg.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise CliError(f"{path}: 'limit' must be a whole number of graphs >= 1, got {limit!r}")
    return cfg


def _beside(base: Path, value, *, always: bool = False) -> str:
    """A path from a config file, relative to its folder; a data entry that is no file
    there (a shipped system name such as ``lips20/beta-Li3PS4``) stays as written."""
    text = str(value)
    path = Path(text).expanduser()
    if path.is_absolute():
        return str(path)
    if always or (base / path).exists():
        return str(base / path)
    return text


def cmd_merge(args) -> int:
    from .. import merge as run_merge

    method = args.method
    ckpts, datas, limit = list(args.model or []), [[d] for d in (args.data or [])], args.limit
    cfg_params: dict[str, Any] = {}
    if args.config:
        cfg = _merge_config(args.config)
        method = method or cfg.get("merge_method")
        cfg_params = dict(cfg.get("parameters") or {})
        ckpts = [m["model"] for m in cfg["models"]]
        datas = [m["data"] for m in cfg["models"]]
        limit = cfg.get("limit", limit)
        if not args.output and cfg.get("output"):
            from ..atomic import check_output

            args.output = str(check_output(cfg["output"]))
        args.base = args.base or cfg.get("base_model")
    from .. import methods

    method = method or methods.DEFAULT_METHOD
    opts = {**method_options(method, cfg_params), **method_options(method, args.option)}
    if not args.output:
        raise CliError("no output path: pass -o merged.pt (or 'output:' in the config)")
    if not ckpts:
        raise CliError("no models: pass --model CKPT ... or --config merge.yaml")
    models, metas = load_models(ckpts)
    lineage = _foundation_record(args, ckpts, metas)
    spec = methods.get(method)
    needed = spec.needs_for(spec.options(**opts))
    base, base_path, base_from = _base_model(method, needed, args.base, ckpts, metas, args,
                                             models)
    needs = needed.stats or needed.gradients or needed.data
    if needed.data and limit is not None:  # such methods budget frames themselves
        opts.setdefault("frames", limit)
        limit = None
    if needs and len(datas) != len(models):
        raise CliError(f"{len(models)} models but {len(datas)} --data entries: give each "
                       "model its own data, in the same order")
    loaders = None
    if needs:
        sets = [dataset([d for d in ds if d], args.split, args) for ds in datas]
        if needed.stats and not (needed.gradients or needed.data) and args.batch_size is None:
            # statistics only (sums over frames): the frames batches of the default size
            # would measure up to the limit, batched by an atom budget (small molecules)
            from ..collect.budget import stats_batches

            loaders = [stats_batches(s, m, batch_size(args), limit) for s, m in zip(sets, models)]
            limit = None
        else:
            loaders = [s.batches_for(m, batch_size(args)) for s, m in zip(sets, models)]
    grid = getattr(args, "grid", None)
    if grid and len(datas) != len(models):
        raise CliError(f"--grid chooses {method}'s options on validation frames: give each "
                       "model its --data, in the same order")
    val_data = None
    if (needed.data and args.split == "train") or grid:  # validation frames, same systems
        val_data = [dataset([d for d in ds if d], "val", args) for ds in datas]
    _note_base(args, base_path, base_from)
    result = run_merge(models, loaders, method=method, limit=limit, progress=not args.quiet,
                       labels=[Path(c).stem for c in ckpts], base=base, val_data=val_data,
                       grid=grid, **opts)
    _save_merged(args, result, ckpts, {"data": [str(d) for d in datas], "base": base_path,
                                       "base_from": base_from, **lineage})
    _merge_summary(args, result, base_path, base_from)
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo

    return run_demo(args)
