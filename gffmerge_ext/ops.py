"""Typed wrappers over the ``torch.ops.gffmerge`` ops, their fake kernels, and the pure-torch
float64 references that every backend is tested against.

``gram_`` and ``cross_`` add into a float64 accumulator in place and return None. Rows of
``x`` may be any float dtype and any strides; they are gathered through an optional index and
cast to float64 inside the kernel, so no float64 copy of ``x`` is ever made by the compiled
path. ``cholesky_solve_`` solves a batch of same-size SPD systems in place, retrying the ones
whose factorisation fails with growing diagonal jitter.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from ._loading import BUILD_HINT, extension_available, kernel_devices, load_error

__all__ = ["gram_", "cross_", "cholesky_solve_", "available_backends"]

_ROW_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_BACKENDS = ("auto", "ext", "torch")
MAX_JITTER_STEPS = 32
_warned_fallback = False


def available_backends(device: torch.device | str | None = None) -> tuple[str, ...]:
    """Backends usable for tensors on ``device`` (any device when None): ``"ext"`` when the
    compiled extension is loaded and has a kernel for it, and always ``"torch"``."""
    ok = extension_available()
    if ok and device is not None:
        ok = torch.device(device).type in kernel_devices()
    return ("ext", "torch") if ok else ("torch",)


def _use_extension(backend: str, device: torch.device, op: str) -> bool:
    global _warned_fallback
    if backend not in _BACKENDS:
        raise ValueError(f"{op}: backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if extension_available() and device.type in kernel_devices():
        return True
    if extension_available():
        why = f"this build of gffmerge_ext has no {device.type} kernel (devices: "
        why += f"{', '.join(kernel_devices())})"
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


# ---- pure-torch reference ----------------------------------------------------------------
# Same contract and the same error messages as the compiled kernels (different exception
# types: TypeError for dtypes, ValueError for shapes, IndexError for index values).


def _check_same_device(op: str, acc: Tensor, t: Tensor, name: str) -> None:
    if t.device != acc.device:
        raise ValueError(
            f"{op}: {name} is on {t.device} but acc is on {acc.device}; all tensors must be on "
            "the same device"
        )


def _check_rows(op: str, acc: Tensor, x: Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(
            f"{op}: {name} must be 2-D [rows, features], got a {x.dim()}-D tensor of shape "
            f"{list(x.shape)}"
        )
    if x.dtype not in _ROW_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float32, float64, bfloat16 or float16, got {x.dtype}"
        )
    _check_same_device(op, acc, x, name)


def _check_index(op: str, acc: Tensor, index: Tensor | None, name: str, x: Tensor) -> int:
    if index is None:
        return x.shape[0]
    if index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: {name} must be int64 or int32, got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"{op}: {name} must be 1-D, got shape {list(index.shape)}")
    _check_same_device(op, acc, index, name)
    return index.shape[0]


def _check_range(op: str, index: Tensor | None, name: str, rows: int, of: str) -> None:
    if index is None or index.numel() == 0:
        return
    bad = ((index < 0) | (index >= rows)).nonzero()
    if bad.numel():
        p = int(bad[0, 0])
        raise IndexError(
            f"{op}: {name}[{p}] = {int(index[p])} is out of range for {of} with {rows} rows "
            f"(valid: 0 <= {name} < {rows})"
        )


def _check_weight(op: str, acc: Tensor, weight: Tensor | None, count: int) -> None:
    if weight is None:
        return
    if weight.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: weight must be float32 or float64, got {weight.dtype}")
    if weight.dim() != 1:
        raise ValueError(f"{op}: weight must be 1-D, got shape {list(weight.shape)}")
    if weight.shape[0] != count:
        raise ValueError(
            f"{op}: weight must have one entry per gathered row: expected {count}, got "
            f"{weight.shape[0]}"
        )
    _check_same_device(op, acc, weight, "weight")


def _check_acc(op: str, acc: Tensor, rows: int, cols: int, why: str) -> None:
    if acc.dtype != torch.float64:
        raise TypeError(f"{op}: acc must be float64, got {acc.dtype}")
    if tuple(acc.shape) != (rows, cols):
        raise ValueError(
            f"{op}: acc must have shape [{rows}, {cols}] ({why}), got {list(acc.shape)}"
        )
    if not acc.is_contiguous():
        raise ValueError(f"{op}: acc must be contiguous, got strides {list(acc.stride())}")


def _rows64(x: Tensor, index: Tensor | None, augment: bool) -> Tensor:
    rows = x if index is None else x.index_select(0, index.long())
    rows = rows.to(torch.float64)
    if augment:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


@torch.no_grad()
def gram_reference_(
    acc: Tensor,
    x: Tensor,
    index: Tensor | None = None,
    weight: Tensor | None = None,
    augment: bool = False,
) -> None:
    """Reference for :func:`gram_`: gather, cast to float64, ``X.T @ (w X)``, symmetrise."""
    op = "gffmerge::gram_"
    _check_rows(op, acc, x, "x")
    d = x.shape[1] + int(augment)
    _check_acc(op, acc, d, d, f"x has {x.shape[1]} features, augment={augment}")
    count = _check_index(op, acc, index, "index", x)
    _check_weight(op, acc, weight, count)
    _check_range(op, index, "index", x.shape[0], "x")
    X = _rows64(x, index, augment)
    WX = X if weight is None else X * weight.to(torch.float64)[:, None]
    g = X.T @ WX
    acc.add_((g + g.T) * 0.5)


@torch.no_grad()
def cross_reference_(
    acc: Tensor,
    x: Tensor,
    y: Tensor,
    index_x: Tensor | None = None,
    index_y: Tensor | None = None,
    weight: Tensor | None = None,
    augment_x: bool = False,
) -> None:
    """Reference for :func:`cross_`: gather both sides, cast to float64, ``(w X).T @ Y``."""
    op = "gffmerge::cross_"
    _check_rows(op, acc, x, "x")
    _check_rows(op, acc, y, "y")
    why = f"x has {x.shape[1]} features, augment_x={augment_x}, y has {y.shape[1]} features"
    _check_acc(op, acc, x.shape[1] + int(augment_x), y.shape[1], why)
    nx = _check_index(op, acc, index_x, "index_x", x)
    ny = _check_index(op, acc, index_y, "index_y", y)
    if nx != ny:
        sx = "len(index_x)" if index_x is not None else "x.shape[0]"
        sy = "len(index_y)" if index_y is not None else "y.shape[0]"
        raise ValueError(f"{op}: x and y must pair up row for row, but {sx} = {nx} and {sy} = {ny}")
    _check_weight(op, acc, weight, nx)
    _check_range(op, index_x, "index_x", x.shape[0], "x")
    _check_range(op, index_y, "index_y", y.shape[0], "y")
    X = _rows64(x, index_x, augment_x)
    if weight is not None:
        X = X * weight.to(torch.float64)[:, None]
    acc.add_(X.T @ _rows64(y, index_y, False))


def _check_cholesky(A: Tensor, B: Tensor, info: Tensor, jitter: Tensor, steps) -> None:
    op = "gffmerge::cholesky_solve_"
    if A.dtype != torch.float64:
        raise TypeError(f"{op}: A must be float64, got {A.dtype}")
    if A.dim() != 3 or A.shape[1] != A.shape[2]:
        raise ValueError(
            f"{op}: A must be [L, n, n] (a batch of square matrices), got shape {list(A.shape)}"
        )
    L, n = A.shape[0], A.shape[1]
    if not A.is_contiguous():
        raise ValueError(f"{op}: A must be contiguous, got strides {list(A.stride())}")
    if B.dtype != torch.float64:
        raise TypeError(f"{op}: B must be float64, got {B.dtype}")
    if B.dim() != 3 or B.shape[0] != L or B.shape[1] != n:
        raise ValueError(
            f"{op}: B must be [{L}, {n}, k] (L and n from A), got shape {list(B.shape)}"
        )
    if not B.is_contiguous():
        raise ValueError(f"{op}: B must be contiguous, got strides {list(B.stride())}")
    for t, name, dtype, dname in ((info, "info", torch.int32, "int32"),
                                  (jitter, "jitter", torch.float64, "float64")):
        if t.dtype != dtype:
            raise TypeError(f"{op}: {name} must be {dname}, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] != L or not t.is_contiguous():
            raise ValueError(
                f"{op}: {name} must be a contiguous [{L}] tensor, got shape {list(t.shape)}"
            )
    for t, name in ((B, "B"), (info, "info"), (jitter, "jitter")):
        if t.device != A.device:
            raise ValueError(
                f"{op}: {name} is on {t.device} but A is on {A.device}; all tensors must be on "
                "the same device"
            )
    if len(steps) > MAX_JITTER_STEPS:
        raise ValueError(f"{op}: at most {MAX_JITTER_STEPS} jitter steps, got {len(steps)}")
    for s, v in enumerate(steps):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{op}: jitter_steps[{s}] must be finite and > 0, got {v}")


@torch.no_grad()
def cholesky_solve_reference_(
    A: Tensor, B: Tensor, info: Tensor, jitter: Tensor, jitter_steps: Sequence[float] = ()
) -> None:
    """Reference for :func:`cholesky_solve_`: one ``torch.linalg.cholesky_ex`` per attempt and
    system (a host synchronisation each on the GPU)."""
    steps = [float(v) for v in jitter_steps]
    _check_cholesky(A, B, info, jitter, steps)
    n = A.shape[1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    for l in range(A.shape[0]):
        a0 = A[l].clone()
        chol, status = torch.linalg.cholesky_ex(a0)
        status, jit = int(status), 0.0
        if status and steps:
            scale = a0.diagonal().abs().mean().item() if n else 1.0
            scale = scale if scale > 0 else 1.0
            for step in steps:
                jit = step * scale
                chol, status = torch.linalg.cholesky_ex(a0 + jit * eye)
                status = int(status)
                if status == 0:
                    break
        A[l] = chol
        info[l] = status
        jitter[l] = jit
        if status == 0 and B.shape[2]:
            B[l] = torch.cholesky_solve(B[l], chol)


# ---- fake kernels: shapes only, for FakeTensorMode / torch.compile -------------------------

if extension_available():

    @torch.library.register_fake("gffmerge::gram_")
    def _gram_fake(acc, x, index=None, weight=None, augment=False):
        d = x.shape[1] + int(augment)
        torch._check(acc.dtype == torch.float64, lambda: "gffmerge::gram_: acc must be float64")
        torch._check(acc.shape == (d, d), lambda: f"gffmerge::gram_: acc must be [{d}, {d}]")
        return None

    @torch.library.register_fake("gffmerge::cross_")
    def _cross_fake(acc, x, y, index_x=None, index_y=None, weight=None, augment_x=False):
        shape = (x.shape[1] + int(augment_x), y.shape[1])
        torch._check(acc.dtype == torch.float64, lambda: "gffmerge::cross_: acc must be float64")
        torch._check(acc.shape == shape, lambda: f"gffmerge::cross_: acc must be {list(shape)}")
        return None

    @torch.library.register_fake("gffmerge::cholesky_solve_")
    def _cholesky_solve_fake(A, B, info, jitter, jitter_steps=()):
        op = "gffmerge::cholesky_solve_"
        torch._check(A.dtype == torch.float64 and B.dtype == torch.float64,
                     lambda: f"{op}: A and B must be float64")
        torch._check(A.dim() == 3 and A.shape[1] == A.shape[2],
                     lambda: f"{op}: A must be [L, n, n]")
        torch._check(B.dim() == 3 and B.shape[:2] == A.shape[:2],
                     lambda: f"{op}: B must be [L, n, k]")
        torch._check(info.dtype == torch.int32 and info.shape == A.shape[:1],
                     lambda: f"{op}: info must be int32 [L]")
        torch._check(jitter.dtype == torch.float64 and jitter.shape == A.shape[:1],
                     lambda: f"{op}: jitter must be float64 [L]")
        return None
