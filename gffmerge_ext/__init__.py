"""Compiled streaming accumulators and batched SPD solves for gffmerge (``torch.ops.gffmerge.*``).

Only this package touches the compiled module ``gffmerge_ext._C``. One module per job:

* ``_loading``  imports ``_C`` once (its static initialisers define the ops) and says why not;
* ``wrappers``  the typed wrappers below and the backend choice (compiled op or reference);
* ``reference`` the pure-torch float64 backend every compiled kernel is tested against;
* ``checks``    the reference's argument checks (the Python copy of ``csrc/ops/checks.h``);
* ``fakes``     ``torch.library.register_fake`` for every op the ``gffmerge`` namespace defines.

The library calls the wrappers, which fall back to the reference (with one warning) when the
extension is not built.
"""

from . import fakes  # noqa: F401  (registers the fake kernels of the ops _C defined)
from ._loading import build_info, extension_available, load_error
from .wrappers import (
    available_backends,
    cholesky_solve_,
    cross_,
    csr_mm_,
    dense_csr_count_,
    dense_csr_fill_,
    gram_,
    parts_gram_,
    parts_gram_devices,
    row_gram_,
    row_gram_devices,
)

__all__ = [
    "available_backends",
    "build_info",
    "cholesky_solve_",
    "cross_",
    "csr_mm_",
    "dense_csr_count_",
    "dense_csr_fill_",
    "extension_available",
    "gram_",
    "load_error",
    "parts_gram_",
    "parts_gram_devices",
    "row_gram_",
    "row_gram_devices",
]
