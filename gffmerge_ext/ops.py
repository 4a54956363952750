"""Typed wrappers over the ``torch.ops.gffmerge`` accumulators, their fake kernels, and the
pure-torch float64 reference that every backend is tested against.

Both ops add into a float64 accumulator in place and return None. Rows of ``x`` may be any
float dtype and any strides; they are gathered through an optional index and cast to float64
inside the kernel, so no float64 copy of ``x`` is ever made by the compiled path.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ._loading import BUILD_HINT, extension_available, kernel_devices, load_error

__all__ = ["gram_", "cross_", "available_backends"]

_ROW_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_BACKENDS = ("auto", "ext", "torch")
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
