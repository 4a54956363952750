// The Gram of the rows of a sparse matrix (no torch here):
//
//   acc[R, R] += Z Z^T,   Z [R, C] in CSR: row pointers crow [R + 1], columns col and
//                          values val [nnz] (entries of a row in any order, repeats summed)
//
// Row by row against the columns: Z is transposed once (a counting sort, so each column
// lists its rows in increasing order), and row i of the product is
// sum_{(c, v) in row i} v * Z[:, c], taken over the rows j <= i of column c only. That is
// sum_c nnz(column c)^2 / 2 multiply-adds, against nnz(Z) * R for a sparse x dense product
// with a dense Z^T (5-6x more for a GNN's first layer on a few hundred nodes). The lower
// triangle is summed in a per-thread row buffer and added to acc together with its mirror,
// so the increment is exactly symmetric.
#pragma once

#include <cstdint>

#include "gram.h"

namespace gffmerge::kernels {

// acc is row-major float64 [rows x rows]; col values in [0, cols); crow checked first
// (first_bad_row_pointer).
void row_gram_accumulate(double* acc, std::int64_t rows, std::int64_t cols, const Index& crow,
                         const Index& col, const Weights& val, int threads);

// First position p of crow [rows + 1] that breaks the CSR row pointers (crow[0] = 0,
// non-decreasing, crow[rows] = nnz), or -1; its value goes to *value.
std::int64_t first_bad_row_pointer(const Index& crow, std::int64_t rows, std::int64_t nnz,
                                   std::int64_t* value);

}  // namespace gffmerge::kernels
