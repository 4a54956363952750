"""Statistics of sparse input rows (bag-of-words features and their propagations).

A layer whose :class:`~gffmerge.models.parts.GramInput` holds :class:`Dense` parts given as
sparse tensors (Cora's features are 1.3 % non-zero, ``Â X`` about 5 %) is measured here:
the parts are joined into one float64 CSR matrix ``X [R, W]`` and

    Σ x̃ x̃ᵀ = [[XᵀX, Xᵀ1], [1ᵀX, R]],     Σ x̃ yᵀ = [[Xᵀy], [1ᵀy]]

are formed with sparse products, which cost ``Σ_r nnz_r²`` (and ``nnz · out``) instead of
``R · W²``. Only the non-zero values are converted to float64; the results equal the dense
float64 sums up to the order of summation. Dense (strided) parts may sit next to sparse
ones (they are converted to sparse); gathered and aggregated parts may not.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor

from gffmerge_ext import csr_mm_, dense_csr_count_, dense_csr_fill_, row_gram_devices

from ..models.parts import Dense, GramInput, is_sparse

F64 = torch.float64


@contextlib.contextmanager
def quiet_sparse():
    """Silence torch's notices that sparse CSR is beta and that invariant checks are off
    (the tensors here are built by torch itself)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Sparse (CSR tensor support|invariant)")
        yield


def dense_of(m: Tensor) -> Tensor:
    """A sparse CSR matrix as a dense one (one indexed write; ``to_dense`` of a CSR product
    measured 1.7x slower on CiteSeer's 37 %-dense Gram)."""
    rows, cols = m.shape
    crow = m.crow_indices()
    r = torch.repeat_interleave(torch.arange(rows, device=m.device), crow[1:] - crow[:-1])
    out = torch.zeros(rows * cols, dtype=m.dtype, device=m.device)
    out[r * cols + m.col_indices()] = m.values()
    return out.view(rows, cols)


def csr_matmul(z: Tensor, m: Tensor) -> Tensor:
    """``Z M`` of sparse rows ``Z [R, C]`` and a dense ``M [C, k]``: float64 CSR rows on the
    CPU by :func:`gffmerge_ext.csr_mm_` (column strips of ``M`` kept in L2; 1.3-2× torch's
    CSR product on bag-of-words features), anything else by ``torch.sparse.mm``."""
    if (z.layout == torch.sparse_csr and z.dtype == F64 and m.dtype == F64 and m.dim() == 2
            and z.device == m.device and z.device.type in row_gram_devices()):
        out = torch.zeros(z.shape[0], m.shape[1], dtype=F64, device=z.device)
        rows_contiguous = m.shape[1] <= 1 or m.stride(1) == 1
        csr_mm_(out, z.crow_indices(), z.col_indices(), z.values(),
                m if rows_contiguous else m.contiguous())
        return out
    return torch.sparse.mm(z, m)


def csr_of_dense(x: Tensor, max_density: float | None = None) -> Tensor | None:
    """A dense ``x [R, C]`` as a float64 sparse CSR tensor of its entries ``!= 0`` (values
    exact; the entries of ``x.to_sparse()``, in the same order), or None when more than
    ``max_density`` of its entries are non-zero (then no conversion is made). On the CPU by
    :func:`gffmerge_ext.dense_csr_count_` and :func:`gffmerge_ext.dense_csr_fill_` (x read
    once to count and once to fill, no index gather and no float32 copy: CiteSeer's
    3 327 x 3 703 features in ``benchmarks/results/gnn_choice_profile.md``, fifth pass),
    elsewhere by ``to_sparse``."""
    if x.dim() != 2:
        raise ValueError(f"csr_of_dense needs a 2-D matrix, got shape {list(x.shape)}")
    x = x.detach()
    limit = None if max_density is None else max_density * x.numel()
    if x.device.type in row_gram_devices():
        crow = torch.empty(x.shape[0] + 1, dtype=torch.int64, device=x.device)
        dense_csr_count_(crow, x)
        nnz = int(crow[-1])
        if limit is not None and nnz > limit:
            return None
        col = torch.empty(nnz, dtype=torch.int64, device=x.device)
        val = torch.empty(nnz, dtype=F64, device=x.device)
        dense_csr_fill_(col, val, crow, x)
        with quiet_sparse():
            return torch.sparse_csr_tensor(crow, col, val, tuple(x.shape),
                                           check_invariants=False)
    xs = x.to_sparse()
    if limit is not None and xs._nnz() > limit:
        return None
    with quiet_sparse():
        return xs.to(F64).coalesce().to_sparse_csr()


