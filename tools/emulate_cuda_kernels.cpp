// Runs the CUDA kernels of csrc/kernels/*.cu on the CPU: the same phase functions
// (moment_tiles.h, cholesky_steps.h), called thread by thread between emulated barriers, with
// the same launch geometry. cuSOLVER potrfBatched and cuBLAS trsmBatched are replaced by
// textbook column-major implementations of their documented contracts, so the row-major /
// column-major reasoning of cholesky.cu is checked too.
//
//   c++ -std=c++20 -O2 -Icsrc/kernels tools/emulate_cuda_kernels.cpp -o emulate && ./emulate
//
// Inputs live in buffers pre-filled with NaN, so a read outside the tensor's elements (a wrong
// stride or index) and a partial-tile slot that no block writes both show up as NaN.
// tests/test_ops_cuda.py builds and runs this on every test run, GPU or not.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cholesky_steps.h"
#include "moment_tiles.h"

namespace k = gffmerge::kernels;
namespace tiles = gffmerge::kernels::tiles;
namespace chol = gffmerge::kernels::chol;
using std::int64_t;

namespace {

int failures = 0;
int checks = 0;

void fail(const std::string& what) {
  if (++failures <= 20) std::printf("FAIL: %s\n", what.c_str());
}

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- emulated launches ----------------------------------------------------------------------

template <int M>
void emulate_moment_tiles(const tiles::Plan& p) {
  using G = tiles::Geometry<M>;
  std::vector<double> sa(G::rows * G::lds), sb(G::rows * G::lds), w(G::rows);
  std::vector<int64_t> ra(G::rows), rb(G::rows);
  std::vector<std::array<std::array<double, M>, M>> acc(tiles::kThreads);
  for (int64_t split = 0; split < p.splits; ++split) {
    for (int64_t t = 0; t < p.num_tiles; ++t) {
      const tiles::Block blk = tiles::block_of(p, t, split);
      // Shared memory starts as garbage on a GPU.
      std::fill(sa.begin(), sa.end(), kNaN);
      std::fill(sb.begin(), sb.end(), kNaN);
      for (auto& a : acc) {
        for (auto& row : a) row.fill(0.0);
      }
      const double* wa = p.weight.data ? w.data() : nullptr;
      for (int64_t first = blk.lo; first < blk.hi; first += G::rows) {
        const int64_t left = blk.hi - first;
        const int n = left < G::rows ? static_cast<int>(left) : G::rows;
        for (int tid = 0; tid < tiles::kThreads; ++tid) {
          tiles::stage_rows<M>(p, first, n, ra.data(), rb.data(), w.data(), tid);
        }
        for (int tid = 0; tid < tiles::kThreads; ++tid) {
          tiles::load_operand<M>(p.a, blk.row0, n, ra.data(), wa, sa.data(), tid);
          tiles::load_operand<M>(p.b, blk.col0, n, rb.data(), nullptr, sb.data(), tid);
        }
        for (int tid = 0; tid < tiles::kThreads; ++tid) {
          double (&a)[M][M] = *reinterpret_cast<double(*)[M][M]>(acc[tid].data());
          tiles::multiply_stage<M>(sa.data(), sb.data(), tid, a);
        }
      }
      for (int tid = 0; tid < tiles::kThreads; ++tid) {
        const double (&a)[M][M] = *reinterpret_cast<const double(*)[M][M]>(acc[tid].data());
        tiles::store_partial<M>(p, t, split, tid, a);
      }
    }
  }
}

void emulate_accumulate(tiles::Plan p, double* acc) {
  if (p.count <= 0 || p.num_tiles == 0) return;
  std::vector<double> partial(static_cast<std::size_t>(tiles::partial_doubles(p)), kNaN);
  p.acc = acc;
  p.partial = partial.data();
  if (p.tile == tiles::Geometry<2>::tile) {
    emulate_moment_tiles<2>(p);
  } else {
    emulate_moment_tiles<4>(p);
  }
  for (int64_t e = 0; e < p.a.cols * p.b.cols; ++e) tiles::reduce_entry(p, e);
}

// ---- rows in NaN-filled buffers --------------------------------------------------------------

std::uint16_t half_bits(std::mt19937_64& rng) {
  // normal halfs of magnitude 2^-5 .. 2^5
  const std::uint16_t sign = (rng() & 1) << 15;
  const std::uint16_t exp = static_cast<std::uint16_t>(10 + rng() % 11) << 10;
  return sign | exp | static_cast<std::uint16_t>(rng() & 0x3ff);
}

struct Rows {
  std::vector<unsigned char> bytes;
  k::Matrix m;
  std::vector<double> values;  // [rows][cols] as float64, for the reference
};

enum class Layout { row_major, column_major, strided, expanded_rows, expanded_cols };

Rows make_rows(std::mt19937_64& rng, int64_t rows, int64_t cols, k::DType dtype, Layout layout) {
  const std::size_t esize = dtype == k::DType::f64 ? 8 : dtype == k::DType::f32 ? 4 : 2;
  int64_t rs = cols, cs = 1, storage = rows * cols;
  switch (layout) {
    case Layout::row_major: break;
    case Layout::column_major: rs = 1; cs = rows; break;
    case Layout::strided: rs = 3 * cols + 1; cs = 2; storage = rows * rs; break;
    case Layout::expanded_rows: rs = 0; storage = cols; break;
    case Layout::expanded_cols: cs = 0; rs = 1; storage = rows; break;
  }
  const int64_t guard = 7;
  Rows r;
  r.bytes.resize(static_cast<std::size_t>(storage + 2 * guard) * esize);
  // NaN everywhere first: in every dtype, all-ones bytes are a NaN.
  std::memset(r.bytes.data(), 0xff, r.bytes.size());
  unsigned char* base = r.bytes.data() + guard * esize;
  r.values.assign(static_cast<std::size_t>(rows * cols), 0.0);
  std::normal_distribution<double> normal;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t off = i * rs + j * cs;
      unsigned char* at = base + off * esize;
      // expanded layouts alias elements: the first write wins, later ones read it back
      const bool first = (layout == Layout::expanded_rows && i > 0) ||
                                 (layout == Layout::expanded_cols && j > 0)
                             ? false
                             : true;
      if (first) {
        switch (dtype) {
          case k::DType::f64: {
            const double v = normal(rng);
            std::memcpy(at, &v, 8);
            break;
          }
          case k::DType::f32: {
            const float v = static_cast<float>(normal(rng));
            std::memcpy(at, &v, 4);
            break;
          }
          case k::DType::bf16: {
            const float v = static_cast<float>(normal(rng));
            std::uint32_t u;
            std::memcpy(&u, &v, 4);
            const std::uint16_t b = static_cast<std::uint16_t>(u >> 16);
            std::memcpy(at, &b, 2);
            break;
          }
          case k::DType::f16: {
            const std::uint16_t b = half_bits(rng);
            std::memcpy(at, &b, 2);
            break;
          }
        }
      }
      k::Matrix one{at, dtype, 1, 1, 0, 0};
      r.values[i * cols + j] = tiles::load(one, 0);
    }
  }
  r.m = {base, dtype, rows, cols, rs, cs};
  return r;
}

