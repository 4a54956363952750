// Tiled second-moment accumulation for the CUDA kernels (no torch here).
//
//   acc[Da, Db] += sum_r w_r a~_r b~_r^T      (gram: a = b = x~, only tiles with ti >= tj)
//
// A kernel block owns one TILE x TILE tile of acc and one contiguous split of the rows. It
// gathers KROWS rows at a time through the index into shared memory (cast to float64,
// weights folded into the a side) and accumulates an M x M micro-tile per thread in
// registers. Each block writes its tile to its own slot of a partial buffer; a second kernel
// sums the splits in order and adds the result to acc (mirrored for a Gram). No float atomics
// are used, so the result depends only on the shapes, not on the order blocks run in.
//
// The kernels are written as phases separated by block barriers, and every phase is a
// host/device function of (plan, thread id). tools/emulate_cuda_kernels.cpp runs the same
// phases on the CPU, thread by thread, so the tiling and indexing are tested without a GPU.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "convert.h"
#include "gram.h"

#if defined(__CUDA_ARCH__)
#define GFFMERGE_UNROLL _Pragma("unroll")
#else
#define GFFMERGE_UNROLL
#endif

namespace gffmerge::kernels::tiles {

using std::int64_t;

constexpr int kThreads = 256;  // a 16 x 16 grid of threads
constexpr int kSide = 16;
constexpr int kStageDoubles = 1024;  // per operand and stage: KROWS * TILE

template <int M>
struct Geometry {
  static constexpr int tile = kSide * M;             // 32 (M = 2) or 64 (M = 4)
  static constexpr int rows = kStageDoubles / tile;  // KROWS: 32 or 16
  // Odd pitch (in doubles): column-wise stores of a column-major x hit distinct banks.
  static constexpr int lds = tile + 1;
};

struct Operand {
  Matrix m;
  Index index;
  bool ones = false;          // x~ = [x, 1]
  bool rows_fastest = false;  // consecutive threads load consecutive rows (x column-major)
  int64_t cols = 0;           // m.cols + ones
};

struct Plan {
  Operand a;  // rows of acc; carries the weights
  Operand b;  // columns of acc
  Weights weight;
  int64_t count = 0;
  bool triangular = false;  // Gram: only tiles on and below the diagonal, mirrored at the end
  int tile = 64;
  int64_t tiles_a = 0;
  int64_t tiles_b = 0;
  int64_t num_tiles = 0;
  int64_t splits = 1;
  double* partial = nullptr;  // [splits][num_tiles][tile][tile]
  double* acc = nullptr;      // [a.cols][b.cols], row-major
};

struct Block {
  int64_t row0 = 0;  // first acc row of the tile
  int64_t col0 = 0;  // first acc column of the tile
  int64_t lo = 0;    // rows (gathered positions) [lo, hi) of this split
  int64_t hi = 0;
};

// ---- host-side planning (also used by the emulator) -------------------------------------

// About 2048 blocks in flight is ~8 waves of 2 blocks per SM on an H100; a split below
// 512 rows would spend more on its partial tile than on its rows. Depends only on the shapes.
constexpr int64_t kTargetBlocks = 2048;
constexpr int64_t kMinRowsPerSplit = 512;
constexpr int64_t kMaxSplits = 1024;
constexpr int64_t kMaxPartialDoubles = int64_t{1} << 25;  // 256 MiB

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline Operand make_operand(const Matrix& m, const Index& index, bool ones) {
  Operand o;
  o.m = m;
  o.index = index;
  o.ones = ones;
  o.cols = m.cols + (ones ? 1 : 0);
  o.rows_fastest = index.data == nullptr && m.row_stride == 1 && m.col_stride != 1 && m.rows > 1;
  return o;
}

inline Plan make_plan(const Operand& a, const Operand& b, const Weights& weight, int64_t count,
                      bool triangular) {
  Plan p;
  p.a = a;
  p.b = b;
  p.weight = weight;
  p.count = count;
  p.triangular = triangular;
  p.tile = (a.cols <= 32 && b.cols <= 32) ? 32 : 64;
  p.tiles_a = ceil_div(a.cols, p.tile);
  p.tiles_b = ceil_div(b.cols, p.tile);
  p.num_tiles = triangular ? p.tiles_a * (p.tiles_a + 1) / 2 : p.tiles_a * p.tiles_b;
  if (p.num_tiles == 0) return p;
  int64_t s = ceil_div(kTargetBlocks, p.num_tiles);
  s = std::min(s, ceil_div(count, kMinRowsPerSplit));
  s = std::min(s, kMaxSplits);
  s = std::min(s, kMaxPartialDoubles / (p.num_tiles * p.tile * p.tile));
  p.splits = std::max<int64_t>(s, 1);
  return p;
}

inline Plan gram_plan(const Matrix& x, const Index& index, int64_t count, const Weights& weight,
                      bool augment) {
  const Operand o = make_operand(x, index, augment);
  return make_plan(o, o, weight, count, true);
}

inline Plan cross_plan(const Matrix& x, const Matrix& y, const Index& index_x,
                       const Index& index_y, int64_t count, const Weights& weight,
                       bool augment_x) {
  return make_plan(make_operand(x, index_x, augment_x), make_operand(y, index_y, false), weight,
                   count, false);
}

inline int64_t partial_doubles(const Plan& p) {
  return p.splits * p.num_tiles * p.tile * p.tile;
}

// ---- per-block phases -----------------------------------------------------------------------

using kernels::index_at;
using kernels::weight_at;

GFFMERGE_HD double load(const Matrix& m, int64_t offset) {
  switch (m.dtype) {
    case DType::f32: return to_double(static_cast<const float*>(m.data)[offset]);
    case DType::f64: return static_cast<const double*>(m.data)[offset];
    case DType::bf16: return to_double(static_cast<const BFloat16Bits*>(m.data)[offset]);
    case DType::f16: return to_double(static_cast<const HalfBits*>(m.data)[offset]);
  }
  return 0.0;
}

// Column c of row `row` of o~: x, then the ones column, then zeros (tile padding).
GFFMERGE_HD double element(const Operand& o, int64_t row, int64_t c) {
  if (c < o.m.cols) return load(o.m, row * o.m.row_stride + c * o.m.col_stride);
  return (o.ones && c == o.m.cols) ? 1.0 : 0.0;
}

GFFMERGE_HD Block block_of(const Plan& p, int64_t tile_id, int64_t split) {
  int64_t ti = 0;
  int64_t tj = 0;
  if (p.triangular) {
    ti = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(tile_id) + 1.0) - 1.0) * 0.5);
    while (ti > 0 && ti * (ti + 1) / 2 > tile_id) --ti;
    while ((ti + 1) * (ti + 2) / 2 <= tile_id) ++ti;
    tj = tile_id - ti * (ti + 1) / 2;
  } else {
    ti = tile_id / p.tiles_b;
    tj = tile_id % p.tiles_b;
  }
  Block b;
  b.row0 = ti * p.tile;
  b.col0 = tj * p.tile;
  b.lo = p.count * split / p.splits;
  b.hi = p.count * (split + 1) / p.splits;
  return b;
}

