"""Loads the compiled module ``gffmerge_ext._C`` once; everything else asks this module.

Importing ``_C`` runs its static initialisers, which register the ``torch.ops.gffmerge.*``
ops. A failed import is recorded (not raised) so that the pure-torch reference still works.
"""

from __future__ import annotations

import torch

_C = None
_load_error: str | None = None

try:
    from . import _C as _compiled
except ImportError as exc:  # not built, or built against an incompatible torch
    _load_error = f"{type(exc).__name__}: {exc}"
else:
    _built = _compiled.build_info()["torch_version"]
    # The C++ ABI of libtorch changes between minor versions; a stale build may load but
    # corrupt memory, so it is treated as missing.
    if _built.split("+")[0].split(".")[:2] != torch.__version__.split("+")[0].split(".")[:2]:
        _load_error = (
            f"gffmerge_ext._C was built against torch {_built} but torch {torch.__version__} "
            "is installed; rebuild it"
        )
    else:
        _C = _compiled

BUILD_HINT = (
    "build it with `make install` (or `pip install --no-build-isolation -e .` in an "
    "environment that already has torch)"
)


def extension_available() -> bool:
    """True when the compiled ops are loaded and usable."""
    return _C is not None


def load_error() -> str | None:
    """Why the compiled extension is unavailable, or None when it loaded."""
    return _load_error


def build_info() -> dict:
    """How the extension was built.

    Keys: ``compiler`` (id and version), ``cxx_standard`` (``__cplusplus``), ``openmp``
    (bool), ``openmp_version`` (``_OPENMP``, e.g. 201511, or None), ``cuda`` (bool),
    ``cuda_archs`` (list such as ``["8.0", "9.0+PTX"]``), ``torch_version`` (built against),
    ``build_type`` and ``blas`` (which dgemm the CPU kernels call).
    """
    if _C is None:
        raise RuntimeError(f"gffmerge_ext._C is not available ({_load_error}); {BUILD_HINT}")
    return dict(_C.build_info())


_DEVICES: tuple[str, ...] = ()
if _C is not None:
    _DEVICES = ("cpu", "meta", "cuda") if _C.build_info()["cuda"] else ("cpu", "meta")


def kernel_devices() -> tuple[str, ...]:
    """Device types with a compiled kernel ("meta" stands for the fake kernels used in tracing)."""
    return _DEVICES