struct IndexBuf {
  std::vector<int64_t> i64;
  std::vector<std::int32_t> i32;
  k::Index ix;
  std::vector<int64_t> values;
};

IndexBuf make_index(std::mt19937_64& rng, int64_t count, int64_t rows, int kind) {
  IndexBuf b;
  b.values.resize(static_cast<std::size_t>(count));
  for (auto& v : b.values) v = static_cast<int64_t>(rng() % static_cast<std::uint64_t>(rows));
  const int64_t stride = kind == 3 ? 2 : 1;  // 1: int64, 2: int32, 3: strided int64
  if (kind == 2) {
    b.i32.assign(b.values.begin(), b.values.end());
    b.ix = {b.i32.data(), true, 1};
  } else {
    b.i64.assign(static_cast<std::size_t>(count * stride), -12345);
    for (int64_t p = 0; p < count; ++p) b.i64[p * stride] = b.values[p];
    b.ix = {b.i64.data(), false, stride};
  }
  return b;
}

struct WeightBuf {
  std::vector<double> f64;
  std::vector<float> f32;
  k::Weights w;
  std::vector<double> values;
};

WeightBuf make_weights(std::mt19937_64& rng, int64_t count, int kind) {
  WeightBuf b;
  std::normal_distribution<double> normal;
  if (kind == 0) {
    b.values.assign(static_cast<std::size_t>(count), 1.0);
    return b;
  }
  const int64_t stride = kind == 2 ? 3 : 1;
  if (kind == 1) {
    b.f32.resize(static_cast<std::size_t>(count));
    for (auto& v : b.f32) v = static_cast<float>(normal(rng));
    b.values.assign(b.f32.begin(), b.f32.end());
    b.w = {b.f32.data(), true, 1};
  } else {
    b.f64.assign(static_cast<std::size_t>(count * stride), kNaN);
    for (int64_t p = 0; p < count; ++p) {
      b.f64[p * stride] = normal(rng);
      b.values.push_back(b.f64[p * stride]);
    }
    b.w = {b.f64.data(), false, stride};
  }
  return b;
}

