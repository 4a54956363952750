"""The CUDA kernels' phases run on the CPU (tools/emulate_cuda_kernels.cpp), on every machine.

The kernels in csrc/kernels/*.cu are thin loops over host/device phase functions; the emulator
calls the same functions thread by thread between emulated barriers, with the same launch
geometry, and replaces cuSOLVER/cuBLAS by textbook implementations of their contracts. So the
tiling, indexing, split reduction, jitter retries and the row-/column-major layout of the
solves are tested here without a GPU; tests/test_ops_cuda.py covers the real thing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tools" / "emulate_cuda_kernels.cpp"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@pytest.mark.skipif(compiler() is None, reason="no C++ compiler (c++, g++ or $CXX)")
def test_cuda_kernel_phases_emulated_on_cpu(tmp_path):
    exe = tmp_path / "emulate"
    build = subprocess.run(
        [compiler(), "-std=c++20", "-O2", "-Wall", "-Wextra", "-Werror",
         f"-I{ROOT / 'csrc' / 'kernels'}", str(SOURCE), "-o", str(exe)],
        capture_output=True, text=True, check=False,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1].endswith(" 0 failed"), run.stdout[-2000:]
