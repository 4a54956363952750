#include "parts_gram.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "gather_rows.h"

namespace gffmerge::kernels {
namespace {

using std::int64_t;

bool same_matrix(const Matrix& a, const Matrix& b) {
  return a.data == b.data && a.dtype == b.dtype && a.rows == b.rows && a.cols == b.cols &&
         a.row_stride == b.row_stride && a.col_stride == b.col_stride;
}

// Rows per pass of the scatter loop: the float64 dense and gathered rows of a block stay in
// L1/L2 while they are scattered.
constexpr int64_t kScatterRows = 256;

// Zeroed float64 scratch for the node-level sums. Kept per thread between calls up to 16 MiB:
// fresh buffers of this size come from mmap and fault their pages in on every call (measured
// ~0.3 ms per call for GNS on 64 ethanol frames, half the scatter pass).
class Scratch {
 public:
  explicit Scratch(size_t n) {
    constexpr size_t kKeep = (size_t{16} << 20) / sizeof(double);
    thread_local std::vector<double> kept;
    std::vector<double>& buf = n <= kKeep ? kept : own_;
    if (buf.size() < n) buf.resize(n);
    std::fill(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n), 0.0);
    data_ = buf.data();
  }
  double* take(int64_t n) {
    double* p = data_ + used_;
    used_ += n;
    return p;
  }

 private:
  std::vector<double> own_;
  double* data_ = nullptr;
  int64_t used_ = 0;
};

struct ScatterSums {
  int64_t d = 0;                // dense columns
  const double* db = nullptr;   // dense rows of the block, [m, d]
  const double* gb = nullptr;   // gates of the block, [k, kScatterRows]
  double* hb = nullptr;         // gathered node rows of the block, [m, widest]
  std::vector<double*> P, c, M;  // per part / per pair (k x k, p < q)
};

// One block of rows: P_q[i_q] += g_q [D, 1], c_q[i_q] += g_q^2, M_pq[i_p] += g_p g_q H_q[i_q].
// Plain multiplies and adds (no FMA): the same roundings on every CPU, vectorised 4-wide where
// AVX2 is there.
__attribute__((always_inline)) inline void scatter_block_impl(const GatheredRows* parts, int k,
                                                               int64_t first, int64_t m,
                                                               const ScatterSums& s) {
  const int64_t d = s.d;
  const int64_t pc = d + 1;
  for (int q = 0; q < k; ++q) {
    const Index& ix = parts[q].index;
    const double* gq = s.gb + q * kScatterRows;
    double* pq = s.P[q];
    double* cq = s.c[q];
    for (int64_t r = 0; r < m; ++r) {
      const int64_t node = rows::index_at(ix, first + r);
      const double g = gq[r];
      double* pr = pq + node * pc;
      const double* dr = s.db + r * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) pr[j] += g * dr[j];
      pr[d] += g;
      cq[node] += g * g;
    }
  }
  for (int q = 1; q < k; ++q) {
    const Matrix& h = parts[q].nodes;
    const int64_t dq = h.cols;
    rows::gather_for(h.dtype)(h, parts[q].index, first, m, s.hb, dq);
    const double* gq = s.gb + q * kScatterRows;
    for (int p = 0; p < q; ++p) {
      const Index& ip = parts[p].index;
      const double* gp = s.gb + p * kScatterRows;
      double* mpq = s.M[p * k + q];
      for (int64_t r = 0; r < m; ++r) {
        const double gg = gp[r] * gq[r];
        double* mr = mpq + rows::index_at(ip, first + r) * dq;
        const double* hr = s.hb + r * dq;
#pragma omp simd
        for (int64_t j = 0; j < dq; ++j) mr[j] += gg * hr[j];
      }
    }
  }
}

__attribute__((target("avx2"))) void scatter_block_avx2(const GatheredRows* parts, int k,
                                                        int64_t first, int64_t m,
                                                        const ScatterSums& s) {
  scatter_block_impl(parts, k, first, m, s);
}

void scatter_block_plain(const GatheredRows* parts, int k, int64_t first, int64_t m,
                         const ScatterSums& s) {
  scatter_block_impl(parts, k, first, m, s);
}

}  // namespace

