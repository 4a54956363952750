// The augmented Gram of rows described as parts (no torch here):
//
//   x_r = [D_r, g_1r H_1[i_1r], ..., g_kr H_k[i_kr]],   acc += sum_r x~_r x~_r^T,  x~ = [x, 1]
//
// with dense rows D [R, d], node matrices H_q [N_q, d_q], indices i_q [R] and optional
// gates g_q [R]. Without forming any [R, d_q] gathered rows: one pass over the rows scatters
// P_q = sum_{r -> i_q} g_q [D, 1] ([N_q, d + 1]), c_q = sum_{r -> i_q} g_q^2 ([N_q]) and,
// per pair p < q, M_pq = sum_{r -> i_p} g_p g_q H_q[i_q] ([N_p, d_q]) in float64; the
// blocks are then node-level products (gram.h):
//
//   [D, 1] x [D, 1]   gram of D, augmented         (skipped unless dense_block)
//   [D, 1] x part q   P_q^T H_q
//   part q x part q   H_q^T diag(c_q) H_q
//   part p x part q   H_p^T M_pq
//
// acc is row-major float64 [(W + 1) x (W + 1)], W = d + sum_q d_q, columns in the order
// [D | part 1 | ... | part k | 1]. Every block is summed in a zeroed buffer and then added to
// acc (mirrored blocks are copies, so the increment is exactly symmetric).
#pragma once

#include <cstdint>

#include "gram.h"

namespace gffmerge::kernels {

struct GatheredRows {
  Matrix nodes;    // H_q [N_q, d_q]
  Index index;     // i_q, `count` entries (never nullptr)
  Weights gate;    // g_q, nullptr: all ones
};

// dense.data == nullptr: no dense part (d = 0). dense_block = false leaves the [D, 1] x
// [D, 1] entries of acc (dense rows and columns and the ones corner) untouched, for a caller
// that has their sum already.
void parts_gram_accumulate(double* acc, const Matrix& dense, const GatheredRows* parts,
                           int n_parts, std::int64_t count, bool dense_block, GemmFn gemm,
                           const Tuning& tuning);

}  // namespace gffmerge::kernels
