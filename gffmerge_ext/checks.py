"""Argument checks of the gffmerge ops for the pure-torch reference (:mod:`.reference`).

The one Python copy of ``csrc/ops/checks.h``: the same checks in the same order, with the same
messages, under the same names (``check_gram`` here is ``check_gram`` there). Differences:
the exception types (TypeError for dtypes, ValueError for shapes, strides and devices,
IndexError for index values, where the compiled ops raise RuntimeError); the index-range
check, which the C++ backends run on the data after ``check_gram`` / ``check_cross``, is the
last step of those here; and the 32-bit size limit of LAPACK/cuSOLVER does not apply to the
reference. A change to a check is made in both files; tests/test_ops.py and
tests/test_ops_solve.py run every error case against both backends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

ROW_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int64, torch.int32)
WEIGHT_DTYPES = (torch.float32, torch.float64)
# Most jitter steps a call takes (the CUDA kernel gets them as launch arguments).
MAX_JITTER_STEPS = 32

GRAM = "gffmerge::gram_"
CROSS = "gffmerge::cross_"
PARTS = "gffmerge::parts_gram_"
ROW_GRAM = "gffmerge::row_gram_"
CSR_MM = "gffmerge::csr_mm_"
DENSE_CSR_COUNT = "gffmerge::dense_csr_count_"
DENSE_CSR_FILL = "gffmerge::dense_csr_fill_"
CHOLESKY = "gffmerge::cholesky_solve_"


def check_same_device(op: str, acc: Tensor, t: Tensor, name: str) -> None:
    if t.device != acc.device:
        raise ValueError(
            f"{op}: {name} is on {t.device} but acc is on {acc.device}; all tensors must be on "
            "the same device"
        )


def check_rows(op: str, acc: Tensor, x: Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(
            f"{op}: {name} must be 2-D [rows, features], got a {x.dim()}-D tensor of shape "
            f"{list(x.shape)}"
        )
    if x.dtype not in ROW_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float32, float64, bfloat16 or float16, got {x.dtype}"
        )
    check_same_device(op, acc, x, name)


def check_index(op: str, acc: Tensor, index: Tensor | None, name: str, x: Tensor) -> int:
    """Number of gathered rows: ``len(index)`` if given, else the rows of ``x``."""
    if index is None:
        return x.shape[0]
    if index.dtype not in INDEX_DTYPES:
        raise TypeError(f"{op}: {name} must be int64 or int32, got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"{op}: {name} must be 1-D, got shape {list(index.shape)}")
    check_same_device(op, acc, index, name)
    return index.shape[0]


def check_weight(op: str, acc: Tensor, weight: Tensor | None, count: int) -> None:
    if weight is None:
        return
    if weight.dtype not in WEIGHT_DTYPES:
        raise TypeError(f"{op}: weight must be float32 or float64, got {weight.dtype}")
    if weight.dim() != 1:
        raise ValueError(f"{op}: weight must be 1-D, got shape {list(weight.shape)}")
    if weight.shape[0] != count:
        raise ValueError(
            f"{op}: weight must have one entry per gathered row: expected {count}, got "
            f"{weight.shape[0]}"
        )
    check_same_device(op, acc, weight, "weight")


def check_acc(op: str, acc: Tensor, rows: int, cols: int, why: str) -> None:
    if acc.dtype != torch.float64:
        raise TypeError(f"{op}: acc must be float64, got {acc.dtype}")
    if tuple(acc.shape) != (rows, cols):
        raise ValueError(
            f"{op}: acc must have shape [{rows}, {cols}] ({why}), got {list(acc.shape)}"
        )
    if not acc.is_contiguous():
        raise ValueError(f"{op}: acc must be contiguous, got strides {list(acc.stride())}")


def check_range(op: str, index: Tensor | None, name: str, rows: int, of: str) -> None:
    """Every ``index`` value in ``[0, rows)``; the first one outside is reported."""
    if index is None or index.numel() == 0:
        return
    bad = ((index < 0) | (index >= rows)).nonzero()
    if bad.numel():
        p = int(bad[0, 0])
        raise IndexError(
            f"{op}: {name}[{p}] = {int(index[p])} is out of range for {of} with {rows} rows "
            f"(valid: 0 <= {name} < {rows})"
        )


def check_gram(
    acc: Tensor, x: Tensor, index: Tensor | None, weight: Tensor | None, augment: bool
) -> int:
    """All of ``gram_``'s arguments; returns the number of gathered rows."""
    check_rows(GRAM, acc, x, "x")
    d = x.shape[1] + int(augment)
    check_acc(GRAM, acc, d, d, f"x has {x.shape[1]} features, augment={augment}")
    count = check_index(GRAM, acc, index, "index", x)
    check_weight(GRAM, acc, weight, count)
    check_range(GRAM, index, "index", x.shape[0], "x")
    return count


