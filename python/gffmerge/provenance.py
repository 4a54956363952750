"""Where a result came from: the commit, the CPU and the load, recorded beside every number."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(*, short: bool = False) -> str:
    """The checkout's commit (``+dirty`` with uncommitted tracked changes), else ``unknown``."""
    cmd = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    """CPU model, core count, system, torch version and threads in one line."""
    import torch

    return (f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def versions() -> dict:
    """What is installed: gffmerge, its commit, torch, and how the extension was built
    (``extension`` holds the reason when it is not loadable)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    import gffmerge_ext

    try:
        ext = gffmerge_ext.build_info()
    except RuntimeError as exc:
        ext = {"error": str(exc)}
    try:
        own = version("gffmerge")
    except PackageNotFoundError:
        own = "unknown (not installed)"
    # a commit only for a source checkout: an installed copy's folder may sit in another repo
    commit = git_commit(short=True) if (ROOT / "csrc").is_dir() else "none (not a checkout)"
    return {"gffmerge": own, "commit": commit,
            "torch": str(torch.__version__), "cuda_available": torch.cuda.is_available(),
            "extension": ext}


def versions_text(v: dict) -> str:
    """:func:`versions` as the two lines ``gffmerge --version`` prints."""
    ext = v["extension"]
    if "error" in ext:
        built = f"extension not loadable: {ext['error']}"
    else:
        cuda = ("CUDA " + " ".join(ext.get("cuda_archs") or []) if ext.get("cuda")
                else "no CUDA")
        built = (f"extension built with {ext.get('compiler')} against torch "
                 f"{ext.get('torch_version')}, {'OpenMP' if ext.get('openmp') else 'no OpenMP'}"
                 f", {cuda}, block products: {ext.get('block_products', 'unknown')}")
    return (f"gffmerge {v['gffmerge']} (commit {v['commit']}), torch {v['torch']}"
            f"{' (a CUDA device is visible)' if v['cuda_available'] else ''}\n{built}")


def load_average() -> str:
    """The 1/5/15-minute load average, or ``unknown`` where the system has none."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
