// Float64 products of two row blocks by register tiles, without a BLAS (no torch here).
//
//   P(i, j) += sum_r a[r][i] * b[r][j]     (a, b row-major, P column-major: P[i + j * ldp])
//
// on tiles of P held in registers while the rows stream past. Two widths, chosen at run time:
// * AVX-512: 16 x 8 tiles (two 8-wide loads of a, eight broadcasts of b and sixteen fused
//   multiply-adds per row; an 8 x 8 tile for the last rows when ni is not a multiple of 16);
// * AVX2 + FMA: 8 x 4 tiles (two 4-wide loads, four broadcasts, eight multiply-adds).
// Every P(i, j) is the same chain of fused multiply-adds over the rows in the same order in
// both, so the two give the same sums to the bit (test); the wide tiles do twice the work
// per instruction (measured on the 2-core Zen 5 EPYC: a 64-column Gram of 27 000 rows
// 2.0-2.1 ms with AVX2, 1.1 ms with AVX-512). A thin product like this (an output of 64 x 64
// over thousands of rows) is where the linked dgemm is slowest: MKL 2024.2 on a Zen CPU
// measured 6.5 GFMA/s for it against 17 for a square one.
// `lower` computes only the tiles that reach the lower triangle i >= j (a Gram: a == b up
// to weights), about half of them.
//
// Both blocks must be readable (and zero) up to the tile edges: columns [0, round_up(ni, 8))
// of a and [0, round_up(nj, 8)) of b; P must hold those rows and columns. The tiles are used
// only where the CPU has the instructions (`fma_tiles_available`, `wide_tiles_available`);
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

constexpr std::int64_t kTileRows = 8;  // of P (columns of a), AVX2 tiles
constexpr std::int64_t kTileCols = 4;  // of P (columns of b), AVX2 tiles
constexpr std::int64_t kWideRows = 16;  // AVX-512 tiles (and 8-row ones at the edge)
constexpr std::int64_t kWideCols = 8;

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

inline bool wide_tiles_available() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

// One R x 8 tile of P (R = 8 H: H 8-wide vectors of a per row) over rows [0, n).
template <int H>
__attribute__((target("avx512f"))) inline void tile_wide(const double* a, std::int64_t lda,
                                                         const double* b, std::int64_t ldb,
                                                         std::int64_t n, double* p,
                                                         std::int64_t ldp) {
  __m512d c[kWideCols][H];
  for (int j = 0; j < kWideCols; ++j) {
    for (int h = 0; h < H; ++h) c[j][h] = _mm512_loadu_pd(p + j * ldp + 8 * h);
  }
  for (std::int64_t r = 0; r < n; ++r) {
    const double* ar = a + r * lda;
    const double* br = b + r * ldb;
    __m512d av[H];
    for (int h = 0; h < H; ++h) av[h] = _mm512_loadu_pd(ar + 8 * h);
#pragma GCC unroll 8
    for (int j = 0; j < kWideCols; ++j) {
      const __m512d v = _mm512_set1_pd(br[j]);
      for (int h = 0; h < H; ++h) c[j][h] = _mm512_fmadd_pd(av[h], v, c[j][h]);
    }
  }
  for (int j = 0; j < kWideCols; ++j) {
    for (int h = 0; h < H; ++h) _mm512_storeu_pd(p + j * ldp + 8 * h, c[j][h]);
  }
}

#else

inline bool fma_tiles_available() { return false; }
inline bool wide_tiles_available() { return false; }

template <int H>
inline void tile_wide(const double*, std::int64_t, const double*, std::int64_t, std::int64_t,
                      double*, std::int64_t) {}

inline void tile_8x4(const double*, std::int64_t, const double*, std::int64_t, std::int64_t,
                     double*, std::int64_t) {}

#endif

// Rows per pass over the tiles: ~96 KiB of both blocks, so that the rows a pass reads stay
// near L1 while every tile sweeps them (measured with 64 columns on Zen + AVX2: 48-113 rows
// are equally fast, 18-20 GFMA/s; 227 rows 10% slower, 1024 rows 2x slower). The wide tiles
// hold twice the sums and want longer passes to spread their loads and stores: 128 rows
// (measured on Zen 5: the same as ~85 at 65 columns, 10-30% faster than 16-45 rows at
// 128-384 columns). The split into passes does not change the sums: every tile goes on from
// the partial sums the previous pass stored.
inline std::int64_t pass_rows(std::int64_t lda, std::int64_t ldb, bool wide = false) {
  if (wide) return 128;
  return std::clamp<std::int64_t>(std::int64_t{12288} / (lda + ldb), 16, 512);
}

// Rows gathered per block: ~128 KiB of float64, so the block is still in L2 when its passes
// run; at least one whole pass of the wide tiles.
inline std::int64_t block_rows(std::int64_t ld, bool wide = false) {
  const std::int64_t n = std::clamp<std::int64_t>((std::int64_t{1} << 14) / ld, 64, 1024);
  return wide ? std::max<std::int64_t>(n, 128) : n;
}

// P += aᵀ b over n rows for P columns [0, nj) and rows [0, ni) (all tiles), or only the
// tiles reaching i >= j (`lower`); `wide`: the AVX-512 tiles where the CPU has them (the same
// sums to the bit), else the AVX2 ones.
inline void accumulate(const double* a, std::int64_t lda, std::int64_t ni, const double* b,
                       std::int64_t ldb, std::int64_t nj, std::int64_t n, double* p,
                       std::int64_t ldp, bool lower, bool wide = true) {
  const bool use_wide = wide && wide_tiles_available();
  const std::int64_t step = pass_rows(lda, ldb, use_wide);
  const std::int64_t ni8 = round_up(ni, 8);
  for (std::int64_t r0 = 0; r0 < n; r0 += step) {
    const std::int64_t k = std::min(step, n - r0);
    const double* ak = a + r0 * lda;
    const double* bk = b + r0 * ldb;
    if (use_wide) {
      for (std::int64_t j0 = 0; j0 < nj; j0 += kWideCols) {
        std::int64_t i0 = lower ? j0 : 0;
        for (; i0 + kWideRows <= ni8; i0 += kWideRows) {
          tile_wide<2>(ak + i0, lda, bk + j0, ldb, k, p + i0 + j0 * ldp, ldp);
        }
        if (i0 < ni8) tile_wide<1>(ak + i0, lda, bk + j0, ldb, k, p + i0 + j0 * ldp, ldp);
      }
      continue;
    }
    for (std::int64_t j0 = 0; j0 < nj; j0 += kTileCols) {
      const std::int64_t i_first = lower ? j0 / kTileRows * kTileRows : 0;
      for (std::int64_t i0 = i_first; i0 < ni; i0 += kTileRows) {
        tile_8x4(ak + i0, lda, bk + j0, ldb, k, p + i0 + j0 * ldp, ldp);
      }
    }
  }
}

}  // namespace gffmerge::kernels::blocks