def check_cross(
    acc: Tensor,
    x: Tensor,
    y: Tensor,
    index_x: Tensor | None,
    index_y: Tensor | None,
    weight: Tensor | None,
    augment_x: bool,
) -> int:
    """All of ``cross_``'s arguments; returns the number of pairs."""
    check_rows(CROSS, acc, x, "x")
    check_rows(CROSS, acc, y, "y")
    why = f"x has {x.shape[1]} features, augment_x={augment_x}, y has {y.shape[1]} features"
    check_acc(CROSS, acc, x.shape[1] + int(augment_x), y.shape[1], why)
    nx = check_index(CROSS, acc, index_x, "index_x", x)
    ny = check_index(CROSS, acc, index_y, "index_y", y)
    if nx != ny:
        sx = "len(index_x)" if index_x is not None else "x.shape[0]"
        sy = "len(index_y)" if index_y is not None else "y.shape[0]"
        raise ValueError(
            f"{CROSS}: x and y must pair up row for row, but {sx} = {nx} and {sy} = {ny}"
        )
    check_weight(CROSS, acc, weight, nx)
    check_range(CROSS, index_x, "index_x", x.shape[0], "x")
    check_range(CROSS, index_y, "index_y", y.shape[0], "y")
    return nx


# (tensor name, dtype, dtype in messages) of cholesky_solve_'s [L] outputs.
_CHOLESKY_OUTPUTS = (("info", torch.int32, "int32"), ("jitter", torch.float64, "float64"))


def check_cholesky(
    A: Tensor, B: Tensor, info: Tensor, jitter: Tensor, steps: Sequence[float]
) -> None:
    """All of ``cholesky_solve_``'s arguments (``steps`` as floats)."""
    op = CHOLESKY
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
    outputs = {"info": info, "jitter": jitter}
    for name, dtype, dname in _CHOLESKY_OUTPUTS:
        t = outputs[name]
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


def check_parts_gram(
    acc: Tensor,
    dense: Tensor | None,
    nodes: Sequence[Tensor],
    indices: Sequence[Tensor],
    gates: Sequence[Tensor | None],
) -> int:
    """All of ``parts_gram_``'s arguments; returns the number of rows R."""
    if not (len(nodes) == len(indices) == len(gates)):
        raise ValueError(
            f"{PARTS}: nodes, indices and gates must have one entry per gathered part, got "
            f"{len(nodes)}, {len(indices)} and {len(gates)}"
        )
    if dense is None and not nodes:
        raise ValueError(f"{PARTS}: needs dense rows or at least one gathered part, got neither")
    width = 0
    if dense is not None:
        check_rows(PARTS, acc, dense, "dense")
        width += dense.shape[1]
    for q, h in enumerate(nodes):
        check_rows(PARTS, acc, h, f"nodes[{q}]")
        width += h.shape[1]
    check_acc(PARTS, acc, width + 1, width + 1,
              f"dense and nodes have {width} features in all, plus the ones column")
    count = dense.shape[0] if dense is not None else indices[0].shape[0]
    of = "dense.shape[0]" if dense is not None else "len(indices[0])"
    for q, (h, index, gate) in enumerate(zip(nodes, indices, gates)):
        name = f"indices[{q}]"
        n = check_index(PARTS, acc, index, name, h)
        if n != count:
            raise ValueError(
                f"{PARTS}: {name} must have one entry per row: expected {count} ({of}), got {n}"
            )
        if gate is not None:
            gname = f"gates[{q}]"
            if gate.dtype not in WEIGHT_DTYPES:
                raise TypeError(f"{PARTS}: {gname} must be float32 or float64, got {gate.dtype}")
            if gate.dim() != 1 or gate.shape[0] != count:
                raise ValueError(
                    f"{PARTS}: {gname} must be 1-D with one entry per row: expected [{count}], "
                    f"got shape {list(gate.shape)}"
                )
            check_same_device(PARTS, acc, gate, gname)
    for q, (h, index) in enumerate(zip(nodes, indices)):
        check_range(PARTS, index, f"indices[{q}]", h.shape[0], f"nodes[{q}]")
    return count


