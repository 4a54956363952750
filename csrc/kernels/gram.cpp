#include "gram.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#include "block_products.h"
#include "gather_rows.h"

// Resolved against the BLAS inside libtorch_cpu (MKL on x86 wheels) when it exports one; the
// caller falls back to ATen's matmul otherwise. MKL's dsyrk is not exported, dgemm is.
extern "C" {
__attribute__((weak, visibility("default"))) void dgemm_(
    const char* transa, const char* transb, const int* m, const int* n, const int* k,
    const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
    const double* beta, double* c, const int* ldc);
__attribute__((weak, visibility("default"))) int MKL_Set_Num_Threads_Local(int n);
}

namespace gffmerge::kernels {
namespace {

using std::int64_t;

class AlignedDoubles {
 public:
  explicit AlignedDoubles(int64_t n)
      : ptr_(n > 0 ? static_cast<double*>(::operator new[](
                         static_cast<std::size_t>(n) * sizeof(double), std::align_val_t{64}))
                   : nullptr) {}
  ~AlignedDoubles() {
    if (ptr_) ::operator delete[](ptr_, std::align_val_t{64});
  }
  AlignedDoubles(const AlignedDoubles&) = delete;
  AlignedDoubles& operator=(const AlignedDoubles&) = delete;
  double* get() const { return ptr_; }

 private:
  double* ptr_;
};

using rows::GatherFn;
using rows::gather_for;
using rows::index_at;
using rows::weight_at;

// Leading dimension of a float64 buffer: 64-byte rows, and never a multiple of 512 bytes so
// that walking down a column does not hit the same cache sets.
inline int64_t padded_ld(int64_t n) {
  int64_t ld = (n + 7) / 8 * 8;
  if (ld % 64 == 0) ld += 8;
  return ld;
}

// Rows [first, first + n) of x~ into `b` (row-major, leading dimension ld); with weights,
// also w_r * x~_r into `wb`, or in place when wb == b.
void fill_block(const Matrix& x, GatherFn gather, const Index& ix, const Weights& w,
                bool augment, int64_t first, int64_t n, double* b, double* wb, int64_t ld) {
  gather(x, ix, first, n, b, ld);
  const int64_t d = x.cols;
  const int64_t dd = d + (augment ? 1 : 0);
  if (augment) {
    for (int64_t r = 0; r < n; ++r) b[r * ld + d] = 1.0;
  }
  if (w.data) {
    for (int64_t r = 0; r < n; ++r) {
      const double wr = weight_at(w, first + r);
      const double* src = b + r * ld;
      double* dst = wb + r * ld;
      for (int64_t c = 0; c < dd; ++c) dst[c] = wr * src[c];
    }
  }
}

// Measured on Zen 4 + MKL 2024.2 (1 thread, float64): the GEMM rate is flat in the block
// height between 128 and 4096 rows; keep the gathered block near 1 MiB.
int64_t default_block_rows(int64_t ld) {
  return std::clamp<int64_t>((int64_t{1} << 17) / ld, 128, 1024);
}

// Only the column tiles on and below the diagonal are multiplied, so the flops are
// D^2 (1 + tile / D) / 2 instead of D^2. Narrower tiles waste less on the diagonal but make
// thinner GEMMs; 16 wins below ~100 columns, 32 above (64 and recursive halving measured no
// better up to D = 1024).
int64_t default_tile(int64_t D) { return D <= 96 ? 16 : 32; }

// Threads worth using: enough rows each to amortise a private accumulator, and private
// accumulators within ~1 GiB in total.
int threads_for(const Tuning& t, int64_t count, int64_t acc_doubles) {
  if (omp_in_parallel()) return 1;
  int64_t n = std::max(1, t.threads);
  n = std::min<int64_t>(n, std::max<int64_t>(1, count / 256));
  const int64_t budget = (int64_t{1} << 27) / std::max<int64_t>(acc_doubles, 1);
  n = std::min<int64_t>(n, std::max<int64_t>(1, budget));
  return static_cast<int>(n);
}

// Each block GEMM is small; MKL must run it on the calling thread. Inside a team of one (or
// when nested) it would otherwise fork its own threads per call, which under CPU contention
// measured 60x slower.
class SequentialBlas {
 public:
  SequentialBlas() : saved_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SequentialBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(saved_);
  }
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  int saved_;
};

}  // namespace

