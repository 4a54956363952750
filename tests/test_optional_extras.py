"""``import gffmerge`` and the CLI need none of the optional extras (``gffmerge[pyg]``,
``[chgnet]``, ``[sevenn]``, ``[all]``) and do not import them: the PyG adapter is loaded when
``torch_geometric`` is, the third-party adapters when used. Each check runs in a fresh
interpreter in which the extras cannot be imported (``sys.modules[name] = None``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

EXTRAS = ("torch_geometric", "chgnet", "sevenn", "e3nn", "matplotlib", "ase", "scipy")


def _run(body: str, blocked: tuple[str, ...] = EXTRAS) -> subprocess.CompletedProcess:
    code = ("import sys\n"
            + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
            + textwrap.dedent(body))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_import_and_merge_without_the_extras():
    done = _run("""
        import torch
        import gffmerge
        from gffmerge.testing import TinyMLP, fine_tunes
        models = fine_tunes(TinyMLP(), 2, seed=1)
        data = [[torch.randn(16, 6)] for _ in models]
        merged = gffmerge.merge(models, data, method="gffmerge", progress=False).model
        assert all(torch.isfinite(p).all() for p in merged.parameters())
        print("merged")
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "merged" in done.stdout


def test_cli_without_the_extras():
    done = _run("""
        from gffmerge.cli import main
        raise SystemExit(main(["methods", "--json"]))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"progressive"' in done.stdout


def test_import_loads_no_extra():
    done = _run("""
        import gffmerge, gffmerge.cli, gffmerge.methods
        gffmerge.methods.available()
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in EXTRAS
                       or m.endswith(".pyg") or ".adapters." in m)
        print(heavy)
    """.replace("EXTRAS", repr(EXTRAS)), blocked=())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_pyg_adapter_loads_with_torch_geometric():
    pytest.importorskip("torch_geometric")
    done = _run("""
        import torch
        from torch_geometric.nn import GCNConv
        from gffmerge.models.groups import linear_units

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = GCNConv(4, 3)

        units = linear_units(Net())
        print(sorted(units))
        assert "gffmerge.models.pyg" in sys.modules
    """, blocked=())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "conv" in done.stdout
