// Device-side steps of the batched Cholesky solve (no torch here).
//
// cuSOLVER factorises every system at once; the systems it rejects are retried with growing
// diagonal jitter without the host ever looking at `info`:
//  - n <= kMaxKernelRescueN: one block per system runs an unblocked right-looking Cholesky in
//    global memory (the pivot column cached in shared memory). Its cost grows as n^3 on one
//    SM, but it only runs for systems that failed; the others cost one load of info[l].
//  - larger n: each step refactorises a scratch batch with cuSOLVER, holding A0 + jitter I
//    for the systems still failing and the identity for the others, and keeps the factors
//    that succeeded. Every step costs one batched factorisation, failures or not.
//
// Layout: the row-major lower triangle of each [n, n] matrix is the column-major upper one
// that cuSOLVER/LAPACK factorise with uplo = U, so the factor L (A = L L^T) ends up in the
// row-major lower triangle. As in moment_tiles.h, each phase is a host/device function of
// the thread id so that tools/emulate_cuda_kernels.cpp can run the kernels on the CPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "convert.h"

namespace gffmerge::kernels::chol {

using std::int64_t;

constexpr int kThreads = 256;
constexpr int kMaxJitterSteps = 32;
constexpr int64_t kMaxKernelRescueN = 1024;

// After potrfBatched (uplo = U, lda = n), row-major B [n, k] is the column-major k x n matrix
// B^T and the factor is the column-major upper U = L^T, so X^T = B^T U^-1 U^-T: two calls of
// trsmBatched(side R, uplo U, diag N, m = k, n = n, lda = n, ldb = k), op N then op T.
constexpr bool kTrsmTransposed[2] = {false, true};

struct Params {
  double* a = nullptr;         // [batch, n, n] in: matrices, out: factors
  double* b = nullptr;         // [batch, n, k] in: right-hand sides, out: solutions
  std::int32_t* info = nullptr;  // [batch]
  double* jitter = nullptr;    // [batch]
  double* a0 = nullptr;        // [batch, n, n] copy of the input matrices
  double* scale = nullptr;     // [batch] mean |diag| of each input (1 when that is not > 0)
  double* scratch = nullptr;   // [batch, n, k] where failed systems' solves are sent
  double** ptr_a = nullptr;    // [batch] device pointers for the batched cuSOLVER/cuBLAS calls
  double** ptr_b = nullptr;    // [batch]
  double* w = nullptr;         // [batch, n, n] retry matrices (batched rescue only)
  double** ptr_w = nullptr;    // [batch]
  std::int32_t* info_w = nullptr;  // [batch]
  int64_t batch = 0;
  int64_t n = 0;
  int64_t k = 0;
  int nsteps = 0;
  double steps[kMaxJitterSteps] = {};
};

// ---- prepare: one block per system ---------------------------------------------------------

GFFMERGE_HD void diag_partial(const Params& p, int64_t l, int tid, int nt, double* red) {
  const double* a = p.a + l * p.n * p.n;
  double s = 0.0;
  for (int64_t i = tid; i < p.n; i += nt) s += fabs(a[i * p.n + i]);
  red[tid] = s;
}

// Fixed-order tree: called for width = nt/2, nt/4, ..., 1 with a barrier after each.
GFFMERGE_HD void reduce_step(double* red, int tid, int width) {
  if (tid < width) red[tid] += red[tid + width];
}

GFFMERGE_HD void prepare_finish(const Params& p, int64_t l, const double* red) {
  const double mean = red[0] / static_cast<double>(p.n);
  p.scale[l] = mean > 0 ? mean : 1.0;
  p.jitter[l] = 0.0;
  p.ptr_a[l] = p.a + l * p.n * p.n;
}

// ---- rescue: one block per system whose info != 0 -----------------------------------------

struct RescueShared {
  int status;
};

// A = A0 + jit I on the lower triangle, zeros above.
GFFMERGE_HD void rescue_load(const Params& p, int64_t l, double jit, int tid, int nt) {
  const int64_t nn = p.n * p.n;
  double* a = p.a + l * nn;
  const double* a0 = p.a0 + l * nn;
  for (int64_t e = tid; e < nn; e += nt) {
    const int64_t i = e / p.n;
    const int64_t j = e % p.n;
    a[e] = j > i ? 0.0 : (i == j ? a0[e] + jit : a0[e]);
  }
}

// Thread 0: the pivot of column j; status = j + 1 when it is not positive (or NaN).
GFFMERGE_HD void rescue_pivot(const Params& p, int64_t l, int64_t j, RescueShared& sh) {
  double* a = p.a + l * p.n * p.n;
  const double d = a[j * p.n + j];
  if (d > 0) {
    a[j * p.n + j] = sqrt(d);
    sh.status = 0;
  } else {
    sh.status = static_cast<int>(j + 1);
  }
}

// Column j below the pivot divided by it, and cached in `col` (shared memory, n doubles).
GFFMERGE_HD void rescue_column(const Params& p, int64_t l, int64_t j, double* col, int tid,
                               int nt) {
  double* a = p.a + l * p.n * p.n;
  const double pivot = a[j * p.n + j];
  for (int64_t i = j + 1 + tid; i < p.n; i += nt) {
    const double v = a[i * p.n + j] / pivot;
    a[i * p.n + j] = v;
    col[i] = v;
  }
}

// Trailing lower triangle: a[i][c] -= l[i] l[c] for j < c <= i. Warps walk along rows.
GFFMERGE_HD void rescue_update(const Params& p, int64_t l, int64_t j, const double* col,
                               int tid, int nt) {
  double* a = p.a + l * p.n * p.n;
  const int lanes = nt < 32 ? nt : 32;
  const int tx = tid % lanes;
  const int ty = tid / lanes;
  const int ny = nt / lanes;
  for (int64_t i = j + 1 + ty; i < p.n; i += ny) {
    const double li = col[i];
    double* row = a + i * p.n;
    for (int64_t c = j + 1 + tx; c <= i; c += lanes) row[c] -= li * col[c];
  }
}

GFFMERGE_HD void rescue_record(const Params& p, int64_t l, int status, double jit) {
  p.info[l] = status;
  p.jitter[l] = jit;
}

// ---- batched rescue, step s: fill, cuSOLVER on ptr_w, accept (one block per system) --------

GFFMERGE_HD void retry_fill(const Params& p, int64_t l, int s, int tid, int nt) {
  const int64_t nn = p.n * p.n;
  double* w = p.w + l * nn;
  const double* a0 = p.a0 + l * nn;
  const bool failing = p.info[l] != 0;
  const double jit = p.steps[s] * p.scale[l];
  for (int64_t e = tid; e < nn; e += nt) {
    const int64_t i = e / p.n;
    const int64_t j = e % p.n;
    if (!failing) {
      w[e] = i == j ? 1.0 : 0.0;
    } else {
      w[e] = j > i ? 0.0 : (i == j ? a0[e] + jit : a0[e]);
    }
  }
  if (tid == 0) p.ptr_w[l] = w;
}

// Phase 1: a factor that now succeeded replaces A's contents.
GFFMERGE_HD void retry_accept_copy(const Params& p, int64_t l, int tid, int nt) {
  if (p.info[l] == 0 || p.info_w[l] != 0) return;
  const int64_t nn = p.n * p.n;
  const double* w = p.w + l * nn;
  double* a = p.a + l * nn;
  for (int64_t e = tid; e < nn; e += nt) a[e] = w[e];
}

// Phase 2 (thread 0, after a barrier): the outcome of step s.
GFFMERGE_HD void retry_accept_record(const Params& p, int64_t l, int s) {
  if (p.info[l] == 0) return;
  rescue_record(p, l, p.info_w[l], p.steps[s] * p.scale[l]);
}

// ---- finish: one block per system -----------------------------------------------------------

// Zeros above the factor; failed systems' solves go to scratch, so B keeps their RHS.
GFFMERGE_HD void finish_system(const Params& p, int64_t l, int tid, int nt) {
  const int64_t nn = p.n * p.n;
  double* a = p.a + l * nn;
  for (int64_t e = tid; e < nn; e += nt) {
    if (e % p.n > e / p.n) a[e] = 0.0;
  }
  if (tid == 0) {
    p.ptr_a[l] = a;
    p.ptr_b[l] = (p.info[l] == 0 ? p.b : p.scratch) + l * p.n * p.k;
  }
}

}  // namespace gffmerge::kernels::chol
