// Float64 products of two row blocks by register tiles, without a BLAS (no torch here).
//
//   P(i, j) += sum_r a[r][i] * b[r][j]     (a, b row-major, P column-major: P[i + j * ldp])
//
// on 8 x 4 tiles of P held in registers while the rows stream past: for each row, two
// 4-wide loads of a, four broadcasts of b and eight fused multiply-adds. A thin product
// like this (an output of 64 x 64 over thousands of rows) is where the linked dgemm is
// slowest: MKL 2024.2 on a Zen CPU measured 6.5 GFMA/s for it against 17 for a square one.
// `lower` computes only the tiles that reach the lower triangle i >= j (a Gram: a == b up
// to weights), about half of them.
//
// Both blocks must be readable (and zero) up to the tile edges: columns [0, round_up(ni, 8))
// of a and [0, round_up(nj, 4)) of b; P must hold those rows and columns. The tiles are
// compiled for AVX2 + FMA and used only where the CPU has them (`fma_tiles_available`);
// otherwise the caller keeps its dgemm path. For activations cast from float32 (or
// bfloat16, float16) every product is exact in float64, so fusing it with the add rounds
// exactly as a separate multiply and add would.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GFFMERGE_FMA_TILES 1
#endif

namespace gffmerge::kernels::blocks {

constexpr std::int64_t kTileRows = 8;  // of P (columns of a)
constexpr std::int64_t kTileCols = 4;  // of P (columns of b)

inline std::int64_t round_up(std::int64_t n, std::int64_t m) { return (n + m - 1) / m * m; }

#if GFFMERGE_FMA_TILES

inline bool fma_tiles_available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// One 8 x 4 tile of P over rows [0, n): P[i0.., j0..] += sum_r a[r][i0..] b[r][j0..].
__attribute__((target("avx2,fma"))) inline void tile_8x4(const double* a, std::int64_t lda,
                                                          const double* b, std::int64_t ldb,
                                                          std::int64_t n, double* p,
                                                          std::int64_t ldp) {
  __m256d c0l = _mm256_loadu_pd(p), c0h = _mm256_loadu_pd(p + 4);
  __m256d c1l = _mm256_loadu_pd(p + ldp), c1h = _mm256_loadu_pd(p + ldp + 4);
  __m256d c2l = _mm256_loadu_pd(p + 2 * ldp), c2h = _mm256_loadu_pd(p + 2 * ldp + 4);
  __m256d c3l = _mm256_loadu_pd(p + 3 * ldp), c3h = _mm256_loadu_pd(p + 3 * ldp + 4);
  for (std::int64_t r = 0; r < n; ++r) {
    const double* ar = a + r * lda;
    const double* br = b + r * ldb;
    const __m256d al = _mm256_loadu_pd(ar);
    const __m256d ah = _mm256_loadu_pd(ar + 4);
    __m256d v = _mm256_broadcast_sd(br);
    c0l = _mm256_fmadd_pd(al, v, c0l);
    c0h = _mm256_fmadd_pd(ah, v, c0h);
    v = _mm256_broadcast_sd(br + 1);
    c1l = _mm256_fmadd_pd(al, v, c1l);
    c1h = _mm256_fmadd_pd(ah, v, c1h);
    v = _mm256_broadcast_sd(br + 2);
    c2l = _mm256_fmadd_pd(al, v, c2l);
    c2h = _mm256_fmadd_pd(ah, v, c2h);
    v = _mm256_broadcast_sd(br + 3);
    c3l = _mm256_fmadd_pd(al, v, c3l);
    c3h = _mm256_fmadd_pd(ah, v, c3h);
  }
  _mm256_storeu_pd(p, c0l);
  _mm256_storeu_pd(p + 4, c0h);
  _mm256_storeu_pd(p + ldp, c1l);
  _mm256_storeu_pd(p + ldp + 4, c1h);
  _mm256_storeu_pd(p + 2 * ldp, c2l);
  _mm256_storeu_pd(p + 2 * ldp + 4, c2h);
  _mm256_storeu_pd(p + 3 * ldp, c3l);
  _mm256_storeu_pd(p + 3 * ldp + 4, c3h);
}

#else

inline bool fma_tiles_available() { return false; }

inline void tile_8x4(const double*, std::int64_t, const double*, std::int64_t, std::int64_t,
                     double*, std::int64_t) {}

#endif

// Rows per pass over the tiles: ~96 KiB of both blocks, so that the rows a pass reads stay
// near L1 while every tile sweeps them (measured with 64 columns on Zen + AVX2: 48-113 rows
// are equally fast, 18-20 GFMA/s; 227 rows 10% slower, 1024 rows 2x slower).
inline std::int64_t pass_rows(std::int64_t lda, std::int64_t ldb) {
  return std::clamp<std::int64_t>(std::int64_t{12288} / (lda + ldb), 16, 512);
}

// Rows gathered per block: ~128 KiB of float64, so the block is still in L2 when its passes
// run.
inline std::int64_t block_rows(std::int64_t ld) {
  return std::clamp<std::int64_t>((std::int64_t{1} << 14) / ld, 64, 1024);
}

// P += aᵀ b over n rows for P columns [0, nj) and rows [0, ni) (all tiles), or only the
// tiles reaching i >= j (`lower`).
inline void accumulate(const double* a, std::int64_t lda, std::int64_t ni, const double* b,
                       std::int64_t ldb, std::int64_t nj, std::int64_t n, double* p,
                       std::int64_t ldp, bool lower) {
  const std::int64_t step = pass_rows(lda, ldb);
  for (std::int64_t r0 = 0; r0 < n; r0 += step) {
    const std::int64_t k = std::min(step, n - r0);
    for (std::int64_t j0 = 0; j0 < nj; j0 += kTileCols) {
      const std::int64_t i_first = lower ? j0 / kTileRows * kTileRows : 0;
      for (std::int64_t i0 = i_first; i0 < ni; i0 += kTileRows) {
        tile_8x4(a + r0 * lda + i0, lda, b + r0 * ldb + j0, ldb, k, p + i0 + j0 * ldp, ldp);
      }
    }
  }
}

}  // namespace gffmerge::kernels::blocks
