// Sparse rows times a dense matrix (no torch here):
//
//   out[R, K] += Z M,   Z [R, C] in CSR (crow [R + 1], col, val [nnz]),  M [C, K] float64
//
// by column strips of M: each strip (C x 8-32 columns, sized to stay in L2) is read once
// per row entry while the strip of the output row is held in registers; the rows of one
// strip are split between threads. A GNN's first layer on bag-of-words features (C = 1 433-
// 3 703 columns, K = 128-384) is where torch's CSR product ran at 1.2-2.2 GFMA/s here: every
// entry read a whole 1-3 KB row of M from L3. Each output element is summed over the row's
// entries in their CSR order, as a plain loop would; the AVX-512 strips (`wide`, where the
// CPU has them) and the AVX2 ones fuse the same multiply-adds in the same order.
#pragma once

#include <cstdint>

#include "gram.h"

namespace gffmerge::kernels {

// out row-major with row stride ldo (elements); m row-major with row stride ldm and
// contiguous rows. crow must satisfy the CSR rules and col lie in [0, cols) (checked by the
// caller: first_bad_row_pointer, first_out_of_range).
void csr_mm_accumulate(double* out, std::int64_t ldo, std::int64_t rows, std::int64_t cols,
                       const Index& crow, const Index& col, const double* val,
                       std::int64_t val_stride, const double* m, std::int64_t ldm,
                       std::int64_t k, int threads, bool wide = true);

}  // namespace gffmerge::kernels
