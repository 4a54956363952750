// CUDA launchers of the gram/cross accumulators and the index range check (no torch here).
// Everything is enqueued on the stream passed in; nothing synchronises.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "gram.h"
#include "moment_tiles.h"

namespace gffmerge::kernels::gpu {

// acc += the plan's moments. `workspace` holds tiles::partial_doubles(plan) doubles (device);
// acc is device memory with plan.a.cols * plan.b.cols doubles.
cudaError_t accumulate(tiles::Plan plan, double* acc, double* workspace, cudaStream_t stream);

// *first = min(*first, the first position p < count with index[p] outside [0, bound)).
// The caller initialises *first (device) to count.
cudaError_t first_out_of_range(const Index& index, std::int64_t count, std::int64_t bound,
                               unsigned long long* first, cudaStream_t stream);

}  // namespace gffmerge::kernels::gpu
