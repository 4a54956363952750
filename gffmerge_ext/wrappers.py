"""Typed wrappers over the ``torch.ops.gffmerge`` ops and the choice of backend.

``gram_`` and ``cross_`` add into a float64 accumulator in place and return None. Rows of
``x`` may be any float dtype and any strides; they are gathered through an optional index and
cast to float64 inside the kernel, so no float64 copy of ``x`` is ever made by the compiled
path. ``parts_gram_`` adds the Gram of rows described as a dense part and gathered node rows
without forming the gathered rows (CPU only); ``row_gram_`` adds ``Z Zᵀ`` of sparse CSR rows
(CPU only); ``csr_mm_`` adds ``Z M`` of sparse CSR rows and a dense matrix (CPU only);
``dense_csr_count_`` and ``dense_csr_fill_`` write the CSR arrays of a dense matrix (CPU
only).
``cholesky_solve_`` solves a batch of same-size
SPD systems in place, retrying the ones whose factorisation fails with growing diagonal
jitter.

Backends: ``"ext"`` is the compiled op (``torch.ops.gffmerge.*``, for the devices the build
has kernels for), ``"torch"`` the pure-torch reference (:mod:`.reference`), and ``"auto"`` the
compiled op where there is one, else the reference with one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from ._loading import BUILD_HINT, extension_available, kernel_devices, load_error
from .reference import (
    cholesky_solve_reference_,
    cross_reference_,
    csr_mm_reference_,
    dense_csr_count_reference_,
    dense_csr_fill_reference_,
    gram_reference_,
    parts_gram_reference_,
    row_gram_reference_,
)

__all__ = [
    "available_backends",
    "cholesky_solve_",
    "cross_",
    "csr_mm_",
    "dense_csr_count_",
    "dense_csr_fill_",
    "gram_",
    "parts_gram_",
    "parts_gram_devices",
    "row_gram_",
    "row_gram_devices",
]

_BACKENDS = ("auto", "ext", "torch")
_PARTS_GRAM_DEVICES = ("cpu", "meta")  # parts_gram_ has no CUDA kernel
_ROW_GRAM_DEVICES = ("cpu", "meta")  # row_gram_, csr_mm_, dense_csr_*_: no CUDA kernel
_warned_fallback = False


def available_backends(device: torch.device | str | None = None) -> tuple[str, ...]:
    """Backends usable for tensors on ``device`` (any device when None): ``"ext"`` when the
    compiled extension is loaded and has a kernel for it, and always ``"torch"``."""
    ok = extension_available()
    if ok and device is not None:
        ok = torch.device(device).type in kernel_devices()
    return ("ext", "torch") if ok else ("torch",)


def parts_gram_devices() -> tuple[str, ...]:
    """Device types with a compiled ``parts_gram_`` kernel (none without the extension)."""
    if not extension_available():
        return ()
    return tuple(d for d in kernel_devices() if d in _PARTS_GRAM_DEVICES)


def row_gram_devices() -> tuple[str, ...]:
    """Device types with compiled ``row_gram_``, ``csr_mm_``, ``dense_csr_count_`` and
    ``dense_csr_fill_`` kernels (none without the extension)."""
    if not extension_available():
        return ()
    return tuple(d for d in kernel_devices() if d in _ROW_GRAM_DEVICES)


def _use_extension(backend: str, device: torch.device, op: str,
                   devices: tuple[str, ...] | None = None) -> bool:
    global _warned_fallback
    if backend not in _BACKENDS:
        raise ValueError(f"{op}: backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    devices = kernel_devices() if devices is None else devices
    if extension_available() and device.type in devices:
        return True
    if extension_available():
        why = f"this build of gffmerge_ext has no {device.type} kernel for {op} (devices: "
        why += f"{', '.join(devices)})"
    else:
        why = f"the compiled extension gffmerge_ext._C did not load ({load_error()})"
    if backend == "ext":
        raise RuntimeError(f"{op}: backend='ext' but {why}; {BUILD_HINT}")
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"gffmerge_ext: {why}; falling back to the pure-torch reference, which makes float64 "
            f"copies of the activations and is slower. To fix, {BUILD_HINT}.",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def gram_(
    acc: Tensor,
    x: Tensor,
    index: Tensor | None = None,
    weight: Tensor | None = None,
    augment: bool = False,
    *,
    backend: str = "auto",
) -> None:
    r"""Accumulate a weighted Gram matrix in place: ``acc += sum_r w_r x~_r x~_r^T``.

    Args:
        acc: float64, contiguous, ``[d, d]`` (``[d + 1, d + 1]`` when ``augment``). Only
            added to; the added part is exactly symmetric.
        x: ``[R, d]`` float32 / float64 / bfloat16 / float16, any strides (transposed,
            sliced, expanded).
        index: optional int64 or int32 ``[R']``, rows of ``x`` to use (repeats allowed);
            without it the rows are ``0 .. R-1``.
        weight: optional float32 / float64 ``[R']``, one weight per gathered row (may be
            negative); without it all weights are 1.
        augment: use ``x~ = [x, 1]``, so that ``acc[d, d] += sum w`` and
            ``acc[:d, d] += sum w x`` (sums for a bias / the mean).
        backend: ``"auto"`` (compiled op when available for the device, else the reference
            with one warning), ``"ext"`` (compiled op or an error), ``"torch"`` (reference).

    The compiled op forms the sums by the route ``GFFMERGE_GRAM_ROUTE`` names (for ``cross_``
    too): ``kernel`` (tiled kernels, no float64 copy of ``x``; the CPU default), ``mm`` (row
    chunks of ~256 MB cast to float64, one matrix product each, cuBLAS on a GPU; the CUDA
    default) or ``mm:ROWS`` (ROWS rows per chunk). Any other value is an error.
    """
    if _use_extension(backend, acc.device, "gram_"):
        torch.ops.gffmerge.gram_(acc, x, index, weight, augment)
    else:
        gram_reference_(acc, x, index, weight, augment)


def cross_(
    acc: Tensor,
    x: Tensor,
    y: Tensor,
    index_x: Tensor | None = None,
    index_y: Tensor | None = None,
    weight: Tensor | None = None,
    augment_x: bool = False,
    *,
    backend: str = "auto",
) -> None:
    r"""Accumulate a weighted cross-moment in place: ``acc += sum_r w_r x~_{ix_r} y_{iy_r}^T``.

    Args:
        acc: float64, contiguous, ``[d_x, d_y]`` (``[d_x + 1, d_y]`` when ``augment_x``).
        x: ``[R_x, d_x]``, y: ``[R_y, d_y]``; float32 / float64 / bfloat16 / float16, any
            strides, dtypes may differ.
        index_x, index_y: optional int64 / int32 row indices. The pair count is
            ``len(index_x)`` (or ``R_x``) and must equal ``len(index_y)`` (or ``R_y``).
        weight: optional float32 / float64, one weight per pair.
        augment_x: use ``x~ = [x, 1]``, so that the last row of ``acc`` gets ``sum w y``.
        backend: as for :func:`gram_`.
    """
    if _use_extension(backend, acc.device, "cross_"):
        torch.ops.gffmerge.cross_(acc, x, y, index_x, index_y, weight, augment_x)
    else:
        cross_reference_(acc, x, y, index_x, index_y, weight, augment_x)


def parts_gram_(
    acc: Tensor,
    dense: Tensor | None,
    nodes: Sequence[Tensor],
    indices: Sequence[Tensor],
    gates: Sequence[Tensor | None],
    dense_block: bool = True,
    *,
    backend: str = "auto",
) -> None:
    r"""Accumulate the augmented Gram of structured rows in place:
    ``acc += sum_r x~_r x~_r^T`` with ``x_r = [D_r, g_1r H_1[i_1r], ..., g_kr H_k[i_kr]]``
    and ``x~ = [x, 1]``, without forming the gathered rows.

    One pass over the rows scatters float64 node-level sums (``P_q = sum_{r->i_q} g_q [D, 1]``,
    ``c_q = sum_{r->i_q} g_q^2``, and ``M_pq = sum_{r->i_p} g_p g_q H_q[i_q]`` per pair of
    parts); the blocks are then node-level products (``P_q^T H_q``, ``H_q^T diag(c_q) H_q``,
    ``H_p^T M_pq``) and the Gram of ``[D, 1]``. Every sum is float64.

    Args:
        acc: float64, contiguous, ``[W + 1, W + 1]`` with ``W = d + sum_q d_q``; columns in
            the order ``[D | part 1 | ... | part k | 1]``. Only added to; the added part is
            exactly symmetric.
        dense: optional ``[R, d]`` rows (any float dtype and strides); None: no dense part.
        nodes: ``k`` node matrices ``H_q [N_q, d_q]`` (any float dtype and strides).
        indices: ``k`` int64 / int32 ``[R]`` row indices into ``nodes[q]`` (``R`` is
            ``dense.shape[0]``, or ``len(indices[0])`` without ``dense``).
        gates: ``k`` optional float32 / float64 ``[R]`` per-row factors (None: 1).
        dense_block: False leaves the entries of ``acc`` whose row and column both belong to
            ``[D, 1]`` (the dense columns and the ones column) untouched, for a caller that
            has the Gram of ``[D, 1]`` already.
        backend: as for :func:`gram_`; the compiled op exists for the CPU only
            (:func:`parts_gram_devices`).
    """
    nodes, indices, gates = list(nodes), list(indices), list(gates)
    if _use_extension(backend, acc.device, "parts_gram_", parts_gram_devices()):
        torch.ops.gffmerge.parts_gram_(acc, dense, nodes, indices, gates, dense_block)
    else:
        parts_gram_reference_(acc, dense, nodes, indices, gates, dense_block)


def row_gram_(
    acc: Tensor,
    crow: Tensor,
    col: Tensor,
    values: Tensor,
    cols: int,
    *,
    backend: str = "auto",
) -> None:
    r"""Accumulate the Gram of sparse rows in place: ``acc += Z Zᵀ``.

    ``Z [R, cols]`` is given by its CSR arrays (``torch.sparse_csr`` tensors'
    ``crow_indices()``, ``col_indices()``, ``values()``); a row's entries may come in any
    order and repeat (repeats are summed, as in a COO tensor before ``coalesce``). The kernel
    transposes ``Z`` once and forms each row of the product from the columns it touches,
    over the rows up to the diagonal: ``sum_c nnz(column c)² / 2`` multiply-adds, float64.

    Args:
        acc: float64, contiguous, ``[R, R]``. Only added to; the added part is exactly
            symmetric.
        crow: int64 or int32 ``[R + 1]``: ``crow[0] = 0``, non-decreasing,
            ``crow[R] = len(col)``.
        col: int64 or int32 ``[nnz]``, every value in ``[0, cols)``.
        values: float32 or float64 ``[nnz]``.
        cols: the number of columns of ``Z``.
        backend: as for :func:`gram_`; the compiled op exists for the CPU only
            (:func:`row_gram_devices`): ``backend="ext"`` on another device raises.
    """
    if _use_extension(backend, acc.device, "row_gram_", row_gram_devices()):
        torch.ops.gffmerge.row_gram_(acc, crow, col, values, int(cols))
    else:
        row_gram_reference_(acc, crow, col, values, int(cols))


def csr_mm_(
    out: Tensor,
    crow: Tensor,
    col: Tensor,
    values: Tensor,
    m: Tensor,
    *,
    backend: str = "auto",
) -> None:
    r"""Accumulate sparse rows times a dense matrix in place: ``out += Z M``.

    ``Z [R, cols]`` is given by its CSR arrays (a row's entries in any order, repeats summed);
    ``M [cols, k]``. The kernel walks ``M`` in column strips that stay in the L2 cache and
    holds a strip of each output row in registers (float64 fused multiply-adds where the
    CPU has AVX-512 or AVX2 + FMA, the same sums either way): 1.3-2× torch's CSR product
    for a GNN's first layer on bag-of-words features
    (``benchmarks/results/gnn_choice_profile.md``).

    Args:
        out: float64, contiguous, ``[R, k]``. Only added to.
        crow: int64 or int32 ``[R + 1]``: ``crow[0] = 0``, non-decreasing,
            ``crow[R] = len(col)``.
        col: int64 or int32 ``[nnz]``, every value in ``[0, cols)``.
        values: float64 ``[nnz]``.
        m: float64 ``[cols, k]`` with contiguous rows (any row stride).
        backend: as for :func:`gram_`; the compiled op exists for the CPU only
            (:func:`row_gram_devices`): ``backend="ext"`` on another device raises.
    """
    if _use_extension(backend, out.device, "csr_mm_", row_gram_devices()):
        torch.ops.gffmerge.csr_mm_(out, crow, col, values, m)
    else:
        csr_mm_reference_(out, crow, col, values, m)


def dense_csr_count_(crow: Tensor, x: Tensor, *, backend: str = "auto") -> None:
    r"""Write the CSR row pointers of a dense matrix: ``crow[0] = 0``, ``crow[i + 1] =
    crow[i] +`` the number of entries ``x[i, j] != 0`` (NaN counts, ``-0.0`` does not: the
    rule of ``Tensor.to_sparse``). With :func:`dense_csr_fill_` it converts ``x`` to CSR
    reading it once per call; ``crow[-1]`` (nnz) sizes the fill's outputs, and lets the
    caller keep ``x`` dense when it is not sparse enough.

    Args:
        crow: int64, contiguous, ``[R + 1]``. Overwritten.
        x: float32, float64, bfloat16 or float16 ``[R, C]``, any strides.
        backend: as for :func:`gram_`; the compiled op exists for the CPU only
            (:func:`row_gram_devices`): ``backend="ext"`` on another device raises.
    """
    if _use_extension(backend, x.device, "dense_csr_count_", row_gram_devices()):
        torch.ops.gffmerge.dense_csr_count_(crow, x)
    else:
        dense_csr_count_reference_(crow, x)


def dense_csr_fill_(col: Tensor, values: Tensor, crow: Tensor, x: Tensor, *,
                    backend: str = "auto") -> None:
    r"""Write the CSR columns and values of a dense matrix: row ``i``'s entries ``x[i, j]
    != 0`` in increasing ``j`` at ``crow[i] .. crow[i + 1]``, their values in float64
    (exact). ``crow`` must be :func:`dense_csr_count_`'s for the same ``x``; a row whose
    count differs raises (nothing is written outside its range).

    Args:
        col: int64, contiguous, ``[nnz]`` with ``nnz = crow[-1]``. Overwritten.
        values: float64, contiguous, ``[nnz]``. Overwritten.
        crow: int64, contiguous, ``[R + 1]``.
        x: float32, float64, bfloat16 or float16 ``[R, C]``, any strides.
        backend: as for :func:`dense_csr_count_`.
    """
    if _use_extension(backend, x.device, "dense_csr_fill_", row_gram_devices()):
        torch.ops.gffmerge.dense_csr_fill_(col, values, crow, x)
    else:
        dense_csr_fill_reference_(col, values, crow, x)


def cholesky_solve_(
    A: Tensor,
    B: Tensor,
    info: Tensor,
    jitter: Tensor,
    jitter_steps: Sequence[float] = (),
    *,
    backend: str = "auto",
) -> None:
    r"""Solve ``A[l] X[l] = B[l]`` for a batch of symmetric positive-definite systems, in place.

    Each system is Cholesky-factorised (reading the lower triangle of ``A[l]``). While that
    fails and steps are left, ``A0[l] + (step * s_l) I`` is factorised instead, where ``A0``
    is the original matrix and ``s_l`` the mean ``|diagonal|`` of ``A0[l]`` (1 when that is
    not > 0). On the GPU the retries run on the device: nothing synchronises with the host.

    Args:
        A: float64 ``[L, n, n]``, contiguous. Overwritten by the factor ``L_l``
            (``A + jitter I = L L^T``, zeros above the diagonal); unspecified where ``info > 0``.
        B: float64 ``[L, n, k]``, contiguous. Overwritten by the solutions; left as given
            where ``info > 0``.
        info: int32 ``[L]``, contiguous, output: 0 when the system was solved, else the order
            of the leading minor that was not positive definite in the last attempt.
        jitter: float64 ``[L]``, contiguous, output: the absolute diagonal jitter of the last
            attempt (so of the successful one; 0 when no jitter was needed).
        jitter_steps: relative jitter steps tried in order (at most 32, each finite and > 0);
            empty: plain Cholesky.
        backend: as for :func:`gram_`.
    """
    steps = [float(v) for v in jitter_steps]
    if _use_extension(backend, A.device, "cholesky_solve_"):
        torch.ops.gffmerge.cholesky_solve_(A, B, info, jitter, steps)
    else:
        cholesky_solve_reference_(A, B, info, jitter, steps)
