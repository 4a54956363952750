#include "cholesky.h"

#include <cmath>
#include <cstring>
#include <vector>

extern "C" {
__attribute__((weak, visibility("default"))) void dpotrf_(const char* uplo, const int* n,
                                                          double* a, const int* lda, int* info);
__attribute__((weak, visibility("default"))) void dpotrs_(const char* uplo, const int* n,
                                                          const int* nrhs, const double* a,
                                                          const int* lda, double* b,
                                                          const int* ldb, int* info);
}

namespace gffmerge::kernels {
namespace {

using std::int64_t;

int call_dpotrf(int64_t n, double* a, int64_t lda) {
  const char uplo = 'U';
  const int ni = static_cast<int>(n), la = static_cast<int>(lda);
  int info = 0;
  dpotrf_(&uplo, &ni, a, &la, &info);
  return info;
}

void call_dpotrs(int64_t n, int64_t nrhs, const double* u, int64_t lda, double* b,
                 int64_t ldb) {
  const char uplo = 'U';
  const int ni = static_cast<int>(n), nr = static_cast<int>(nrhs);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb);
  int info = 0;
  dpotrs_(&uplo, &ni, &nr, u, &la, b, &lb, &info);
}

double mean_abs_diag(const double* a, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += std::fabs(a[i * n + i]);
  const double mean = s / static_cast<double>(n);
  return mean > 0 ? mean : 1.0;
}

}  // namespace

Lapack linked_lapack() {
  Lapack out;
  if (dpotrf_ != nullptr) out.potrf = &call_dpotrf;
  if (dpotrs_ != nullptr) out.potrs = &call_dpotrs;
  return out;
}

void cholesky_solve_batched(double* a, double* b, std::int32_t* info, double* jitter,
                            int64_t batch, int64_t n, int64_t k, const double* steps,
                            int64_t nsteps, const Lapack& lapack) {
  const int64_t nn = n * n;
  std::vector<double> original(static_cast<std::size_t>(nn));
  std::vector<double> rhs(static_cast<std::size_t>(n * k));
  for (int64_t l = 0; l < batch; ++l) {
    double* al = a + l * nn;
    double* bl = b + l * n * k;
    if (n == 0) {
      info[l] = 0;
      jitter[l] = 0.0;
      continue;
    }
    std::memcpy(original.data(), al, static_cast<std::size_t>(nn) * sizeof(double));
    // Row-major lower == column-major upper: uplo = U reads the lower triangle of A.
    int status = lapack.potrf(n, al, n);
    double jit = 0.0;
    if (status != 0 && nsteps > 0) {
      const double scale = mean_abs_diag(original.data(), n);
      for (int64_t s = 0; s < nsteps && status != 0; ++s) {
        jit = steps[s] * scale;
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j <= i; ++j) al[i * n + j] = original[i * n + j];
          al[i * n + i] += jit;
        }
        status = lapack.potrf(n, al, n);
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = i + 1; j < n; ++j) al[i * n + j] = 0.0;
    }
    info[l] = status;
    jitter[l] = jit;
    if (status != 0 || k == 0) continue;
    // B row-major [n, k] -> column-major n x k for potrs, and back.
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t c = 0; c < k; ++c) rhs[c * n + i] = bl[i * k + c];
    }
    lapack.potrs(n, k, al, n, rhs.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t c = 0; c < k; ++c) bl[i * k + c] = rhs[c * n + i];
    }
  }
}

}  // namespace gffmerge::kernels
