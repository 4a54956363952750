"""The ``gffmerge`` command line: each subcommand parses arguments and calls the Python API.

:func:`main` is the console script (``gffmerge``) and ``python -m gffmerge``. The
subcommands live in one module per group (:mod:`.measuring`; :mod:`.merging`: methods,
solve, merge, demo; :mod:`.training`: eval, train), the parser in :mod:`.parser`, and
what they share (:class:`CliError`, output, option parsing, loading) in :mod:`.common`.
"""

from __future__ import annotations

import sys

from .common import EXIT_BAD_INPUT, EXIT_INTERNAL, CliError, Parser, run_command
from .parser import build_parser

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERNAL", "CheckpointError", "CliError", "GffmergeError",
           "build_parser", "main"]


def __getattr__(name: str):
    """The library's user-error types (exit 2 under the policy), imported on first use so that
    ``gffmerge --help`` does not load torch."""
    if name == "CheckpointError":
        from ..checkpoint import CheckpointError

        return CheckpointError
    if name == "GffmergeError":
        from ..errors import GffmergeError

        return GffmergeError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand under the error policy of
    :func:`.common.run_command`; returns the exit code (0, 1 internal error, 2 user error,
    130 interrupted)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    Parser.json_errors = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    return run_command(args, args.func, args.command)
