// The per-(dtype, head_dim) launchers, one generated .cu file each
// (tools/gen_prefill_instances.py), declared for dispatch.cu.
#pragma once

#include <cute/numeric/numeric_types.hpp>

#include "launch.h"

namespace sparse_attn::cuda::prefill {

template <class Element, int kHeadDim>
cudaError_t launch_instance(const PrefillArgs& args, cudaStream_t stream);

}  // namespace sparse_attn::cuda::prefill
