"""What every subcommand shares: the error policy, output, option parsing, loading inputs.

The error policy (:func:`run_command`, used for every subcommand):

- a user error (bad files, paths, options, data, numerics: :class:`CliError`, every
  :class:`~gffmerge.errors.GffmergeError`, ``ValueError``, ``OSError``, YAML and
  linear-algebra errors) exits 2 with one line ``gffmerge CMD: error: ...`` that names the
  thing and the fix;
- anything else is a bug: exit 1 with ``internal error, please report``; the traceback
  is printed only with ``--debug`` (or ``GFFMERGE_DEBUG=1``);
- with ``--json`` the error is ``{"error": ..., "kind": ..., "exit_code": ...}`` on stdout;
- ``--quiet`` silences warnings (they stay in the merge report); otherwise each is one
  line ``gffmerge CMD: warning: ...`` on stderr;
- output paths (``-o``, ``--report``) are checked before any work, and every file the
  command writes is put in place only when the whole command succeeded
  (:func:`gffmerge.atomic.all_or_nothing`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a pipeline cut short

# Commands whose output is kept when stopped with Ctrl-C (training saves its best model).
KEEP_ON_INTERRUPT = ("train", "repair")
# Commands that write their results row by row on purpose (each file atomically, kept when
# a later step fails or is stopped, reused by a rerun): not all-or-nothing.
INCREMENTAL = ("experiment",)
# Attributes of the parsed arguments that name files a command writes, and files it reads.
OUTPUT_ARGS = (("output", "output"), ("report", "report"))
INPUT_ARGS = ("model", "stats", "config", "init", "data", "systems")


class CliError(Exception):
    """A bad command line or input; printed as one line, exit code 2."""


# ---------------------------------------------------------------- the error policy
def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def classify(exc: BaseException) -> tuple[int, str, str]:
    """``(exit code, kind, one-line message)`` of an exception that ended a command."""
    from ..errors import GffmergeError, describe_os_error

    kind = type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "Interrupted", _one_line(str(exc)) or "interrupted"
    if isinstance(exc, (CliError, GffmergeError)):
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return EXIT_BAD_INPUT, kind, _one_line(msg) or kind
    if isinstance(exc, OSError):
        if exc.errno is None or exc.filename is None:
            return EXIT_BAD_INPUT, kind, _one_line(str(exc))
        return EXIT_BAD_INPUT, kind, describe_os_error(exc, "use")
    if isinstance(exc, MemoryError) or kind == "OutOfMemoryError":
        return (EXIT_BAD_INPUT, "OutOfMemoryError",
                f"out of memory ({_one_line(str(exc))[:200]}); use a smaller --batch-size or "
                "--limit, or a machine with more memory")
    module = type(exc).__module__ or ""
    if module.startswith("yaml"):
        return EXIT_BAD_INPUT, "ConfigError", f"malformed YAML: {_one_line(str(exc))}"
    if any(c.__name__.lstrip("_") == "LinAlgError" for c in type(exc).__mro__):
        return (EXIT_BAD_INPUT, "NumericalError",
                f"linear algebra failed ({_one_line(str(exc))}); check the statistics for "
                "NaN/Inf (re-measure) or use a larger ridge")
    if isinstance(exc, ArithmeticError):
        return EXIT_BAD_INPUT, "NumericalError", _one_line(str(exc)) or kind
    if isinstance(exc, ValueError):
        return EXIT_BAD_INPUT, kind, _one_line(str(exc)) or kind
    return (EXIT_INTERNAL, "InternalError",
            f"internal error, please report: {kind}: {_one_line(str(exc))[:300]} "
            "(rerun with --debug for the traceback)")


def _debugging(args) -> bool:
    return bool(getattr(args, "debug", False) or os.environ.get("GFFMERGE_DEBUG"))


def report_failure(args, command: str, exc: BaseException) -> int:
    """Print ``exc`` as the policy says (one line, or JSON) and return the exit code."""
    code, kind, msg = classify(exc)
    if _debugging(args):
        traceback.print_exception(exc, file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": msg, "kind": kind, "exit_code": code}))
    elif code == EXIT_INTERNAL:
        print(f"gffmerge {command}: {msg}", file=sys.stderr)
    else:
        print(f"gffmerge {command}: {'interrupted' if code == EXIT_INTERRUPTED else 'error'}: "
              f"{msg}", file=sys.stderr)
    return code


def check_outputs(args, command: str) -> None:
    """Check every output path named on the command line before any work starts."""
    from ..atomic import check_output

    inputs: dict[Path, str] = {}
    for attr in INPUT_ARGS:
        value = getattr(args, attr, None)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item and Path(item).is_file():
                inputs[Path(item).resolve()] = attr
    seen: dict[Path, str] = {}
    for attr, what in OUTPUT_ARGS:
        value = getattr(args, attr, None)
        if not value or command == "demo":
            continue
        path = check_output(value, what)
        key = path.resolve()
        if key in inputs:
            raise CliError(f"{what} '{value}' would overwrite the input {inputs[key]}; write "
                           "to a new file")
        if key in seen:
            raise CliError(f"{what} and {seen[key]} are the same file '{value}'; give each "
                           "its own path")
        seen[key] = what


def run_command(args, func: Callable[[Any], int | None], command: str | None = None) -> int:
    """Run ``func(args)`` under the error policy (see the module docstring)."""
    from ..atomic import all_or_nothing

    command = command or getattr(args, "command", None) or "command"
    with warnings.catch_warnings():
        if getattr(args, "quiet", False):
            warnings.simplefilter("ignore")
        else:
            def show(message, category, filename, lineno, file=None, line=None):
                print(f"gffmerge {command}: warning: {_one_line(str(message))}",
                      file=sys.stderr)
            warnings.showwarning = show
        try:
            check_outputs(args, command)
            if command in INCREMENTAL:
                return int(func(args) or 0)
            with all_or_nothing(keep_on_interrupt=command in KEEP_ON_INTERRUPT):
                return int(func(args) or 0)
        except SystemExit:
            raise
        except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        except BaseException as exc:  # noqa: BLE001  (the policy decides what each one is)
            return report_failure(args, command, exc)


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are JSON when ``json_errors`` is set (by
    :func:`gffmerge.cli.main` when ``--json`` is on the command line)."""

    json_errors = False

    def error(self, message: str):
        if self.json_errors:
            print(json.dumps({"error": f"{self.prog}: {message}", "kind": "UsageError",
                              "exit_code": EXIT_BAD_INPUT}))
            self.exit(EXIT_BAD_INPUT)
        super().error(message)


