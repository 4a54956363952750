// Batched SPD solves on the GPU with cuSOLVER/cuBLAS (no torch here). Everything is enqueued on
// `stream`; nothing synchronises or reads results back to the host.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <cstddef>
#include <cstdint>

#include "cholesky_steps.h"

namespace gffmerge::kernels::gpu {

// Bytes of device workspace for `batch` systems of size n with k right-hand sides.
std::size_t cholesky_workspace_bytes(std::int64_t batch, std::int64_t n, std::int64_t k);

// Solves A_l X_l = B_l for every l (see cholesky_steps.h for the layout). p.a, p.b, p.info,
// p.jitter, p.batch, p.n, p.k and the steps must be set; the workspace pointers are carved
// from `workspace` (cholesky_workspace_bytes, 256-byte aligned). Returns nullptr or what
// failed. The handles must be usable on `stream` (their streams are set to it).
const char* cholesky_solve(chol::Params p, void* workspace, cusolverDnHandle_t solver,
                           cublasHandle_t blas, cudaStream_t stream);

}  // namespace gffmerge::kernels::gpu