// ---- moments ---------------------------------------------------------------------------------

void check_increment(const std::string& name, const std::vector<double>& before,
                     const std::vector<double>& after, const std::vector<double>& expected,
                     const std::vector<double>& scale) {
  ++checks;
  for (std::size_t e = 0; e < after.size(); ++e) {
    const double inc = after[e] - before[e];
    const double tol = 1e-12 * scale[e] + 4e-16 * (std::fabs(before[e]) + std::fabs(expected[e])) + 1e-300;
    if (!(std::fabs(inc - expected[e]) <= tol)) {
      fail(name + ": entry " + std::to_string(e) + " increment " + std::to_string(inc) +
           " expected " + std::to_string(expected[e]));
      return;
    }
  }
}

void moment_case(std::mt19937_64& rng, bool gram, int64_t count, int64_t dx, int64_t dy,
                 int dtx, int dty, int layout_x, int layout_y, int index_kind, int weight_kind,
                 bool augment) {
  const auto dt = [](int i) { return static_cast<k::DType>(i); };
  const int64_t rows_x = index_kind ? 1 + static_cast<int64_t>(rng() % 700) : count;
  const int64_t rows_y = index_kind ? 1 + static_cast<int64_t>(rng() % 700) : count;
  Rows x = make_rows(rng, rows_x, dx, dt(dtx), static_cast<Layout>(layout_x));
  Rows y = gram ? Rows{} : make_rows(rng, rows_y, dy, dt(dty), static_cast<Layout>(layout_y));
  IndexBuf ix, iy;
  if (index_kind) {
    ix = make_index(rng, count, rows_x, index_kind);
    if (!gram) iy = make_index(rng, count, rows_y, 1 + static_cast<int>(rng() % 3));
  }
  WeightBuf w = make_weights(rng, count, weight_kind);
  const int64_t da = dx + (augment ? 1 : 0);
  const int64_t db = gram ? da : dy;
  const tiles::Plan plan =
      gram ? tiles::gram_plan(x.m, ix.ix, count, w.w, augment)
           : tiles::cross_plan(x.m, y.m, ix.ix, iy.ix, count, w.w, augment);

  std::vector<double> expected(static_cast<std::size_t>(da * db), 0.0), scale = expected;
  for (int64_t p = 0; p < count; ++p) {
    const int64_t r = index_kind ? ix.values[p] : p;
    const int64_t s = gram ? r : (index_kind && !iy.values.empty() ? iy.values[p] : p);
    for (int64_t i = 0; i < da; ++i) {
      const double xi = i < dx ? x.values[r * dx + i] : 1.0;
      for (int64_t j = 0; j < db; ++j) {
        const double yj = gram ? (j < dx ? x.values[s * dx + j] : 1.0) : y.values[s * dy + j];
        expected[i * db + j] += w.values[p] * xi * yj;
        scale[i * db + j] += std::fabs(w.values[p] * xi * yj);
      }
    }
  }
  std::normal_distribution<double> normal;
  std::vector<double> before(expected.size());
  for (auto& v : before) v = 1e3 * normal(rng);  // not symmetric
  std::vector<double> after = before;
  emulate_accumulate(plan, after.data());
  const std::string name = std::string(gram ? "gram" : "cross") + " count=" +
                           std::to_string(count) + " dx=" + std::to_string(dx) + " dy=" +
                           std::to_string(dy) + " dtype=" + std::to_string(dtx) + "/" +
                           std::to_string(dty) + " layout=" + std::to_string(layout_x) + "/" +
                           std::to_string(layout_y) + " index=" + std::to_string(index_kind) +
                           " weight=" + std::to_string(weight_kind) +
                           " augment=" + std::to_string(augment) +
                           " tile=" + std::to_string(plan.tile) +
                           " splits=" + std::to_string(plan.splits);
  check_increment(name, before, after, expected, scale);
  if (gram) {  // symmetric start -> exactly symmetric result
    ++checks;
    std::vector<double> sym(expected.size());
    for (int64_t i = 0; i < da; ++i) {
      for (int64_t j = 0; j <= i; ++j) sym[i * da + j] = sym[j * da + i] = normal(rng);
    }
    emulate_accumulate(plan, sym.data());
    for (int64_t i = 0; i < da; ++i) {
      for (int64_t j = 0; j < i; ++j) {
        if (sym[i * da + j] != sym[j * da + i]) {
          fail(name + ": not exactly symmetric");
          i = da;
          break;
        }
      }
    }
  }
}

