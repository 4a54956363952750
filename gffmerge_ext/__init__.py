"""Compiled streaming accumulators and batched SPD solves for gffmerge (``torch.ops.gffmerge.*``).

Only this package touches the compiled module ``gffmerge_ext._C``; the library calls the typed
wrappers below, which fall back to a pure-torch reference (with one warning) when the
extension is not built.
"""

from ._loading import build_info, extension_available, load_error
from .ops import available_backends, cholesky_solve_, cross_, gram_

__all__ = [
    "available_backends",
    "build_info",
    "cholesky_solve_",
    "cross_",
    "extension_available",
    "gram_",
    "load_error",
]
