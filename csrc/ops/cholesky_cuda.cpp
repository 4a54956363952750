// CUDA kernel of gffmerge::cholesky_solve_: validate (as on the CPU), then cuSOLVER/cuBLAS with
// torch's handles on the current stream (kernels/cholesky.cu). Nothing here synchronises: the
// caller reads `info` when it needs it.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../kernels/cholesky_cuda.h"
#include "checks.h"

namespace gffmerge::ops {
namespace {

namespace k = gffmerge::kernels;

void cholesky_solve_cuda(const at::Tensor& A, const at::Tensor& B, const at::Tensor& info,
                         const at::Tensor& jitter, c10::ArrayRef<double> jitter_steps) {
  check_cholesky(A, B, info, jitter, jitter_steps);
  const c10::cuda::CUDAGuard guard(A.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  k::chol::Params p;
  p.a = A.data_ptr<double>();
  p.b = B.data_ptr<double>();
  p.info = info.data_ptr<std::int32_t>();
  p.jitter = jitter.data_ptr<double>();
  p.batch = A.size(0);
  p.n = A.size(1);
  p.k = B.size(2);
  p.nsteps = static_cast<int>(jitter_steps.size());
  std::copy(jitter_steps.begin(), jitter_steps.end(), p.steps);
  if (p.batch == 0) return;
  const auto bytes = k::gpu::cholesky_workspace_bytes(p.batch, p.n, p.k);
  at::Tensor workspace =
      at::empty({static_cast<int64_t>(bytes)}, A.options().dtype(at::kByte));
  const char* err =
      k::gpu::cholesky_solve(p, workspace.data_ptr(), at::cuda::getCurrentCUDASolverDnHandle(),
                             at::cuda::getCurrentCUDABlasHandle(), stream);
  TORCH_CHECK(err == nullptr, "gffmerge::cholesky_solve_: ", err);
}

}  // namespace
}  // namespace gffmerge::ops

TORCH_LIBRARY_IMPL(gffmerge, CUDA, m) {
  m.impl("cholesky_solve_", &gffmerge::ops::cholesky_solve_cuda);
}