void moments(std::mt19937_64& rng) {
  const int64_t dims[] = {1, 2, 5, 16, 31, 32, 33, 63, 64, 65, 100, 130};
  const int64_t counts[] = {0, 1, 3, 17, 40, 513, 3000};
  int n = 0;
  for (int round = 0; round < 160; ++round) {
    const bool gram = round % 2 == 0;
    const int64_t count = counts[rng() % 7];
    moment_case(rng, gram, count, dims[rng() % 12], dims[rng() % 12], static_cast<int>(rng() % 4),
                static_cast<int>(rng() % 4), static_cast<int>(rng() % 5),
                static_cast<int>(rng() % 5), count > 0 ? static_cast<int>(rng() % 4) : 0,
                static_cast<int>(rng() % 3), rng() % 2 == 0);
    ++n;
  }
  // Many splits, and the triangular tile decode past 3 tiles per side.
  moment_case(rng, true, 40000, 20, 0, 0, 0, 0, 0, 0, 2, true);
  moment_case(rng, true, 700, 250, 0, 3, 0, 1, 0, 2, 1, true);
  moment_case(rng, false, 2000, 130, 70, 2, 1, 2, 1, 3, 1, true);
  std::printf("moments: %d random cases + 3 fixed\n", n);
  // plan invariants
  ++checks;
  for (int64_t d = 1; d < 300; d += 7) {
    for (int64_t c : {int64_t{1}, int64_t{600}, int64_t{100000}, int64_t{10000000}}) {
      k::Matrix m{nullptr, k::DType::f32, c, d, d, 1};
      const tiles::Plan p = tiles::gram_plan(m, {}, c, {}, false);
      if (p.splits < 1 || p.splits > tiles::kMaxSplits || p.splits > c ||
          p.num_tiles != p.tiles_a * (p.tiles_a + 1) / 2 || p.tiles_a * p.tile < d) {
        fail("plan invariants at d=" + std::to_string(d));
      }
      for (int64_t t = 0; t < p.num_tiles; ++t) {
        const tiles::Block b = tiles::block_of(p, t, 0);
        if (b.col0 > b.row0 || b.row0 >= p.tiles_a * p.tile) fail("triangular decode");
      }
    }
  }
}

// ---- Cholesky ----------------------------------------------------------------------------------

// LAPACK dpotrf contract, uplo = U, column-major: A = U^T U with U in the upper triangle.
int potrf_upper(int64_t n, double* a, int64_t lda) {
  for (int64_t j = 0; j < n; ++j) {
    double d = a[j + j * lda];
    for (int64_t q = 0; q < j; ++q) d -= a[q + j * lda] * a[q + j * lda];
    if (!(d > 0)) return static_cast<int>(j + 1);
    d = std::sqrt(d);
    a[j + j * lda] = d;
    for (int64_t i = j + 1; i < n; ++i) {
      double v = a[j + i * lda];
      for (int64_t q = 0; q < j; ++q) v -= a[q + j * lda] * a[q + i * lda];
      a[j + i * lda] = v / d;
    }
  }
  return 0;
}

// BLAS dtrsm contract, side = R, uplo = U, diag = N: B (m x n) := B op(A)^-1, column-major.
void trsm_right_upper(bool trans, int64_t m, int64_t n, const double* a, int64_t lda, double* b,
                      int64_t ldb) {
  const auto A = [&](int64_t i, int64_t j) { return a[i + j * lda]; };
  for (int64_t r = 0; r < m; ++r) {
    // row r of B: solve x op(A) = b_r
    std::vector<double> x(static_cast<std::size_t>(n));
    if (!trans) {  // x U = b: columns left to right
      for (int64_t j = 0; j < n; ++j) {
        double v = b[r + j * ldb];
        for (int64_t q = 0; q < j; ++q) v -= x[q] * A(q, j);
        x[j] = v / A(j, j);
      }
    } else {  // x U^T = b: (U^T)(q, j) = U(j, q), nonzero for q >= j; right to left
      for (int64_t j = n - 1; j >= 0; --j) {
        double v = b[r + j * ldb];
        for (int64_t q = j + 1; q < n; ++q) v -= x[q] * A(j, q);
        x[j] = v / A(j, j);
      }
    }
    for (int64_t j = 0; j < n; ++j) b[r + j * ldb] = x[j];
  }
}