def check_row_gram(acc: Tensor, crow: Tensor, col: Tensor, values: Tensor, cols: int) -> int:
    """All of ``row_gram_``'s arguments, the row pointers and column values included;
    returns nnz (``len(col)``)."""
    op = ROW_GRAM
    if crow.dtype not in INDEX_DTYPES:
        raise TypeError(f"{op}: crow must be int64 or int32, got {crow.dtype}")
    if crow.dim() != 1 or crow.shape[0] < 1:
        raise ValueError(f"{op}: crow must be 1-D with rows + 1 >= 1 entries, got shape "
                         f"{list(crow.shape)}")
    check_same_device(op, acc, crow, "crow")
    rows = crow.shape[0] - 1
    check_acc(op, acc, rows, rows, f"crow has {rows} rows")
    if col.dtype not in INDEX_DTYPES:
        raise TypeError(f"{op}: col must be int64 or int32, got {col.dtype}")
    if col.dim() != 1:
        raise ValueError(f"{op}: col must be 1-D, got shape {list(col.shape)}")
    check_same_device(op, acc, col, "col")
    if values.dtype not in WEIGHT_DTYPES:
        raise TypeError(f"{op}: values must be float32 or float64, got {values.dtype}")
    if values.dim() != 1 or values.shape[0] != col.shape[0]:
        raise ValueError(f"{op}: values must be 1-D with one entry per column index: expected "
                         f"[{col.shape[0]}], got shape {list(values.shape)}")
    check_same_device(op, acc, values, "values")
    if cols < 0:
        raise ValueError(f"{op}: cols must be >= 0, got {cols}")
    nnz = col.shape[0]
    check_csr_data(op, crow, col, rows, nnz, cols)
    return nnz


def check_csr_data(op: str, crow: Tensor, col: Tensor, rows: int, nnz: int, cols: int) -> None:
    """The CSR row pointers (``crow[0] = 0``, non-decreasing, ``crow[rows] = nnz``) and every
    column index in ``[0, cols)``; the first violation is reported."""
    ptr = crow.long()
    prev = torch.cat([ptr.new_zeros(1), ptr[:-1]])
    bad = (ptr < prev)
    bad[0] = bool(ptr[0] != 0)
    bad[-1] = bad[-1] | bool(ptr[-1] != nnz)
    if bool(bad.any()):
        p = int(bad.nonzero()[0, 0])
        raise IndexError(f"{op}: crow[{p}] = {int(ptr[p])} breaks the CSR row pointers "
                         f"(crow[0] = 0, non-decreasing, crow[{rows}] = len(col) = {nnz})")
    out = ((col < 0) | (col >= cols)).nonzero()
    if out.numel():
        p = int(out[0, 0])
        raise IndexError(f"{op}: col[{p}] = {int(col[p])} is out of range for cols = {cols} "
                         f"(valid: 0 <= col < {cols})")


def check_csr_mm(out: Tensor, crow: Tensor, col: Tensor, values: Tensor, m: Tensor) -> int:
    """All of ``csr_mm_``'s arguments, the row pointers and column values included; returns
    nnz (``len(col)``)."""
    op = CSR_MM
    if out.dtype != torch.float64:
        raise TypeError(f"{op}: out must be float64, got {out.dtype}")
    if out.dim() != 2 or not out.is_contiguous():
        raise ValueError(f"{op}: out must be a contiguous 2-D [rows, k] tensor, got shape "
                         f"{list(out.shape)} and strides {list(out.stride())}")
    if crow.dtype not in INDEX_DTYPES:
        raise TypeError(f"{op}: crow must be int64 or int32, got {crow.dtype}")
    if crow.dim() != 1 or crow.shape[0] != out.shape[0] + 1:
        raise ValueError(f"{op}: crow must be 1-D with rows + 1 = {out.shape[0] + 1} entries "
                         f"(rows from out), got shape {list(crow.shape)}")
    check_same_device(op, out, crow, "crow")
    if col.dtype not in INDEX_DTYPES:
        raise TypeError(f"{op}: col must be int64 or int32, got {col.dtype}")
    if col.dim() != 1:
        raise ValueError(f"{op}: col must be 1-D, got shape {list(col.shape)}")
    check_same_device(op, out, col, "col")
    if values.dtype != torch.float64:
        raise TypeError(f"{op}: values must be float64, got {values.dtype}")
    if values.dim() != 1 or values.shape[0] != col.shape[0]:
        raise ValueError(f"{op}: values must be 1-D with one entry per column index: expected "
                         f"[{col.shape[0]}], got shape {list(values.shape)}")
    check_same_device(op, out, values, "values")
    if m.dtype != torch.float64:
        raise TypeError(f"{op}: m must be float64, got {m.dtype}")
    if m.dim() != 2 or m.shape[1] != out.shape[1]:
        raise ValueError(f"{op}: m must be 2-D [cols, {out.shape[1]}] (k from out), got shape "
                         f"{list(m.shape)}")
    if m.shape[1] > 1 and m.stride(1) != 1:
        raise ValueError(f"{op}: m's rows must be contiguous (stride 1 along k), got strides "
                         f"{list(m.stride())}")
    check_same_device(op, out, m, "m")
    nnz = col.shape[0]
    check_csr_data(op, crow, col, out.shape[0], nnz, m.shape[0])
    return nnz


