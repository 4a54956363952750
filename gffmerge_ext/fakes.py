"""Fake kernels of the gffmerge ops: shapes and dtypes only, for FakeTensorMode, ``opcheck``
and ``torch.compile``.

They are registered for every op the ``gffmerge`` namespace defines at import time, whoever
defined it: importing ``gffmerge_ext._C`` registers the schemas even when :mod:`._loading` then
declares the build unusable (a torch version mismatch), and a tracing user still needs the
fakes of those ops. The checks are the shape and dtype ones that a fake tensor can answer;
index values and devices are checked by the real kernels.
"""

from __future__ import annotations

import torch

from . import _loading  # noqa: F401  (imports _C, which defines the schemas, before _register)

__all__ = ["REGISTERED", "op_defined"]


def _gram_fake(acc, x, index=None, weight=None, augment=False):
    d = x.shape[1] + int(augment)
    torch._check(acc.dtype == torch.float64, lambda: "gffmerge::gram_: acc must be float64")
    torch._check(acc.shape == (d, d), lambda: f"gffmerge::gram_: acc must be [{d}, {d}]")
    return None


def _cross_fake(acc, x, y, index_x=None, index_y=None, weight=None, augment_x=False):
    shape = (x.shape[1] + int(augment_x), y.shape[1])
    torch._check(acc.dtype == torch.float64, lambda: "gffmerge::cross_: acc must be float64")
    torch._check(acc.shape == shape, lambda: f"gffmerge::cross_: acc must be {list(shape)}")
    return None


def _parts_gram_fake(acc, dense, nodes, indices, gates, dense_block=True):
    d = (0 if dense is None else dense.shape[1]) + sum(h.shape[1] for h in nodes) + 1
    torch._check(acc.dtype == torch.float64,
                 lambda: "gffmerge::parts_gram_: acc must be float64")
    torch._check(acc.shape == (d, d), lambda: f"gffmerge::parts_gram_: acc must be [{d}, {d}]")
    torch._check(len(nodes) == len(indices) == len(gates),
                 lambda: "gffmerge::parts_gram_: one index and gate per node matrix")
    return None


def _row_gram_fake(acc, crow, col, values, cols):
    op = "gffmerge::row_gram_"
    rows = crow.shape[0] - 1
    torch._check(acc.dtype == torch.float64, lambda: f"{op}: acc must be float64")
    torch._check(acc.shape == (rows, rows), lambda: f"{op}: acc must be [{rows}, {rows}]")
    torch._check(values.shape == col.shape,
                 lambda: f"{op}: values must have one entry per column index")
    return None


def _csr_mm_fake(out, crow, col, values, m):
    op = "gffmerge::csr_mm_"
    torch._check(out.dtype == torch.float64 and m.dtype == torch.float64,
                 lambda: f"{op}: out and m must be float64")
    torch._check(out.dim() == 2 and crow.shape[0] == out.shape[0] + 1,
                 lambda: f"{op}: crow must have rows + 1 entries")
    torch._check(m.dim() == 2 and m.shape[1] == out.shape[1], lambda: f"{op}: m must be [cols, k]")
    torch._check(values.shape == col.shape,
                 lambda: f"{op}: values must have one entry per column index")
    return None


def _dense_csr_count_fake(crow, x):
    op = "gffmerge::dense_csr_count_"
    torch._check(x.dim() == 2, lambda: f"{op}: x must be 2-D")
    torch._check(crow.dtype == torch.int64 and crow.shape == (x.shape[0] + 1,),
                 lambda: f"{op}: crow must be int64 [rows + 1]")
    return None


def _dense_csr_fill_fake(col, values, crow, x):
    op = "gffmerge::dense_csr_fill_"
    torch._check(x.dim() == 2, lambda: f"{op}: x must be 2-D")
    torch._check(crow.dtype == torch.int64 and crow.shape == (x.shape[0] + 1,),
                 lambda: f"{op}: crow must be int64 [rows + 1]")
    torch._check(col.dtype == torch.int64 and values.dtype == torch.float64,
                 lambda: f"{op}: col must be int64 and values float64")
    torch._check(values.shape == col.shape,
                 lambda: f"{op}: values must have one entry per column index")
    return None


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


# One entry per schema in csrc/ops/registration.cpp.
_FAKES = {
    "gram_": _gram_fake,
    "cross_": _cross_fake,
    "parts_gram_": _parts_gram_fake,
    "row_gram_": _row_gram_fake,
    "csr_mm_": _csr_mm_fake,
    "dense_csr_count_": _dense_csr_count_fake,
    "dense_csr_fill_": _dense_csr_fill_fake,
    "cholesky_solve_": _cholesky_solve_fake,
}


def op_defined(name: str) -> bool:
    """True when the dispatcher knows the schema ``gffmerge::name``."""
    try:
        getattr(torch.ops.gffmerge, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _register() -> tuple[str, ...]:
    done = []
    for name, fake in _FAKES.items():
        if op_defined(name):
            torch.library.register_fake(f"gffmerge::{name}")(fake)
            done.append(name)
    return tuple(done)


#: Names of the ops whose fakes this import registered (all of them when ``_C`` was imported).
REGISTERED: tuple[str, ...] = _register()
