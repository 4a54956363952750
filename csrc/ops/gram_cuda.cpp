// CUDA kernels of gffmerge::gram_ and gffmerge::cross_: validate (as on the CPU), check index
// ranges on the device, then either the mm route (ops/gram_mm.h, the default) or the tiled
// kernels of kernels/gram.cu (GFFMERGE_GRAM_ROUTE=kernel), on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "../kernels/gram_cuda.h"
#include "checks.h"
#include "describe.h"
#include "gram_mm.h"

namespace gffmerge::ops {
namespace {

namespace k = gffmerge::kernels;

void check_cuda(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// Bounds are checked before acc is touched, so a bad index leaves acc as it was (as on the
// CPU). Reading the verdict back costs one stream synchronisation per call with an index.
void check_range(const char* op, const char* name, const std::optional<at::Tensor>& index,
                 int64_t count, int64_t rows, const char* of, cudaStream_t stream) {
  if (!index.has_value() || count == 0) return;
  at::Tensor first = at::full({1}, count, index->options().dtype(at::kLong));
  check_cuda(k::gpu::first_out_of_range(as_index(index), count, rows,
                                        reinterpret_cast<unsigned long long*>(
                                            first.data_ptr<int64_t>()),
                                        stream),
             op);
  const int64_t p = first.item<int64_t>();
  if (p < count) check_index_range(op, name, p, index->select(0, p).item<int64_t>(), rows, of);
}

void run(const char* op, const k::tiles::Plan& plan, const at::Tensor& acc,
         cudaStream_t stream) {
  if (plan.count == 0 || acc.numel() == 0) return;
  at::Tensor workspace = at::empty({k::tiles::partial_doubles(plan)}, acc.options());
  check_cuda(k::gpu::accumulate(plan, acc.data_ptr<double>(), workspace.data_ptr<double>(),
                                stream),
             op);
}

void gram_cuda(const at::Tensor& acc, const at::Tensor& x, const std::optional<at::Tensor>& index,
               const std::optional<at::Tensor>& weight, bool augment) {
  constexpr const char* op = "gffmerge::gram_";
  const int64_t count = check_gram(acc, x, index, weight, augment);
  const c10::cuda::CUDAGuard guard(acc.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  check_range(op, "index", index, count, x.size(0), "x", stream);
  if (const auto c = mm_route::chosen(true); c.mm) {
    return mm_route::gram(c, acc, x, index, weight, augment, count);
  }
  run(op, k::tiles::gram_plan(as_matrix(x), as_index(index), count, as_weights(weight), augment),
      acc, stream);
}

void cross_cuda(const at::Tensor& acc, const at::Tensor& x, const at::Tensor& y,
                const std::optional<at::Tensor>& index_x,
                const std::optional<at::Tensor>& index_y,
                const std::optional<at::Tensor>& weight, bool augment_x) {
  constexpr const char* op = "gffmerge::cross_";
  const int64_t count = check_cross(acc, x, y, index_x, index_y, weight, augment_x);
  const c10::cuda::CUDAGuard guard(acc.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  check_range(op, "index_x", index_x, count, x.size(0), "x", stream);
  check_range(op, "index_y", index_y, count, y.size(0), "y", stream);
  if (const auto c = mm_route::chosen(true); c.mm) {
    return mm_route::cross(c, acc, x, y, index_x, index_y, weight, augment_x, count);
  }
  run(op,
      k::tiles::cross_plan(as_matrix(x), as_matrix(y), as_index(index_x), as_index(index_y),
                           count, as_weights(weight), augment_x),
      acc, stream);
}

}  // namespace
}  // namespace gffmerge::ops

TORCH_LIBRARY_IMPL(gffmerge, CUDA, m) {
  m.impl("gram_", &gffmerge::ops::gram_cuda);
  m.impl("cross_", &gffmerge::ops::cross_cuda);
}