void gram_accumulate(double* acc, const Matrix& x, const Index& index, int64_t count,
                     const Weights& weight, bool augment, GemmFn gemm, const Tuning& tuning) {
  const int64_t d = x.cols;
  const int64_t D = d + (augment ? 1 : 0);
  // An empty acc (no features, no augment): nothing to add, and a zero-size buffer would
  // hand memset a null pointer.
  if (count <= 0 || D == 0) return;
  const int64_t ld = padded_ld(D);  // of the row blocks and of the partial sums
  // With the register tiles (block_products.h) P is ld x ld and the blocks' padding columns
  // stay zero, so that every tile is whole.
  const bool tiles = tuning.builtin_tiles && blocks::fma_tiles_available();
  const bool wide = tuning.wide_tiles && blocks::wide_tiles_available();
  const int64_t nb = tuning.block_rows > 0 ? tuning.block_rows
                     : tiles                ? blocks::block_rows(ld, wide)
                                            : default_block_rows(ld);
  const int64_t tile = tuning.tile > 0 ? tuning.tile : default_tile(d);
  const int threads = threads_for(tuning, count, D * ld);
  const GatherFn gather = gather_for(x.dtype);
  const bool weighted = weight.data != nullptr;

  // Column-major view: a row block B (n x d, row-major) is the d x n column-major matrix
  // B', and P += B' (W B')^T. Only column tiles on and below the diagonal are multiplied;
  // the lower triangle P(i, j), i >= j, is then added to both acc[i][j] and acc[j][i], so
  // the increment is exactly symmetric.
  // The ones column of x~ is not put through the GEMMs (an odd height there measured ~20%
  // slower at d = 128): its row of P, sum_r w_r [x_r, 1], is summed per block directly.
  const int64_t p_doubles = tiles ? ld * ld : D * ld;
  std::vector<double*> partial(threads, nullptr);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const SequentialBlas sequential;
    AlignedDoubles p(p_doubles);
    AlignedDoubles b(nb * ld);
    AlignedDoubles wb(weighted ? nb * ld : 0);
    AlignedDoubles sums(augment ? 2 * ld : 0);  // per call, per block
    std::memset(p.get(), 0, static_cast<std::size_t>(p_doubles) * sizeof(double));
    if (tiles) {
      std::memset(b.get(), 0, static_cast<std::size_t>(nb * ld) * sizeof(double));
      if (weighted) std::memset(wb.get(), 0, static_cast<std::size_t>(nb * ld) * sizeof(double));
    }
    if (augment) std::memset(sums.get(), 0, static_cast<std::size_t>(ld) * sizeof(double));
    partial[t] = p.get();
    const double* rhs = weighted ? wb.get() : b.get();

    const int64_t lo = count * t / threads;
    const int64_t hi = count * (t + 1) / threads;
    for (int64_t first = lo; first < hi; first += nb) {
      const int64_t n = std::min(nb, hi - first);
      fill_block(x, gather, index, weight, false, first, n, b.get(), wb.get(), ld);
      if (tiles) {
        blocks::accumulate(b.get(), ld, d, rhs, ld, d, n, p.get(), ld, /*lower=*/true,
                           tuning.wide_tiles);
      } else {
        for (int64_t j0 = 0; j0 < d; j0 += tile) {
          const int64_t jn = std::min(tile, d - j0);
          gemm(false, true, d - j0, jn, n, 1.0, b.get() + j0, ld, rhs + j0, ld, 1.0,
               p.get() + j0 + j0 * ld, ld);
        }
      }
      if (augment) {
        double* block = sums.get() + ld;
        std::fill(block, block + D, 0.0);
        for (int64_t r = 0; r < n; ++r) {
          const double* row = rhs + r * ld;
          for (int64_t c = 0; c < d; ++c) block[c] += row[c];
          block[d] += weighted ? weight_at(weight, first + r) : 1.0;
        }
        for (int64_t c = 0; c < D; ++c) sums.get()[c] += block[c];
      }
    }
    if (augment) {
      for (int64_t c = 0; c < D; ++c) p.get()[d + c * ld] = sums.get()[c];
    }
#pragma omp barrier
#pragma omp for schedule(dynamic, 8)
    for (int64_t j = 0; j < D; ++j) {
      for (int64_t i = j; i < D; ++i) {
        double v = 0.0;
        for (int s = 0; s < threads; ++s) v += partial[s][i + j * ld];
        acc[i * D + j] += v;
        if (i != j) acc[j * D + i] += v;
      }
    }
  }
}

