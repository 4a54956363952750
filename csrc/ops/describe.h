// Tensors described to the torch-free kernels (shared by the CPU and CUDA op glue).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "../kernels/gram.h"

namespace gffmerge::ops {

inline kernels::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kernels::DType::f32;
    case at::kDouble: return kernels::DType::f64;
    case at::kBFloat16: return kernels::DType::bf16;
    case at::kHalf: return kernels::DType::f16;
    default: TORCH_CHECK(false, "gffmerge: unsupported row dtype ", t);
  }
}

inline kernels::Matrix as_matrix(const at::Tensor& x) {
  return {x.const_data_ptr(), kernel_dtype(x.scalar_type()), x.size(0), x.size(1),
          x.stride(0),        x.stride(1)};
}

inline kernels::Index as_index(const std::optional<at::Tensor>& index) {
  if (!index.has_value()) return {};
  return {index->const_data_ptr(), index->scalar_type() == at::kInt, index->stride(0)};
}

inline kernels::Weights as_weights(const std::optional<at::Tensor>& weight) {
  if (!weight.has_value()) return {};
  return {weight->const_data_ptr(), weight->scalar_type() == at::kFloat, weight->stride(0)};
}

}  // namespace gffmerge::ops