def check_dense_csr_x(op: str, x: Tensor, crow: Tensor) -> None:
    """The dense matrix of ``dense_csr_count_`` / ``dense_csr_fill_`` and its row pointers."""
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be 2-D [rows, cols], got a {x.dim()}-D tensor of shape "
                         f"{list(x.shape)}")
    if x.dtype not in ROW_DTYPES:
        raise TypeError(f"{op}: x must be float32, float64, bfloat16 or float16, got {x.dtype}")
    if crow.dtype != torch.int64:
        raise TypeError(f"{op}: crow must be int64, got {crow.dtype}")
    if crow.dim() != 1 or crow.shape[0] != x.shape[0] + 1 or not crow.is_contiguous():
        raise ValueError(f"{op}: crow must be a contiguous 1-D tensor with rows + 1 = "
                         f"{x.shape[0] + 1} entries (rows from x), got shape {list(crow.shape)}")
    if crow.device != x.device:
        raise ValueError(f"{op}: crow is on {crow.device} but x is on {x.device}; all tensors "
                         "must be on the same device")


def check_dense_csr_count(crow: Tensor, x: Tensor) -> None:
    """All of ``dense_csr_count_``'s arguments."""
    check_dense_csr_x(DENSE_CSR_COUNT, x, crow)


def check_dense_csr_fill(col: Tensor, values: Tensor, crow: Tensor, x: Tensor) -> int:
    """All of ``dense_csr_fill_``'s arguments but the row counts (checked against ``x`` by the
    reference after this), the row pointers included; returns nnz (``len(col)``)."""
    op = DENSE_CSR_FILL
    check_dense_csr_x(op, x, crow)
    if col.dtype != torch.int64:
        raise TypeError(f"{op}: col must be int64, got {col.dtype}")
    if col.dim() != 1 or not col.is_contiguous():
        raise ValueError(f"{op}: col must be a contiguous 1-D tensor, got shape "
                         f"{list(col.shape)} and strides {list(col.stride())}")
    if col.device != x.device:
        raise ValueError(f"{op}: col is on {col.device} but x is on {x.device}; all tensors "
                         "must be on the same device")
    if values.dtype != torch.float64:
        raise TypeError(f"{op}: values must be float64, got {values.dtype}")
    if values.dim() != 1 or values.shape[0] != col.shape[0] or not values.is_contiguous():
        raise ValueError(f"{op}: values must be a contiguous 1-D tensor with one entry per "
                         f"column index: expected [{col.shape[0]}], got shape "
                         f"{list(values.shape)}")
    if values.device != x.device:
        raise ValueError(f"{op}: values is on {values.device} but x is on {x.device}; all "
                         "tensors must be on the same device")
    nnz = col.shape[0]
    rows = x.shape[0]
    check_csr_data(op, crow, col.new_zeros(0), rows, nnz, max(x.shape[1], 1))
    return nnz


def check_row_counts(op: str, counts: Tensor, crow: Tensor) -> None:
    """Each row's count of non-zeros against its ``crow`` range; the first mismatch is
    reported."""
    given = crow[1:] - crow[:-1]
    bad = (counts != given).nonzero()
    if bad.numel():
        r = int(bad[0, 0])
        raise ValueError(f"{op}: row {r} of x has {int(counts[r])} non-zeros but crow gives it "
                         f"{int(given[r])} (crow must come from dense_csr_count_ of the same x)")
