// CPU kernel of gffmerge::cholesky_solve_: validate, then LAPACK potrf/potrs per system with
// jitter retries (kernels/cholesky.cpp). ATen's cholesky stands in when libtorch exports no
// dpotrf_/dpotrs_ (or GFFMERGE_BLAS=aten).
#include <ATen/core/Tensor.h>
#include <ATen/ops/cholesky_solve.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/linalg_cholesky_ex.h>
#include <torch/library.h>

#include "../kernels/cholesky.h"
#include "blas_env.h"
#include "checks.h"

namespace gffmerge::ops {
namespace {

namespace k = gffmerge::kernels;

at::Tensor view(double* p, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
  return at::from_blob(p, {rows, cols}, {row_stride, col_stride},
                       at::TensorOptions().dtype(at::kDouble));
}

// Column-major upper n x n (leading dimension lda) is the row-major lower triangle.
int aten_potrf(int64_t n, double* a, int64_t lda) {
  at::Tensor lower = view(a, n, n, lda, 1);
  auto [factor, info] = at::linalg_cholesky_ex(lower, /*upper=*/false, /*check_errors=*/false);
  const int status = info.item<int>();
  if (status == 0) lower.copy_(factor);
  return status;
}

void aten_potrs(int64_t n, int64_t nrhs, const double* u, int64_t lda, double* b, int64_t ldb) {
  const at::Tensor lower = view(const_cast<double*>(u), n, n, lda, 1);
  at::Tensor rhs = view(b, n, nrhs, 1, ldb);
  rhs.copy_(at::cholesky_solve(rhs, lower, /*upper=*/false));
}

k::Lapack select_lapack() {
  const k::Lapack linked = aten_blas_requested() ? k::Lapack{} : k::linked_lapack();
  if (linked.potrf == nullptr || linked.potrs == nullptr) return {&aten_potrf, &aten_potrs};
  return linked;
}

void cholesky_solve_cpu(const at::Tensor& A, const at::Tensor& B, const at::Tensor& info,
                        const at::Tensor& jitter, c10::ArrayRef<double> jitter_steps) {
  check_cholesky(A, B, info, jitter, jitter_steps);
  k::cholesky_solve_batched(A.data_ptr<double>(), B.data_ptr<double>(),
                            info.data_ptr<std::int32_t>(), jitter.data_ptr<double>(), A.size(0),
                            A.size(1), B.size(2), jitter_steps.data(),
                            static_cast<int64_t>(jitter_steps.size()), select_lapack());
}

}  // namespace
}  // namespace gffmerge::ops

TORCH_LIBRARY_IMPL(gffmerge, CPU, m) {
  m.impl("cholesky_solve_", &gffmerge::ops::cholesky_solve_cpu);
}
