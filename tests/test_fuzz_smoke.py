"""benchmarks/fuzz_ops.py runs: a few random cases of every op agree with the reference."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

FUZZ = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_ops.py"


@pytest.mark.needs_ext
def test_fuzz_ops_smoke(capsys, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("fuzz_ops", FUZZ)
    fuzz = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fuzz_ops", fuzz)  # dataclasses look their module up
    monkeypatch.syspath_prepend(str(FUZZ.parent))
    spec.loader.exec_module(fuzz)
    threads, blas = torch.get_num_threads(), os.environ.get("GFFMERGE_BLAS")
    out = tmp_path / "fuzz.md"
    assert fuzz.main(["--cases", "60", "--seed", "5", "-q", "--out", str(out)]) == 0
    text = out.read_text()
    for op in ("gram_", "cross_", "cholesky_solve_"):
        assert f"| `{op}` |" in text
    assert "**Failures: 0** (none)." in text and "60 cases (seed 5" in text
    # the run leaves the process as it found it
    assert torch.get_num_threads() == threads and os.environ.get("GFFMERGE_BLAS") == blas
    capsys.readouterr()
