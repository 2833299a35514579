// Torch-free entry points of the CUDA decode engine: persistent stream-K paged decode with
// in-kernel fix-up (fixup.h), and its fallback with a separate merge kernel.
// Plain C++: includable from g++-compiled sources (only <cuda_runtime_api.h> is needed).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sparse_attn/paged.h"

namespace sparse_attn::cuda {

// Everything one launch needs, by value. Every pointer is a device pointer.
struct DecodeArgs {
  PagedKVParams p;        // k/v pages, page_table, seqlens (validated on the host first)
  PageSelection sel;      // sel.pages == nullptr: every page of each sequence
  PagedDecodeIO io;       // q, out [B, Hq, D], lse [B, Hq] contiguous float32
  StreamKPlan plan;       // device offsets / slot_base; ws_state holds the flags after the states
  int64_t slots = 0;      // plan.slot_base[B * H_kv]
  bool separate_merge = false;
};

// Launches the decode for io.dtype (bf16 / fp16), head_dim 64 / 128, G = Hq / H_kv <= 16,
// any page size. Grid = plan.workers CTAs (one per worker). Persistent mode needs
// plan.workers <= decode_max_workers(...) (every CTA resident) and zeroed flags;
// otherwise cudaErrorCooperativeLaunchTooLarge. Separate-merge mode has no such limit.
// Requirements (checked, cudaErrorInvalidValue otherwise): q, out, k/v pages 16-byte aligned
// with strides multiples of 8 elements. Asynchronous; returns the first CUDA error.
cudaError_t decode_stream_k(const DecodeArgs& args, cudaStream_t stream);

// The most CTAs of the persistent kernel that are resident at once on `device`
// (occupancy per SM x SMs): the default worker count of a CUDA plan.
cudaError_t decode_max_workers(DType dtype, int64_t head_dim, int64_t group, int device, int64_t* workers);

bool decode_supported(DType dtype, int64_t head_dim, int64_t group);
const char* decode_kernel_name(DType dtype, int64_t head_dim);

}  // namespace sparse_attn::cuda
