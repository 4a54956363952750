"""What every benchmark records beside its numbers: the CPU and the commit it ran on."""

from __future__ import annotations

from pathlib import Path

from gffmerge import provenance
from gffmerge.provenance import cpu_name  # noqa: F401  (re-exported for the scripts)

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """The short commit of the repository, ``+dirty`` when tracked files changed."""
    return provenance.git_commit(short=True)