def add_global_flags(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """``-q``, ``--json`` and ``--debug``. ``inherited`` (a subcommand's copy): the flags
    default to unset, so one given before the subcommand is not reset by it."""
    default = argparse.SUPPRESS if inherited else False
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="no progress bars, text or warnings (warnings stay in reports)")
    parser.add_argument("--json", action="store_true", default=default,
                        help="machine-readable output (errors too)")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="print the traceback of an error")
    if not inherited:
        parser.add_argument("--version", action=_Version, nargs=0,
                            help="print the versions of gffmerge, torch and the extension's "
                                 "build, and exit (with --json before it: as JSON)")


class _Version(argparse.Action):
    """``--version``: formed only when asked for (it loads the extension)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from ..provenance import versions, versions_text

        v = versions()
        print(json.dumps(v, indent=2) if getattr(namespace, "json", False)
              else versions_text(v))
        parser.exit(0)


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


def rate_or_auto(text: str) -> float | str:
    """An argparse type: a learning rate > 0, or ``auto`` (chosen on validation)."""
    if text == "auto":
        return text
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"must be a rate > 0 or 'auto', got {text!r}")
    return rate


def parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not YAML (e.g. an unbalanced bracket): the option's type decides


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """Safe-load the YAML file ``path``; a missing file or a syntax error is a one-line
    :class:`CliError` naming the file (and the line)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CliError(f"{what} file '{path}' does not exist" + (
            "; it is a directory" if path.is_dir() else ""))
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or _one_line(str(exc))
        raise CliError(f"{what} file '{path}' is not valid YAML ({problem} at{where}); fix "
                       "the syntax") from None
    except UnicodeDecodeError:
        raise CliError(f"{what} file '{path}' is not a text (UTF-8) YAML file") from None


def check_keys(mapping: dict, known, where: str) -> None:
    """Refuse keys of ``mapping`` not in ``known``, naming the closest valid one."""
    from ..errors import closest

    for key in mapping:
        if key not in known:
            raise CliError(f"{where}: unknown key '{key}'{closest(key, known)}; valid keys: "
                           f"{', '.join(known)}")


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
            from ..errors import closest

            raise CliError(f"method '{method}' has no option '{key}'{closest(key, types)}; "
                           f"its options are: {', '.join(sorted(types)) or '(none)'}")
        out[key] = _coerce(types[key], value)
    try:
        spec.options(**out)
    except (TypeError, ValueError) as exc:  # the method's own range and choice checks
        raise CliError(f"method '{method}': {_one_line(str(exc))}") from None
    return out


def load_models(paths: list[str]):
    """Checkpoints as models and metadata; a CHGNet or SevenNet checkpoint (a model class
    not registered yet) enables its adapter and is loaded again
    (:func:`gffmerge.adapters.enable_for`)."""
    from ..checkpoint import CheckpointError, load_checkpoint

    models, metas = [], []
    for p in paths:
        try:
            model, meta = load_checkpoint(p)
        except CheckpointError:
            from ..adapters import enable_for

            if not enable_for(p):
                raise
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


DEFAULT_BATCH = 8


def batch_size(args: argparse.Namespace) -> int:
    """``--batch-size`` as given, else :data:`DEFAULT_BATCH`."""
    return DEFAULT_BATCH if args.batch_size is None else args.batch_size


def add_data_options(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--split", default=split, choices=["train", "val", "test", "all"],
                   help=f"which split of the data to use (default: {split})")
    p.add_argument("--batch-size", type=int, default=None,
                   help="frames per batch (default: 8; raised to about 1024 atoms per "
                        "batch where only statistics are summed, which changes only the "
                        "time: measure without --limit, merge with a statistics method)")
    p.add_argument("--max-frames", type=int, default=1250,
                   help="frames sampled per system (protocol: 1250, seed 42)")
    p.add_argument("--seed", type=int, default=42, help="sampling and split seed")
