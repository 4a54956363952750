// CUDA kernels of gram_ / cross_: the phases of moment_tiles.h between block barriers.
#include <algorithm>

#include "gram_cuda.h"

namespace gffmerge::kernels::gpu {
namespace {

using tiles::Geometry;
using tiles::kThreads;

template <int M>
__global__ void __launch_bounds__(kThreads) moment_tiles_kernel(tiles::Plan p) {
  using G = Geometry<M>;
  __shared__ double sa[G::rows * G::lds];
  __shared__ double sb[G::rows * G::lds];
  __shared__ std::int64_t rows_a[G::rows];
  __shared__ std::int64_t rows_b[G::rows];
  __shared__ double w[G::rows];
  const int tid = static_cast<int>(threadIdx.x);
  const tiles::Block blk = tiles::block_of(p, blockIdx.x, blockIdx.y);
  const double* wa = p.weight.data ? w : nullptr;

  double acc[M][M];
#pragma unroll
  for (int i = 0; i < M; ++i) {
#pragma unroll
    for (int j = 0; j < M; ++j) acc[i][j] = 0.0;
  }
  for (std::int64_t first = blk.lo; first < blk.hi; first += G::rows) {
    const std::int64_t left = blk.hi - first;
    const int n = left < G::rows ? static_cast<int>(left) : G::rows;
    tiles::stage_rows<M>(p, first, n, rows_a, rows_b, w, tid);
    __syncthreads();
    tiles::load_operand<M>(p.a, blk.row0, n, rows_a, wa, sa, tid);
    tiles::load_operand<M>(p.b, blk.col0, n, rows_b, nullptr, sb, tid);
    __syncthreads();
    tiles::multiply_stage<M>(sa, sb, tid, acc);
    __syncthreads();
  }
  tiles::store_partial<M>(p, blockIdx.x, blockIdx.y, tid, acc);
}

__global__ void reduce_kernel(tiles::Plan p, std::int64_t total) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       e < total; e += step) {
    tiles::reduce_entry(p, e);
  }
}

__global__ void first_out_of_range_kernel(Index index, std::int64_t count, std::int64_t bound,
                                          unsigned long long* first) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t p = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       p < count; p += step) {
    const std::int64_t v = tiles::index_at(index, p);
    if (v < 0 || v >= bound) atomicMin(first, static_cast<unsigned long long>(p));
  }
}

unsigned grid_for(std::int64_t work, std::int64_t cap) {
  return static_cast<unsigned>(std::clamp<std::int64_t>(tiles::ceil_div(work, 256), 1, cap));
}

}  // namespace

cudaError_t accumulate(tiles::Plan plan, double* acc, double* workspace, cudaStream_t stream) {
  if (plan.count <= 0 || plan.num_tiles == 0) return cudaSuccess;
  plan.acc = acc;
  plan.partial = workspace;
  const dim3 grid(static_cast<unsigned>(plan.num_tiles), static_cast<unsigned>(plan.splits));
  if (plan.tile == Geometry<2>::tile) {
    moment_tiles_kernel<2><<<grid, kThreads, 0, stream>>>(plan);
  } else {
    moment_tiles_kernel<4><<<grid, kThreads, 0, stream>>>(plan);
  }
  if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  const std::int64_t total = plan.a.cols * plan.b.cols;
  reduce_kernel<<<grid_for(total, 4096), 256, 0, stream>>>(plan, total);
  return cudaGetLastError();
}

cudaError_t first_out_of_range(const Index& index, std::int64_t count, std::int64_t bound,
                               unsigned long long* first, cudaStream_t stream) {
  if (count <= 0 || index.data == nullptr) return cudaSuccess;
  first_out_of_range_kernel<<<grid_for(count, 1024), 256, 0, stream>>>(index, count, bound,
                                                                       first);
  return cudaGetLastError();
}

}  // namespace gffmerge::kernels::gpu