void cross_accumulate(double* acc, const Matrix& x, const Matrix& y, const Index& index_x,
                      const Index& index_y, int64_t count, const Weights& weight,
                      bool augment_x, GemmFn gemm, const Tuning& tuning) {
  const int64_t Dx = x.cols + (augment_x ? 1 : 0);
  const int64_t Dy = y.cols;
  // An empty acc: nothing to add. (Dy = 0 would also pass ldc = 0 to dgemm, which BLAS
  // rejects: MKL prints an error, reference BLAS stops the process.)
  if (count <= 0 || Dx == 0 || Dy == 0) return;
  const int64_t ldx = padded_ld(Dx);
  const int64_t ldy = padded_ld(Dy);
  const bool tiles = tuning.builtin_tiles && blocks::fma_tiles_available();
  const bool wide = tuning.wide_tiles && blocks::wide_tiles_available();
  const int64_t nb = tuning.block_rows > 0 ? tuning.block_rows
                     : tiles                ? blocks::block_rows(ldx + ldy, wide)
                                            : default_block_rows(std::max(ldx, ldy));
  const int threads = threads_for(tuning, count, Dx * Dy);
  const GatherFn gather_x = gather_for(x.dtype);
  const GatherFn gather_y = gather_for(y.dtype);
  const Weights none{};

  // Row-major acc[Dx][Dy] is the column-major Dy x Dx matrix acc' += Y_blk^T-products with
  // the weights folded into the x rows. The increment is summed in private zeroed buffers
  // and added to acc once: letting the GEMM accumulate straight into a large acc would round
  // every product at the scale of acc.
  // With the register tiles the partial sums are ldy x ldx (column-major, rows = y columns)
  // and the blocks' padding columns stay zero.
  const int64_t ldp = tiles ? ldy : Dy;
  const int64_t p_doubles = tiles ? ldy * ldx : Dx * Dy;
  std::vector<double*> partial(threads, nullptr);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const SequentialBlas sequential;
    AlignedDoubles p(p_doubles);
    AlignedDoubles bx(nb * ldx);
    AlignedDoubles by(nb * ldy);
    std::memset(p.get(), 0, static_cast<std::size_t>(p_doubles) * sizeof(double));
    if (tiles) {
      std::memset(bx.get(), 0, static_cast<std::size_t>(nb * ldx) * sizeof(double));
      std::memset(by.get(), 0, static_cast<std::size_t>(nb * ldy) * sizeof(double));
    }
    partial[t] = p.get();

    const int64_t lo = count * t / threads;
    const int64_t hi = count * (t + 1) / threads;
    for (int64_t first = lo; first < hi; first += nb) {
      const int64_t n = std::min(nb, hi - first);
      fill_block(x, gather_x, index_x, weight, augment_x, first, n, bx.get(), bx.get(), ldx);
      fill_block(y, gather_y, index_y, none, false, first, n, by.get(), nullptr, ldy);
      if (tiles) {
        blocks::accumulate(by.get(), ldy, Dy, bx.get(), ldx, Dx, n, p.get(), ldp,
                           /*lower=*/false, tuning.wide_tiles);
      } else {
        gemm(false, true, Dy, Dx, n, 1.0, by.get(), ldy, bx.get(), ldx, 1.0, p.get(), Dy);
      }
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t i = 0; i < Dx; ++i) {
      for (int64_t j = 0; j < Dy; ++j) {
        double v = 0.0;
        for (int s = 0; s < threads; ++s) v += partial[s][j + i * ldp];
        acc[i * Dy + j] += v;
      }
    }
  }
}

int64_t first_out_of_range(const Index& index, int64_t count, int64_t bound, int64_t* value) {
  if (!index.data) return -1;
  for (int64_t p = 0; p < count; ++p) {
    const int64_t v = index_at(index, p);
    if (v < 0 || v >= bound) {
      if (value) *value = v;
      return p;
    }
  }
  return -1;
}

namespace {
void call_linked_dgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                       double alpha, const double* a, int64_t lda, const double* b,
                       int64_t ldb, double beta, double* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N';
  const char tb = trans_b ? 'T' : 'N';
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
  dgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
}
}  // namespace

GemmFn linked_dgemm() { return dgemm_ != nullptr ? &call_linked_dgemm : nullptr; }

}  // namespace gffmerge::kernels
