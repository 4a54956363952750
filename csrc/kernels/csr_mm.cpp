#include "csr_mm.h"

#include <omp.h>

#include <algorithm>

#include "block_products.h"

namespace gffmerge::kernels {
namespace {

using std::int64_t;

struct Csr {
  const Index& crow;
  const Index& col;
  const double* val;
  int64_t val_stride;
};

// Strip [k0, k0 + width) of rows [r0, r1), any width (the portable path and the tail).
void strip_plain(double* out, int64_t ldo, const Csr& z, const double* m, int64_t ldm,
                 int64_t k0, int64_t width, int64_t r0, int64_t r1) {
  double acc[32];
  for (int64_t i = r0; i < r1; ++i) {
    std::fill(acc, acc + width, 0.0);
    for (int64_t p = index_at(z.crow, i), e = index_at(z.crow, i + 1); p < e; ++p) {
      const double v = z.val[p * z.val_stride];
      const double* mr = m + index_at(z.col, p) * ldm + k0;
      for (int64_t c = 0; c < width; ++c) acc[c] += v * mr[c];
    }
    double* o = out + i * ldo + k0;
    for (int64_t c = 0; c < width; ++c) o[c] += acc[c];
  }
}

#if GFFMERGE_FMA_TILES
// Strip of NV x 4 columns held in NV registers.
template <int NV>
__attribute__((target("avx2,fma"))) void strip_fma(double* out, int64_t ldo, const Csr& z,
                                                   const double* m, int64_t ldm, int64_t k0,
                                                   int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    __m256d acc[NV];
    for (int r = 0; r < NV; ++r) acc[r] = _mm256_setzero_pd();
    for (int64_t p = index_at(z.crow, i), e = index_at(z.crow, i + 1); p < e; ++p) {
      const __m256d v = _mm256_set1_pd(z.val[p * z.val_stride]);
      const double* mr = m + index_at(z.col, p) * ldm + k0;
      for (int r = 0; r < NV; ++r) acc[r] = _mm256_fmadd_pd(v, _mm256_loadu_pd(mr + 4 * r), acc[r]);
    }
    double* o = out + i * ldo + k0;
    for (int r = 0; r < NV; ++r)
      _mm256_storeu_pd(o + 4 * r, _mm256_add_pd(_mm256_loadu_pd(o + 4 * r), acc[r]));
  }
}

// The same strip of NV x 8 columns in AVX-512 registers: per output element the same fused
// multiply-adds in the same order, so the same sums to the bit.
template <int NV>
__attribute__((target("avx512f"))) void strip_wide(double* out, int64_t ldo, const Csr& z,
                                                   const double* m, int64_t ldm, int64_t k0,
                                                   int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    __m512d acc[NV];
    for (int r = 0; r < NV; ++r) acc[r] = _mm512_setzero_pd();
    for (int64_t p = index_at(z.crow, i), e = index_at(z.crow, i + 1); p < e; ++p) {
      const __m512d v = _mm512_set1_pd(z.val[p * z.val_stride]);
      const double* mr = m + index_at(z.col, p) * ldm + k0;
      for (int r = 0; r < NV; ++r) acc[r] = _mm512_fmadd_pd(v, _mm512_loadu_pd(mr + 8 * r), acc[r]);
    }
    double* o = out + i * ldo + k0;
    for (int r = 0; r < NV; ++r)
      _mm512_storeu_pd(o + 8 * r, _mm512_add_pd(_mm512_loadu_pd(o + 8 * r), acc[r]));
  }
}
#endif

// Strip width (columns of M): 32 while the strip (C x width x 8 bytes) stays within 384 KiB,
// 16 within 512 KiB (L2 per core here; measured: CiteSeer's C = 3 703 runs 1.5-2x faster in
// 16-wide strips than in 8- or 32-wide ones), else 8, so that the index and value loads of
// an entry are shared by two vector FMAs at least.
int64_t strip_width(int64_t cols) {
  const int64_t bytes = cols * 8;
  if (bytes * 32 <= (int64_t{384} << 10)) return 32;
  if (bytes * 16 <= (int64_t{512} << 10)) return 16;
  return 8;
}

}  // namespace

void csr_mm_accumulate(double* out, int64_t ldo, int64_t rows, int64_t cols, const Index& crow,
                       const Index& col, const double* val, int64_t val_stride,
                       const double* m, int64_t ldm, int64_t k, int threads, bool wide) {
  if (rows == 0 || k == 0) return;
  const Csr z{crow, col, val, val_stride};
  const int64_t width = strip_width(cols);
#if GFFMERGE_FMA_TILES
  const bool fma = blocks::fma_tiles_available();
  const bool w512 = fma && wide && blocks::wide_tiles_available();
#else
  const bool fma = false;
#endif
  const int n_threads =
      omp_in_parallel() ? 1 : std::max(1, std::min<int>(threads, static_cast<int>(rows / 256)));
  for (int64_t k0 = 0; k0 < k; k0 += width) {
    const int64_t w = std::min(width, k - k0);
#pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t t = 0; t < n_threads; ++t) {
      const int64_t r0 = rows * t / n_threads;
      const int64_t r1 = rows * (t + 1) / n_threads;
#if GFFMERGE_FMA_TILES
      if (w512 && w == 32) {
        strip_wide<4>(out, ldo, z, m, ldm, k0, r0, r1);
        continue;
      }
      if (w512 && w == 16) {
        strip_wide<2>(out, ldo, z, m, ldm, k0, r0, r1);
        continue;
      }
      if (w512 && w == 8) {
        strip_wide<1>(out, ldo, z, m, ldm, k0, r0, r1);
        continue;
      }
      if (fma && w == 32) {
        strip_fma<8>(out, ldo, z, m, ldm, k0, r0, r1);
        continue;
      }
      if (fma && w == 16) {
        strip_fma<4>(out, ldo, z, m, ldm, k0, r0, r1);
        continue;
      }
      if (fma && w == 8) {
        strip_fma<2>(out, ldo, z, m, ldm, k0, r0, r1);
        continue;
      }
#endif
      strip_plain(out, ldo, z, m, ldm, k0, w, r0, r1);
    }
  }
}

}  // namespace gffmerge::kernels
