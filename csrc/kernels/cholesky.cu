// Batched Cholesky solve: cuSOLVER potrfBatched, on-device jitter retries of the systems it
// rejected, then two batched triangular solves with cuBLAS (potrsBatched takes one RHS only).
#include <cstddef>

#include "cholesky_cuda.h"

namespace gffmerge::kernels::gpu {
namespace {

using chol::kThreads;

__global__ void __launch_bounds__(kThreads) prepare_kernel(chol::Params p) {
  __shared__ double red[kThreads];
  const int tid = static_cast<int>(threadIdx.x);
  const std::int64_t l = blockIdx.x;
  chol::diag_partial(p, l, tid, kThreads, red);
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    chol::reduce_step(red, tid, width);
    __syncthreads();
  }
  if (tid == 0) chol::prepare_finish(p, l, red);
}

__global__ void __launch_bounds__(kThreads) rescue_kernel(chol::Params p) {
  extern __shared__ double col[];
  __shared__ chol::RescueShared sh;
  const int tid = static_cast<int>(threadIdx.x);
  const std::int64_t l = blockIdx.x;
  if (p.info[l] == 0) return;
  for (int s = 0; s < p.nsteps; ++s) {
    const double jit = p.steps[s] * p.scale[l];
    chol::rescue_load(p, l, jit, tid, kThreads);
    __syncthreads();
    int status = 0;
    for (std::int64_t j = 0; j < p.n; ++j) {
      if (tid == 0) chol::rescue_pivot(p, l, j, sh);
      __syncthreads();
      status = sh.status;
      if (status != 0) break;
      chol::rescue_column(p, l, j, col, tid, kThreads);
      __syncthreads();
      chol::rescue_update(p, l, j, col, tid, kThreads);
      __syncthreads();
    }
    if (tid == 0) chol::rescue_record(p, l, status, jit);
    if (status == 0) return;
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads) retry_fill_kernel(chol::Params p, int s) {
  chol::retry_fill(p, blockIdx.x, s, static_cast<int>(threadIdx.x), kThreads);
}

__global__ void __launch_bounds__(kThreads) retry_accept_kernel(chol::Params p, int s) {
  chol::retry_accept_copy(p, blockIdx.x, static_cast<int>(threadIdx.x), kThreads);
  __syncthreads();
  if (threadIdx.x == 0) chol::retry_accept_record(p, blockIdx.x, s);
}

__global__ void __launch_bounds__(kThreads) finish_kernel(chol::Params p) {
  chol::finish_system(p, blockIdx.x, static_cast<int>(threadIdx.x), kThreads);
}

constexpr std::size_t kAlign = 256;
static_assert(chol::kMaxKernelRescueN * sizeof(double) <= 48 * 1024,
              "the rescue kernel's column cache must fit the default dynamic shared memory");

std::size_t aligned(std::size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

bool batched_rescue(std::int64_t n) { return n > chol::kMaxKernelRescueN; }

struct Layout {
  std::size_t a0, scale, scratch, ptr_a, ptr_b, w, ptr_w, info_w, total;
};

Layout layout(std::int64_t batch, std::int64_t n, std::int64_t k) {
  const auto L = static_cast<std::size_t>(batch);
  const auto nn = static_cast<std::size_t>(n * n);
  const std::size_t retry = batched_rescue(n) ? L : 0;
  Layout out{};
  out.a0 = 0;
  out.scale = out.a0 + aligned(L * nn * sizeof(double));
  out.scratch = out.scale + aligned(L * sizeof(double));
  out.ptr_a = out.scratch + aligned(L * n * k * sizeof(double));
  out.ptr_b = out.ptr_a + aligned(L * sizeof(double*));
  out.w = out.ptr_b + aligned(L * sizeof(double*));
  out.ptr_w = out.w + aligned(retry * nn * sizeof(double));
  out.info_w = out.ptr_w + aligned(retry * sizeof(double*));
  out.total = out.info_w + aligned(retry * sizeof(std::int32_t));
  return out;
}

const char* launch_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

std::size_t cholesky_workspace_bytes(std::int64_t batch, std::int64_t n, std::int64_t k) {
  return layout(batch, n, k).total;
}

const char* cholesky_solve(chol::Params p, void* workspace, cusolverDnHandle_t solver,
                           cublasHandle_t blas, cudaStream_t stream) {
  if (p.batch == 0) return nullptr;
  if (p.n == 0) {
    if (cudaMemsetAsync(p.info, 0, p.batch * sizeof(std::int32_t), stream) != cudaSuccess ||
        cudaMemsetAsync(p.jitter, 0, p.batch * sizeof(double), stream) != cudaSuccess) {
      return "cudaMemsetAsync failed";
    }
    return nullptr;
  }
  const Layout lay = layout(p.batch, p.n, p.k);
  auto* base = static_cast<unsigned char*>(workspace);
  p.a0 = reinterpret_cast<double*>(base + lay.a0);
  p.scale = reinterpret_cast<double*>(base + lay.scale);
  p.scratch = reinterpret_cast<double*>(base + lay.scratch);
  p.ptr_a = reinterpret_cast<double**>(base + lay.ptr_a);
  p.ptr_b = reinterpret_cast<double**>(base + lay.ptr_b);
  if (batched_rescue(p.n)) {
    p.w = reinterpret_cast<double*>(base + lay.w);
    p.ptr_w = reinterpret_cast<double**>(base + lay.ptr_w);
    p.info_w = reinterpret_cast<std::int32_t*>(base + lay.info_w);
  }
  const int n = static_cast<int>(p.n);
  const int k = static_cast<int>(p.k);
  const int batch = static_cast<int>(p.batch);

  if (cusolverDnSetStream(solver, stream) != CUSOLVER_STATUS_SUCCESS) {
    return "cusolverDnSetStream failed";
  }
  if (cublasSetStream(blas, stream) != CUBLAS_STATUS_SUCCESS) return "cublasSetStream failed";
  if (cudaMemcpyAsync(p.a0, p.a, p.batch * p.n * p.n * sizeof(double), cudaMemcpyDeviceToDevice,
                      stream) != cudaSuccess) {
    return "cudaMemcpyAsync of the input matrices failed";
  }
  prepare_kernel<<<batch, kThreads, 0, stream>>>(p);
  if (const char* err = launch_error()) return err;

  if (cusolverDnDpotrfBatched(solver, CUBLAS_FILL_MODE_UPPER, n, p.ptr_a, n, p.info, batch) !=
      CUSOLVER_STATUS_SUCCESS) {
    return "cusolverDnDpotrfBatched failed";
  }
  if (p.nsteps > 0 && !batched_rescue(p.n)) {
    rescue_kernel<<<batch, kThreads, p.n * sizeof(double), stream>>>(p);
    if (const char* err = launch_error()) return err;
  }
  for (int s = 0; batched_rescue(p.n) && s < p.nsteps; ++s) {
    retry_fill_kernel<<<batch, kThreads, 0, stream>>>(p, s);
    if (const char* err = launch_error()) return err;
    if (cusolverDnDpotrfBatched(solver, CUBLAS_FILL_MODE_UPPER, n, p.ptr_w, n, p.info_w,
                                batch) != CUSOLVER_STATUS_SUCCESS) {
      return "cusolverDnDpotrfBatched (jitter retry) failed";
    }
    retry_accept_kernel<<<batch, kThreads, 0, stream>>>(p, s);
    if (const char* err = launch_error()) return err;
  }
  finish_kernel<<<batch, kThreads, 0, stream>>>(p);
  if (const char* err = launch_error()) return err;
  if (k == 0) return nullptr;

  cublasPointerMode_t mode{};
  if (cublasGetPointerMode(blas, &mode) != CUBLAS_STATUS_SUCCESS ||
      cublasSetPointerMode(blas, CUBLAS_POINTER_MODE_HOST) != CUBLAS_STATUS_SUCCESS) {
    return "cublas{Get,Set}PointerMode failed";
  }
  const double one = 1.0;
  const auto* factors = const_cast<const double* const*>(p.ptr_a);
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  for (const bool transposed : chol::kTrsmTransposed) {
    if (st != CUBLAS_STATUS_SUCCESS) break;
    st = cublasDtrsmBatched(blas, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER,
                            transposed ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, k, n,
                            &one, factors, n, p.ptr_b, k, batch);
  }
  cublasSetPointerMode(blas, mode);
  return st == CUBLAS_STATUS_SUCCESS ? nullptr : "cublasDtrsmBatched failed";
}

}  // namespace gffmerge::kernels::gpu
