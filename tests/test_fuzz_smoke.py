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


@pytest.mark.needs_ext
@pytest.mark.parametrize(("dx", "dy", "augment"), [(3, 0, False), (0, 0, True), (0, 3, False),
                                                   (0, 3, True)])
def test_empty_feature_calls_add_nothing_and_print_nothing(capfd, dx, dy, augment):
    """Found by the fuzzer: cross_ with a zero-width y passed ldc = 0 to dgemm (MKL printed
    "Parameter 13 was incorrect on entry to DGEMM"; reference BLAS stops the process), and
    gram_/cross_ of zero features handed memset a null pointer (UBSan)."""
    import gffmerge_ext

    x, y = torch.randn(5, dx), torch.randn(5, dy)
    acc = torch.full((dx + int(augment), dy), 2.0, dtype=torch.float64)
    ref = acc.clone()
    gffmerge_ext.cross_(acc, x, y, augment_x=augment, backend="ext")
    gffmerge_ext.cross_(ref, x, y, augment_x=augment, backend="torch")
    gram = torch.ones(dx + int(augment), dx + int(augment), dtype=torch.float64)
    gram_ref = gram.clone()
    gffmerge_ext.gram_(gram, x, augment=augment, backend="ext")
    gffmerge_ext.gram_(gram_ref, x, augment=augment, backend="torch")
    assert torch.equal(acc, ref)
    assert torch.allclose(gram, gram_ref, rtol=1e-14, atol=0)
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""
