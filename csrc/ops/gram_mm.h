// The "mm" route of gram_ and cross_: the gathered rows in chunks, each cast to float64
// (weighted) and folded into the sums by one ATen matrix product (cuBLAS DGEMM on a GPU);
// an augmented row's ones column enters as column sums. On an H200 this route ran 1.4-3.2x
// faster than the tiled CUDA kernel at d >= 128 (benchmarks/results/gram_cuda.md), so it is
// the CUDA default; the CPU keeps its register tiles (2-4x faster there than this route). Device-agnostic: GFFMERGE_GRAM_ROUTE=mm puts the CPU op on it
// too, which is how the CPU tests cover the same code.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "blas_env.h"

namespace gffmerge::ops::mm_route {

// float64 bytes of one chunk's operands: bounds the temporaries whatever R is.
constexpr int64_t kChunkBytes = int64_t{256} << 20;

// The route GFFMERGE_GRAM_ROUTE asks for: "mm", "mm:ROWS" (ROWS gathered rows per chunk instead
// of ~256 MB of operands) or "kernel"; unset: mm on CUDA, kernel on the CPU.
struct Choice {
  bool mm = false;
  int64_t chunk = 0;  // rows per chunk; 0: by kChunkBytes
};

inline Choice chosen(bool cuda) {
  const char* env = gram_route_env();
  if (env == nullptr || *env == '\0') return {cuda, 0};
  if (std::strcmp(env, "kernel") == 0) return {false, 0};
  if (std::strcmp(env, "mm") == 0) return {true, 0};
  if (std::strncmp(env, "mm:", 3) == 0) {
    char* end = nullptr;
    const long long rows = std::strtoll(env + 3, &end, 10);
    if (end != env + 3 && *end == '\0' && rows > 0) return {true, static_cast<int64_t>(rows)};
  }
  TORCH_CHECK(false, "GFFMERGE_GRAM_ROUTE must be 'mm' (chunked float64 matrix products), "
              "'mm:ROWS' (the same, ROWS > 0 rows per chunk) or 'kernel' (the tiled kernels), "
              "got '", env, "'; unset it for the default (mm on CUDA, kernel on the CPU)");
}

inline int64_t chunk_rows(const Choice& c, int64_t doubles_per_row) {
  if (c.chunk > 0) return c.chunk;
  return std::max<int64_t>(1, kChunkBytes / (8 * std::max<int64_t>(doubles_per_row, 1)));
}

// Gathered rows [start, start + n) of x as float64 [n, d], contiguous. The column of ones of
// an augmented row is never stored: its products are column sums. Every matrix a product
// reads or writes keeps a leading dimension of d (or d_out), never d + 1: cuBLAS picks its
// fast (FP64 tensor core) kernels only for aligned leading dimensions, and on an H200 the
// augmented Gram through a [n, d + 1] operand ran at half the plain one's rate.
inline at::Tensor rows_f64(const at::Tensor& x, const std::optional<at::Tensor>& index,
                           int64_t start, int64_t n) {
  const at::Tensor part = index.has_value()
                              ? x.index_select(0, index->narrow(0, start, n).contiguous())
                              : x.narrow(0, start, n);
  at::Tensor out = at::empty({n, x.size(1)}, x.options().dtype(at::kDouble));
  out.copy_(part);
  return out;
}

inline at::Tensor weighted(at::Tensor rows, const std::optional<at::Tensor>& weight,
                           int64_t start, int64_t n) {
  if (!weight.has_value()) return rows;
  return rows.mul_(weight->narrow(0, start, n).to(at::kDouble).unsqueeze(1));
}

// acc += sum_r w_r x~_r x~_r^T over the count gathered rows; the increment is exactly
// symmetric ((S + S^T) / 2 of the products' sum S).
inline void gram(const Choice& c, const at::Tensor& acc, const at::Tensor& x,
                 const std::optional<at::Tensor>& index, const std::optional<at::Tensor>& weight,
                 bool augment, int64_t count) {
  if (count == 0 || acc.numel() == 0) return;
  const int64_t D = acc.size(0);
  const int64_t step = chunk_rows(c, weight.has_value() ? 2 * D : D);
  const int64_t d = x.size(1);
  // The x-block of the sums apart from the ones row and column (its own aligned matrix).
  at::Tensor block = at::zeros({d, d}, acc.options());
  at::Tensor col = at::zeros({d}, acc.options());  // sum_r w_r x_r (augment)
  at::Tensor total = at::zeros({}, acc.options());  // sum_r w_r (augment)
  for (int64_t s = 0; s < count; s += step) {
    const int64_t n = std::min(step, count - s);
    const at::Tensor a = rows_f64(x, index, s, n);
    const at::Tensor wa = weight.has_value() ? weighted(a.clone(), weight, s, n) : a;
    block.addmm_(a.t(), wa);
    if (augment) {
      col.add_(wa.sum(0));
      if (weight.has_value()) {
        total.add_(weight->narrow(0, s, n).to(at::kDouble).sum());
      } else {
        total.add_(static_cast<double>(n));
      }
    }
  }
  at::Tensor sum = at::zeros({D, D}, acc.options());
  sum.narrow(0, 0, d).narrow(1, 0, d).copy_(block);
  if (augment) {
    sum.select(1, d).narrow(0, 0, d).copy_(col);
    sum.select(0, d).narrow(0, 0, d).copy_(col);
    sum.select(0, d).select(0, d).copy_(total);
  }
  acc.add_(sum.add(sum.t()).mul_(0.5));
}

// acc += sum_r w_r x~_r y_r^T over the count gathered row pairs.
inline void cross(const Choice& c, const at::Tensor& acc, const at::Tensor& x,
                  const at::Tensor& y,
                  const std::optional<at::Tensor>& index_x,
                  const std::optional<at::Tensor>& index_y,
                  const std::optional<at::Tensor>& weight, bool augment_x, int64_t count) {
  if (count == 0 || acc.numel() == 0) return;
  const int64_t step = chunk_rows(c, acc.size(0) + acc.size(1));
  // The increment is summed apart and added once: products summed into acc itself would
  // round at acc's magnitude once per row.
  at::Tensor sum = at::zeros_like(acc);
  for (int64_t s = 0; s < count; s += step) {
    const int64_t n = std::min(step, count - s);
    const at::Tensor wy = weighted(rows_f64(y, index_y, s, n), weight, s, n);
    sum.narrow(0, 0, x.size(1)).addmm_(rows_f64(x, index_x, s, n).t(), wy);  // ld = d_out
    if (augment_x) sum.select(0, x.size(1)).add_(wy.sum(0));  // the ones column of x~
  }
  acc.add_(sum);
}

}  // namespace gffmerge::ops::mm_route
