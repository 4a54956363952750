"""The ``gffmerge`` command line: each subcommand parses arguments and calls the Python API.

:func:`main` is the console script (``gffmerge``) and ``python -m gffmerge``. The
subcommands live in one module per group (:mod:`.measuring`; :mod:`.merging`: methods,
solve, merge, demo; :mod:`.training`: eval, train), the parser in :mod:`.parser`, and
what they share (:class:`CliError`, output, option parsing, loading) in :mod:`.common`.
"""

from __future__ import annotations

import os
import sys

from .common import EXIT_BAD_INPUT, CliError
from .parser import build_parser

__all__ = ["EXIT_BAD_INPUT", "CliError", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..checkpoint import CheckpointError
    from ..errors import GffmergeError

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
