"""What every subcommand shares: the error type, output, option parsing, loading inputs."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A bad command line or input; printed as one line, exit code 2."""


# ---------------------------------------------------------------- shared helpers
def emit(args, payload: dict, text: str) -> None:
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


def parse_value(text: str) -> Any:
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


def method_options(method: str, pairs: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Typed options of ``method`` from KEY=VALUE strings or a mapping (YAML parameters)."""
    from .. import methods

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
            items.append((key, parse_value(value)))
    out = {}
    for key, value in items:
        key = str(key).strip().replace("-", "_")
        if key not in types:
            raise CliError(f"method '{method}' has no option '{key}'; its options are: "
                           f"{', '.join(sorted(types)) or '(none)'}")
        out[key] = _coerce(types[key], value)
    return out


def load_models(paths: list[str]):
    from ..checkpoint import load_checkpoint

    models, metas = [], []
    for p in paths:
        model, meta = load_checkpoint(p)
        models.append(model)
        metas.append(meta)
    return models, metas


def dataset(names: list[str], split: str | None, args):
    from ..data import load_dataset

    ds = load_dataset(names, max_frames=args.max_frames, seed=args.seed)
    if split and split != "all":
        ds = ds.split(split)
    if len(ds) == 0:
        raise CliError(f"no frames in split '{split}' of {', '.join(names)}")
    return ds


def add_data_options(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--split", default=split, choices=["train", "val", "test", "all"],
                   help=f"which split of the data to use (default: {split})")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-frames", type=int, default=1250,
                   help="frames sampled per system (protocol: 1250, seed 42)")
    p.add_argument("--seed", type=int, default=42, help="sampling and split seed")