// The launch sequence of gpu::cholesky_solve with its kernels emulated.
// batched: the rescue path of large n (cuSOLVER on a scratch batch), else the rescue kernel.
void emulate_cholesky(chol::Params p, bool batched) {
  const int64_t L = p.batch, n = p.n, kk = p.k;
  std::vector<double> a0(static_cast<std::size_t>(L * n * n)), scale(L), scratch(L * n * kk, kNaN);
  std::vector<double*> pa(L, nullptr), pb(L, nullptr), pw(L, nullptr);
  std::vector<double> w(static_cast<std::size_t>(L * n * n), kNaN);
  std::vector<std::int32_t> info_w(L, -9);
  p.a0 = a0.data();
  p.scale = scale.data();
  p.scratch = scratch.data();
  p.ptr_a = pa.data();
  p.ptr_b = pb.data();
  p.w = w.data();
  p.ptr_w = pw.data();
  p.info_w = info_w.data();
  std::memcpy(p.a0, p.a, a0.size() * sizeof(double));
  const int nt = chol::kThreads;
  std::vector<double> red(nt);
  for (int64_t l = 0; l < L; ++l) {  // prepare_kernel
    for (int tid = 0; tid < nt; ++tid) chol::diag_partial(p, l, tid, nt, red.data());
    for (int width = nt / 2; width > 0; width /= 2) {
      for (int tid = 0; tid < nt; ++tid) chol::reduce_step(red.data(), tid, width);
    }
    chol::prepare_finish(p, l, red.data());
  }
  for (int64_t l = 0; l < L; ++l) p.info[l] = potrf_upper(n, p.ptr_a[l], n);  // potrfBatched
  for (int s = 0; batched && s < p.nsteps; ++s) {  // fill, potrfBatched, accept
    for (int64_t l = 0; l < L; ++l) {
      for (int tid = 0; tid < nt; ++tid) chol::retry_fill(p, l, s, tid, nt);
    }
    for (int64_t l = 0; l < L; ++l) p.info_w[l] = potrf_upper(n, p.ptr_w[l], n);
    for (int64_t l = 0; l < L; ++l) {
      for (int tid = 0; tid < nt; ++tid) chol::retry_accept_copy(p, l, tid, nt);
      chol::retry_accept_record(p, l, s);
    }
  }
  if (p.nsteps > 0 && !batched) {  // rescue_kernel
    {
      std::vector<double> col(static_cast<std::size_t>(n), kNaN);
      for (int64_t l = 0; l < L; ++l) {
        if (p.info[l] == 0) continue;
        chol::RescueShared sh{-1};
        for (int s = 0; s < p.nsteps; ++s) {
          const double jit = p.steps[s] * p.scale[l];
          for (int tid = 0; tid < nt; ++tid) chol::rescue_load(p, l, jit, tid, nt);
          int status = 0;
          for (int64_t j = 0; j < n; ++j) {
            chol::rescue_pivot(p, l, j, sh);
            status = sh.status;
            if (status != 0) break;
            for (int tid = 0; tid < nt; ++tid) {
              chol::rescue_column(p, l, j, col.data(), tid, nt);
            }
            for (int tid = 0; tid < nt; ++tid) {
              chol::rescue_update(p, l, j, col.data(), tid, nt);
            }
          }
          chol::rescue_record(p, l, status, jit);
          if (status == 0) break;
        }
      }
    }
  }
  for (int64_t l = 0; l < L; ++l) {  // finish_kernel
    for (int tid = 0; tid < nt; ++tid) chol::finish_system(p, l, tid, nt);
  }
  for (const bool transposed : chol::kTrsmTransposed) {  // the cublasDtrsmBatched calls
    for (int64_t l = 0; l < L && kk > 0; ++l) {
      trsm_right_upper(transposed, kk, n, p.ptr_a[l], n, p.ptr_b[l], kk);
    }
  }
}