def coo_of_csr(z: Tensor) -> Tensor:
    """A sparse CSR matrix with sorted, unique columns per row (as :func:`csr_of_dense`
    gives) as a coalesced COO tensor sharing its columns and values (no sort)."""
    crow = z.crow_indices()
    rows = torch.repeat_interleave(torch.arange(z.shape[0], device=z.device),
                                   crow[1:] - crow[:-1], output_size=z.values().shape[0])
    return torch.sparse_coo_tensor(torch.stack([rows, z.col_indices()]), z.values(),
                                   tuple(z.shape), is_coalesced=True, check_invariants=False)


def has_sparse(inp: GramInput) -> bool:
    """Whether any part of ``inp`` is a sparse :class:`Dense` part."""
    return any(isinstance(p, Dense) and is_sparse(p.x) for p in inp.parts)


def joined_rows(inp: GramInput) -> Tensor:
    """The input rows ``[R, W]`` as one float64 sparse CSR matrix (parts side by side)."""
    blocks = []
    for k, p in enumerate(inp.parts):
        if not isinstance(p, Dense):
            raise ValueError(f"part {k} ({type(p).__name__}): sparse rows can only be joined "
                             "with Dense parts; describe the layer's input as Dense parts")
        t = p.x.detach()
        t = t.to_sparse_coo() if is_sparse(t) else t.reshape(-1, p.width).to_sparse()
        blocks.append(t.to(F64))
    x = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
    return x.coalesce().to_sparse_csr()


def sparse_sums(inp: GramInput, y: Tensor | None, *, gram: bool
                ) -> tuple[Tensor | None, Tensor | None]:
    """``(Σ x̃x̃ᵀ, Σ x̃yᵀ)`` of ``inp``'s rows (either skipped: ``gram=False``, ``y=None``),
    fresh float64 tensors laid out like :func:`~gffmerge.collect.providers.sums_of`'s."""
    with quiet_sparse():
        return _sums(inp, y, gram)


def _sums(inp: GramInput, y: Tensor | None, gram: bool) -> tuple[Tensor | None, Tensor | None]:
    x = joined_rows(inp)
    rows, width = x.shape
    ones = torch.ones(rows, 1, dtype=F64, device=x.device)
    g_out = c_out = None
    if gram:
        g_out = torch.empty(width + 1, width + 1, dtype=F64, device=x.device)
        prod = x.t() @ x
        g_out[:width, :width] = (dense_of(prod) if prod.layout == torch.sparse_csr
                                 else prod.to_dense())
        col = (x.t() @ ones)[:, 0]
        g_out[:width, width] = col
        g_out[width, :width] = col
        g_out[width, width] = float(rows)
    if y is not None:
        y = y.detach()
        y = y.reshape(-1, y.shape[-1]) if y.dim() != 2 else y
        if y.shape[0] != rows:
            raise ValueError(f"layer output has {y.shape[0]} rows but its GramInput {rows}")
        y64 = y.to(F64)
        c_out = torch.empty(width + 1, y.shape[1], dtype=F64, device=x.device)
        c_out[:width] = x.t() @ y64
        c_out[width] = y64.sum(0)
    return g_out, c_out
