// Sparse CSR rows of a dense matrix (no torch here):
//
//   x [R, C] (float32, float64, bfloat16 or float16, any strides)
//     -> crow [R + 1], col [nnz], val [nnz] (float64), entries of a row in column order
//
// in two passes, so that the caller can size col and val (and decide, from nnz, whether
// the matrix is sparse enough to convert at all): dense_csr_count writes the row pointers,
// dense_csr_fill the columns and values. An entry is stored when x != 0 (NaN is stored,
// -0.0 is not: the rule of torch's to_sparse). A GNN's bag-of-words features (CiteSeer:
// 3 327 x 3 703 float32, 0.85 % non-zero) are where torch's to_sparse spent 28-39 ms per
// merge here: a nonzero pass, a gather and a float64 copy; these read x once per pass.
#pragma once

#include <cstdint>

#include "gram.h"

namespace gffmerge::kernels {

// crow must hold x.rows + 1 int64: crow[0] = 0, crow[i + 1] = crow[i] + non-zeros of row i.
void dense_csr_count(std::int64_t* crow, const Matrix& x, int threads);

// col and val hold crow[x.rows] entries; crow as written by dense_csr_count for this x (the
// row pointers themselves checked by the caller: first_bad_row_pointer). A row whose
// non-zeros do not fit its crow range is not written past it: the first such row is
// returned (its count of non-zeros in *found), else -1.
std::int64_t dense_csr_fill(std::int64_t* col, double* val, const std::int64_t* crow,
                            const Matrix& x, int threads, std::int64_t* found);

}  // namespace gffmerge::kernels