// Expected info / jitter / solution, row-major, straight from the definition.
struct Expected {
  int info;
  double jitter;
  std::vector<double> x;
};

Expected expected_solve(const double* a, const double* b, int64_t n, int64_t kk,
                        const double* steps, int nsteps) {
  Expected e{0, 0.0, {}};
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::fabs(a[i * n + i]);
  double scale = s / static_cast<double>(n);
  scale = scale > 0 ? scale : 1.0;
  std::vector<double> f(static_cast<std::size_t>(n * n));
  for (int attempt = 0; attempt <= nsteps; ++attempt) {
    const double jit = attempt == 0 ? 0.0 : steps[attempt - 1] * scale;
    // column-major view of the row-major lower triangle, for potrf_upper
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j <= i; ++j) f[j + i * n] = a[i * n + j] + (i == j ? jit : 0.0);
    }
    e.info = potrf_upper(n, f.data(), n);
    e.jitter = jit;
    if (e.info == 0) break;
  }
  if (e.info != 0) return e;
  // solve (L L^T) x = b with L(i, j) = f[j + i n] (j <= i)
  e.x.assign(b, b + n * kk);
  for (int64_t c = 0; c < kk; ++c) {
    for (int64_t i = 0; i < n; ++i) {
      double v = e.x[i * kk + c];
      for (int64_t q = 0; q < i; ++q) v -= f[q + i * n] * e.x[q * kk + c];
      e.x[i * kk + c] = v / f[i + i * n];
    }
    for (int64_t i = n - 1; i >= 0; --i) {
      double v = e.x[i * kk + c];
      for (int64_t q = i + 1; q < n; ++q) v -= f[i + q * n] * e.x[q * kk + c];
      e.x[i * kk + c] = v / f[i + i * n];
    }
  }
  return e;
}

