// CPU row loads shared by the gram_/cross_ kernels (gram.cpp) and parts_gram_ (parts_gram.cpp):
// rows of any supported dtype, through an optional index, as float64 (no torch here).
#pragma once

#include <cstdint>

#include "convert.h"
#include "gram.h"

namespace gffmerge::kernels::rows {

using std::int64_t;

using kernels::index_at;
using kernels::weight_at;

// Rows index[first .. first + n) of x as float64 into out (row-major, leading dimension ld).
// The conversions are exact, so the vectorised and scalar copies write the same values.
template <class T>
__attribute__((always_inline)) inline void gather_rows_impl(const Matrix& x, const Index& ix,
                                                            int64_t first, int64_t n,
                                                            double* out, int64_t ld) {
  const T* base = static_cast<const T*>(x.data);
  const int64_t d = x.cols;
  const int64_t cs = x.col_stride;
  for (int64_t r = 0; r < n; ++r) {
    const T* src = base + index_at(ix, first + r) * x.row_stride;
    double* dst = out + r * ld;
    if (cs == 1) {
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) dst[c] = to_double(src[c]);
    } else {
      for (int64_t c = 0; c < d; ++c) dst[c] = to_double(src[c * cs]);
    }
  }
}

template <class T>
void gather_rows(const Matrix& x, const Index& ix, int64_t first, int64_t n, double* out,
                 int64_t ld) {
  gather_rows_impl<T>(x, ix, first, n, out, ld);
}

// Measured: the scalar float32 -> float64 copy was ~1/5 of parts_gram_ on GNS edge layers.
template <class T>
__attribute__((target("avx2"))) void gather_rows_avx2(const Matrix& x, const Index& ix,
                                                      int64_t first, int64_t n, double* out,
                                                      int64_t ld) {
  gather_rows_impl<T>(x, ix, first, n, out, ld);
}

using GatherFn = void (*)(const Matrix&, const Index&, int64_t, int64_t, double*, int64_t);

inline bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2");
  return ok;
}

inline GatherFn gather_for(DType t) {
  const bool avx2 = cpu_has_avx2();
  switch (t) {
    case DType::f32: return avx2 ? &gather_rows_avx2<float> : &gather_rows<float>;
    case DType::f64: return avx2 ? &gather_rows_avx2<double> : &gather_rows<double>;
    case DType::bf16: return avx2 ? &gather_rows_avx2<BFloat16Bits> : &gather_rows<BFloat16Bits>;
    case DType::f16: return avx2 ? &gather_rows_avx2<HalfBits> : &gather_rows<HalfBits>;
  }
  return nullptr;
}

}  // namespace gffmerge::kernels::rows