// Phase 1 (threads < KROWS): the source rows and weights of the next n <= KROWS positions.
template <int M>
GFFMERGE_HD void stage_rows(const Plan& p, int64_t first, int n, int64_t* rows_a,
                            int64_t* rows_b, double* w, int tid) {
  if (tid >= n) return;
  const int64_t pos = first + tid;
  rows_a[tid] = index_at(p.a.index, pos);
  rows_b[tid] = index_at(p.b.index, pos);
  w[tid] = p.weight.data ? weight_at(p.weight, pos) : 1.0;
}

// Phase 2: the stage's KROWS x TILE slab of one operand into shared memory (zeros past n
// rows and past the operand's columns).
template <int M>
GFFMERGE_HD void load_operand(const Operand& o, int64_t col0, int n, const int64_t* rows,
                              const double* w, double* s, int tid) {
  using G = Geometry<M>;
  for (int e = tid; e < G::rows * G::tile; e += kThreads) {
    const int r = o.rows_fastest ? e % G::rows : e / G::tile;
    const int c = o.rows_fastest ? e / G::rows : e % G::tile;
    double v = 0.0;
    if (r < n) {
      v = element(o, rows[r], col0 + c);
      if (w) v *= w[r];
    }
    s[r * G::lds + c] = v;
  }
}

// Phase 3: thread (ty, tx) owns entries (ty + 16 a, tx + 16 b) of the tile. Reads of sb are
// 16 consecutive doubles per half-warp and reads of sa are broadcasts: no bank conflicts.
template <int M>
GFFMERGE_HD void multiply_stage(const double* sa, const double* sb, int tid, double (&acc)[M][M]) {
  using G = Geometry<M>;
  const int ty = tid / kSide;
  const int tx = tid % kSide;
  GFFMERGE_UNROLL
  for (int k = 0; k < G::rows; ++k) {
    double av[M];
    double bv[M];
    GFFMERGE_UNROLL
    for (int i = 0; i < M; ++i) av[i] = sa[k * G::lds + ty + kSide * i];
    GFFMERGE_UNROLL
    for (int j = 0; j < M; ++j) bv[j] = sb[k * G::lds + tx + kSide * j];
    GFFMERGE_UNROLL
    for (int i = 0; i < M; ++i) {
      GFFMERGE_UNROLL
      for (int j = 0; j < M; ++j) acc[i][j] += av[i] * bv[j];
    }
  }
}

// Phase 4: the block's tile into its slot of the partial buffer.
template <int M>
GFFMERGE_HD void store_partial(const Plan& p, int64_t tile_id, int64_t split, int tid,
                               const double (&acc)[M][M]) {
  constexpr int T = Geometry<M>::tile;
  const int ty = tid / kSide;
  const int tx = tid % kSide;
  double* out = p.partial + (split * p.num_tiles + tile_id) * T * T;
  GFFMERGE_UNROLL
  for (int i = 0; i < M; ++i) {
    GFFMERGE_UNROLL
    for (int j = 0; j < M; ++j) out[(ty + kSide * i) * T + tx + kSide * j] = acc[i][j];
  }
}

// Second kernel, one thread per entry e of acc: the splits summed in order, then added to acc
// (and, for a Gram, the same value to the mirrored entry, so the increment is exactly
// symmetric).
GFFMERGE_HD void reduce_entry(const Plan& p, int64_t e) {
  const int64_t db = p.b.cols;
  const int64_t i = e / db;
  const int64_t j = e % db;
  if (p.triangular && j > i) return;
  const int64_t T = p.tile;
  const int64_t ti = i / T;
  const int64_t tj = j / T;
  const int64_t t = p.triangular ? ti * (ti + 1) / 2 + tj : ti * p.tiles_b + tj;
  const double* src = p.partial + t * T * T + (i % T) * T + (j % T);
  const int64_t stride = p.num_tiles * T * T;
  double v = 0.0;
  for (int64_t s = 0; s < p.splits; ++s) v += src[s * stride];
  p.acc[i * db + j] += v;
  if (p.triangular && i != j) p.acc[j * db + i] += v;
}

}  // namespace gffmerge::kernels::tiles
