// Streaming second-moment accumulation on raw pointers (no torch here).
//
//   gram:  acc[D, D]   += sum_r w_r x~_r x~_r^T      x~ = [x, 1] when augmented
//   cross: acc[Dx, Dy] += sum_r w_r x~_r y_r^T
//
// `acc` is row-major float64. Rows are gathered through an optional index, cast to float64
// block by block (never the whole input), and the block products are formed by float64
// register tiles (block_products.h) where the CPU has AVX2 + FMA, else by a BLAS dgemm
// supplied by the caller. Threads split the rows; each sums its share into a private zeroed
// buffer, and the buffers are added to acc once at the end.
#pragma once

#include <cstdint>

#include "convert.h"

namespace gffmerge::kernels {

enum class DType : std::uint8_t { f32, f64, bf16, f16 };

// Column-major BLAS: C = alpha * op(A) * op(B) + beta * C.
using GemmFn = void (*)(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
                        std::int64_t k, double alpha, const double* a, std::int64_t lda,
                        const double* b, std::int64_t ldb, double beta, double* c,
                        std::int64_t ldc);

struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::f32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;  // elements
  std::int64_t col_stride = 1;  // elements
};

// Gather index; data == nullptr means rows 0, 1, 2, ...
struct Index {
  const void* data = nullptr;
  bool is_int32 = false;
  std::int64_t stride = 1;
};

struct Weights {
  const void* data = nullptr;  // nullptr: all ones
  bool is_f32 = false;
  std::int64_t stride = 1;
};

// Row p of the gather (p itself without an index) and weight p; host and device.
GFFMERGE_HD std::int64_t index_at(const Index& ix, std::int64_t p) {
  if (!ix.data) return p;
  if (ix.is_int32) return static_cast<const std::int32_t*>(ix.data)[p * ix.stride];
  return static_cast<const std::int64_t*>(ix.data)[p * ix.stride];
}

GFFMERGE_HD double weight_at(const Weights& w, std::int64_t p) {
  if (w.is_f32) return static_cast<const float*>(w.data)[p * w.stride];
  return static_cast<const double*>(w.data)[p * w.stride];
}

struct Tuning {
  std::int64_t block_rows = 0;  // rows gathered per GEMM; 0 = default
  std::int64_t tile = 0;        // column tile of the triangular sweep; 0 = default
  int threads = 1;
  bool builtin_tiles = true;  // register tiles (block_products.h) where the CPU has them;
                              // false: every block product through `gemm`
  bool wide_tiles = true;     // the AVX-512 tiles where the CPU has them (same sums to the
                              // bit); false: the AVX2 ones
};

// acc must hold (x.cols + augment)^2 doubles.
void gram_accumulate(double* acc, const Matrix& x, const Index& index, std::int64_t count,
                     const Weights& weight, bool augment, GemmFn gemm, const Tuning& tuning);

// acc must hold (x.cols + augment_x) * y.cols doubles.
void cross_accumulate(double* acc, const Matrix& x, const Matrix& y, const Index& index_x,
                      const Index& index_y, std::int64_t count, const Weights& weight,
                      bool augment_x, GemmFn gemm, const Tuning& tuning);

// First position p < count with index[p] outside [0, bound), or -1; its value goes to *value.
std::int64_t first_out_of_range(const Index& index, std::int64_t count, std::int64_t bound,
                                std::int64_t* value);

// The dgemm_ exported by the BLAS that torch links (MKL or OpenBLAS), or nullptr.
GemmFn linked_dgemm();

}  // namespace gffmerge::kernels