void parts_gram_accumulate(double* acc, const Matrix& dense, const GatheredRows* parts,
                           int n_parts, int64_t count, bool dense_block, GemmFn gemm,
                           const Tuning& tuning) {
  const int k = std::max(n_parts, 0);
  const int64_t d = dense.data ? dense.cols : 0;
  std::vector<int64_t> off(k);
  int64_t W = d;
  for (int q = 0; q < k; ++q) {
    off[q] = W;
    W += parts[q].nodes.cols;
  }
  const int64_t n = W + 1;
  const int64_t pc = d + 1;                                   // columns of [D, 1]
  const auto aug = [&](int64_t j) { return j < d ? j : W; };  // [D, 1] column -> acc column
  const auto add_pair = [&](int64_t i, int64_t j, double v) {
    acc[i * n + j] += v;
    if (i != j) acc[j * n + i] += v;
  };

  if (dense_block) {
    if (d > 0) {
      std::vector<double> g(static_cast<size_t>(pc * pc), 0.0);
      gram_accumulate(g.data(), dense, Index{}, count, Weights{}, true, gemm, tuning);
      for (int64_t i = 0; i < pc; ++i) {
        for (int64_t j = 0; j < pc; ++j) acc[aug(i) * n + aug(j)] += g[i * pc + j];
      }
    } else {
      acc[W * n + W] += static_cast<double>(count);
    }
  }
  if (k == 0 || count <= 0) return;

  // ---- one pass over the rows: node-level scatter sums in float64 ----------------------------
  const int64_t nb = kScatterRows;
  int64_t widest = 1;
  int64_t need = nb * std::max<int64_t>(d, 1) + nb * k;
  for (int q = 0; q < k; ++q) {
    const Matrix& h = parts[q].nodes;
    widest = std::max(widest, h.cols);
    need += h.rows * (pc + 1);
    for (int p = 0; p < q; ++p) need += parts[p].nodes.rows * h.cols;
  }
  need += nb * widest;
  Scratch scratch(static_cast<size_t>(need));
  ScatterSums s;
  s.d = d;
  double* db = scratch.take(nb * std::max<int64_t>(d, 1));
  double* gb = scratch.take(nb * k);
  s.db = db;
  s.gb = gb;
  s.hb = scratch.take(nb * widest);
  s.P.assign(k, nullptr);
  s.c.assign(k, nullptr);
  s.M.assign(static_cast<size_t>(k) * k, nullptr);
  for (int q = 0; q < k; ++q) {
    const Matrix& h = parts[q].nodes;
    s.P[q] = scratch.take(h.rows * pc);
    s.c[q] = scratch.take(h.rows);
    for (int p = 0; p < q; ++p) s.M[p * k + q] = scratch.take(parts[p].nodes.rows * h.cols);
  }
  const rows::GatherFn gather_dense = d > 0 ? rows::gather_for(dense.dtype) : nullptr;
  const auto scatter = rows::cpu_has_avx2() ? &scatter_block_avx2 : &scatter_block_plain;
  for (int64_t first = 0; first < count; first += nb) {
    const int64_t m = std::min(nb, count - first);
    if (gather_dense) gather_dense(dense, Index{}, first, m, db, d);
    for (int q = 0; q < k; ++q) {
      const Weights& g = parts[q].gate;
      double* gq = gb + q * nb;
      for (int64_t r = 0; r < m; ++r) gq[r] = g.data ? rows::weight_at(g, first + r) : 1.0;
    }
    scatter(parts, k, first, m, s);
  }

// ---- node-level products --------------------------------------------------------------------
  std::vector<std::vector<double>> diag(k);
  std::vector<double> blk;
  for (int q = 0; q < k; ++q) {
    const Matrix& h = parts[q].nodes;
    const int64_t dq = h.cols;
    // Two parts on the same nodes with equal weights (a symmetric edge list: every atom sends
    // as often as it receives) have the same diagonal block: computed once.
    int twin = -1;
    for (int p = 0; p < q && twin < 0; ++p) {
      if (same_matrix(parts[p].nodes, h) &&
          std::memcmp(s.c[p], s.c[q], static_cast<size_t>(h.rows) * sizeof(double)) == 0) {
        twin = p;
      }
    }
    if (twin >= 0) {
      diag[q] = diag[twin];
    } else {
      diag[q].assign(static_cast<size_t>(dq * dq), 0.0);
      gram_accumulate(diag[q].data(), h, Index{}, h.rows, Weights{s.c[q], false, 1},
                      false, gemm, tuning);
    }
    for (int64_t i = 0; i < dq; ++i) {
      for (int64_t j = 0; j < dq; ++j) acc[(off[q] + i) * n + off[q] + j] += diag[q][i * dq + j];
    }

    blk.assign(static_cast<size_t>(pc * dq), 0.0);
    const Matrix pm{s.P[q], DType::f64, h.rows, pc, pc, 1};
    cross_accumulate(blk.data(), pm, h, Index{}, Index{}, h.rows, Weights{}, false, gemm,
                     tuning);
    for (int64_t i = 0; i < pc; ++i) {
      for (int64_t j = 0; j < dq; ++j) add_pair(aug(i), off[q] + j, blk[i * dq + j]);
    }

    for (int p = 0; p < q; ++p) {
      const Matrix& hp = parts[p].nodes;
      blk.assign(static_cast<size_t>(hp.cols * dq), 0.0);
      const Matrix mm{s.M[p * k + q], DType::f64, hp.rows, dq, dq, 1};
      cross_accumulate(blk.data(), hp, mm, Index{}, Index{}, hp.rows, Weights{}, false, gemm,
                       tuning);
      for (int64_t i = 0; i < hp.cols; ++i) {
        for (int64_t j = 0; j < dq; ++j) add_pair(off[p] + i, off[q] + j, blk[i * dq + j]);
      }
    }
  }
}

}  // namespace gffmerge::kernels
