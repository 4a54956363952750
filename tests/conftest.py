"""Markers and fixtures shared by the test files.

Markers (applied at collection, so every file and every parametrised case gets them alike):

* ``@pytest.mark.needs_ext``: needs the compiled extension. Without it the test *fails* (the
  suite is meant to run against a built extension), unless ``GFFMERGE_ALLOW_NO_EXT=1`` is set,
  which skips it with the reason the extension did not load.
* ``@pytest.mark.cuda``: needs a CUDA device; skipped, with that reason, where torch sees
  none. ``pytest -m cuda`` selects exactly the GPU tests (what ``make gpu-check`` runs).

Fixture ``device``: every test that takes it runs once per device, ``"cpu"`` and
``"cuda"`` (the latter marked ``cuda``).
"""

from __future__ import annotations

import os

import pytest
import torch

import gffmerge_ext

ALLOW_NO_EXT = os.environ.get("GFFMERGE_ALLOW_NO_EXT") == "1"
CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "needs_ext: needs the compiled gffmerge_ext (GFFMERGE_ALLOW_NO_EXT=1 skips it when the "
        "extension is not built)",
    )


def pytest_collection_modifyitems(config, items):
    no_ext = None
    if ALLOW_NO_EXT and not gffmerge_ext.extension_available():
        no_ext = pytest.mark.skip(
            reason=f"extension not built ({gffmerge_ext.load_error()}) and "
            "GFFMERGE_ALLOW_NO_EXT=1"
        )
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if no_ext is not None and item.get_closest_marker("needs_ext") is not None:
            item.add_marker(no_ext)
        if not CUDA and item.get_closest_marker("cuda") is not None:
            item.add_marker(no_cuda)


# Session scope: hypothesis refuses function-scoped fixtures in @given tests, and a device
# name holds no state to reset between tests.
@pytest.fixture(scope="session", params=DEVICES)
def device(request) -> str:
    """Each device type the op tests run on ("cuda" is marked cuda, so skipped without one)."""
    return request.param


@pytest.fixture(scope="module")
def models_registry_restored():
    """Leave the model registry as the module found it (enabling an adapter registers its
    model class for checkpoints; other modules enumerate the registered models)."""
    from gffmerge.models import registry

    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    graphs of 9-64 atoms gain nothing from threads, and on a busy machine the thread
    pool's contention makes each training step several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def layer_sum_widths(monkeypatch) -> list[int]:
    """The input width of every layer sum the collection forms from now on, in order (how
    often a layer's Gram was formed, e.g. once for sources that share its input)."""
    import gffmerge.collect.hooks as hooks

    real, widths = hooks.layer_sums, []
    monkeypatch.setattr(hooks, "layer_sums",
                        lambda inp, *a, **k: widths.append(inp.width) or real(inp, *a, **k))
    return widths