void cholesky(std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  const double steps[] = {1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4};
  int cases = 0;
  for (int round = 0; round < 40; ++round) {
    const int64_t L = 1 + static_cast<int64_t>(rng() % 6);
    const int64_t n = 1 + static_cast<int64_t>(rng() % 40);
    const int64_t kk = static_cast<int64_t>(rng() % 5);
    const int nsteps = round % 5 == 0 ? 0 : 6;
    std::vector<double> a(static_cast<std::size_t>(L * n * n)), b(L * n * kk);
    std::vector<int> kind(L);
    for (int64_t l = 0; l < L; ++l) {
      double* al = a.data() + l * n * n;
      // 0, 1: SPD; 2: rank deficient; 3: indefinite; 4: c [[1, 1], [1, 1 - 1e-13]] (+) c I,
      // which fails plainly and needs jitter > 5e-14 c: the second step (1e-12 c) when
      // the scale is right, another step for most c when it is not.
      kind[l] = static_cast<int>(rng() % 5);
      if (kind[l] == 4 && n < 2) kind[l] = 0;
      if (kind[l] == 4) {
        const double c = std::pow(10.0, static_cast<double>(rng() % 7) - 3.0);
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j <= i; ++j) al[i * n + j] = i == j ? c : 0.0;
        }
        al[1 * n + 0] = c;
        al[1 * n + 1] = c * (1.0 - 1e-13);
        continue;
      }
      const int64_t rank = kind[l] == 2 ? std::max<int64_t>(1, n / 2) : n + 3;
      std::vector<double> g(static_cast<std::size_t>(rank * n));
      for (auto& v : g) v = normal(rng);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double v = 0;
          for (int64_t r = 0; r < rank; ++r) v += g[r * n + i] * g[r * n + j];
          al[i * n + j] = v;
        }
      }
      if (kind[l] == 3) al[0] = -1.0 - std::fabs(al[0]);
    }
    for (int64_t l = 0; l < L; ++l) {  // junk above the diagonal: it must never be read
      double* al = a.data() + l * n * n;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = i + 1; j < n; ++j) al[i * n + j] = kind[l] == 1 ? kNaN : 1e30;
      }
    }
    for (auto& v : b) v = normal(rng);
    const std::vector<double> a_in = a, b_in = b;
    std::vector<std::int32_t> info(L, -7);
    std::vector<double> jitter(L, kNaN);
    chol::Params p;
    p.a = a.data();
    p.b = b.data();
    p.info = info.data();
    p.jitter = jitter.data();
    p.batch = L;
    p.n = n;
    p.k = kk;
    p.nsteps = nsteps;
    for (int s = 0; s < nsteps; ++s) p.steps[s] = steps[s];
    emulate_cholesky(p, round % 2 == 0);
    for (int64_t l = 0; l < L; ++l) {
      ++checks;
      const Expected e =
          expected_solve(a_in.data() + l * n * n, b_in.data() + l * n * kk, n, kk, steps, nsteps);
      const std::string name = "cholesky round " + std::to_string(round) + " system " +
                               std::to_string(l) + " kind " + std::to_string(kind[l]) + " n " +
                               std::to_string(n) + " k " + std::to_string(kk);
      // The rescue kernel and the reference take different summation orders, so a matrix on
      // the edge may pass in one and fail in the other; kinds 0/1 are far from the edge.
      if (kind[l] <= 1 && (info[l] != 0 || jitter[l] != 0.0)) {
        fail(name + ": SPD system not solved plainly, info " + std::to_string(info[l]));
        continue;
      }
      if (kind[l] == 3 && nsteps == 0 && info[l] != 1) fail(name + ": indefinite not flagged");
      if (kind[l] == 4) {
        const double c = a_in[l * n * n];
        const double want = nsteps ? 1e-12 * c : 0.0;
        if (info[l] != (nsteps ? 0 : 2) || std::fabs(jitter[l] - want) > 1e-6 * want) {
          char msg[160];
          std::snprintf(msg, sizeof msg, ": nearly singular: info %d jitter %g, expected %g",
                        info[l], jitter[l], want);
          fail(name + msg);
        }
      }
      if ((info[l] == 0) != (e.info == 0) && kind[l] != 2) {
        fail(name + ": info " + std::to_string(info[l]) + " expected " + std::to_string(e.info));
        continue;
      }
      const double* al = a.data() + l * n * n;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = i + 1; j < n; ++j) {
          if (al[i * n + j] != 0.0) {
            fail(name + ": upper triangle not zero");
            i = n;
            break;
          }
        }
      }
      const double* bl = b.data() + l * n * kk;
      if (info[l] != 0) {
        if (std::memcmp(bl, b_in.data() + l * n * kk, kk * n * sizeof(double)) != 0) {
          fail(name + ": B of a failed system changed");
        }
        continue;
      }
      // (the scales are sums in different orders: equal up to rounding)
      if (kind[l] != 2 && e.info == 0 && !(std::fabs(jitter[l] - e.jitter) <= 1e-13 * e.jitter)) {
        fail(name + ": jitter " + std::to_string(jitter[l]) + " expected " +
             std::to_string(e.jitter));
      }
      // residual of (A + jitter I) x = b against the original lower triangle
      const double* a0 = a_in.data() + l * n * n;
      double worst = 0, norm = 0;
      for (int64_t c = 0; c < kk; ++c) {
        for (int64_t i = 0; i < n; ++i) {
          double v = -b_in[l * n * kk + i * kk + c];
          for (int64_t j = 0; j < n; ++j) {
            const double aij = (j <= i ? a0[i * n + j] : a0[j * n + i]) + (i == j ? jitter[l] : 0.0);
            v += aij * bl[j * kk + c];
            norm = std::max(norm, std::fabs(aij * bl[j * kk + c]));
          }
          worst = std::max(worst, std::fabs(v));
        }
      }
      if (!(worst <= 1e-9 * std::max(norm, 1.0) * static_cast<double>(n))) {
        fail(name + ": residual " + std::to_string(worst));
      }
      // L L^T == A + jitter I on the lower triangle
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j <= i; ++j) {
          double v = 0;
          for (int64_t q = 0; q <= j; ++q) v += al[i * n + q] * al[j * n + q];
          const double want = a0[i * n + j] + (i == j ? jitter[l] : 0.0);
          if (!(std::fabs(v - want) <= 1e-10 * (std::fabs(want) + 1.0) * static_cast<double>(n))) {
            fail(name + ": L L^T != A");
            i = n;
            break;
          }
        }
      }
    }
    ++cases;
  }
  std::printf("cholesky: %d random batches\n", cases);
}

}  // namespace

int main() {
  std::mt19937_64 rng(20240611);
  moments(rng);
  cholesky(rng);
  const int passed = checks - failures;
  std::printf("%d passed, %d failed\n", passed < 0 ? 0 : passed, failures);
  return failures == 0 ? 0 : 1;
}
