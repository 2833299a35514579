// Torch-free entry point of the CUDA prefill engine (block-sparse and streaming attention).
// Plain C++: includable from g++-compiled sources (only <cuda_runtime_api.h> is needed).
#pragma once

#include <cuda_runtime_api.h>

#include "sparse_attn/params.h"

namespace sparse_attn::cuda {

enum class PrefillMode : int { kBlockSparse = 0, kStreaming = 1 };

// Everything one launch needs, by value (it is the kernel's only argument).
struct PrefillArgs {
  AttentionParams p;          // q/k/v/out/lse pointers, shapes, element strides, scale, causal
  PrefillMode mode = PrefillMode::kBlockSparse;
  BlockSparseParams mask;     // kBlockSparse: device pointers; block_q, block_k multiples of 64
  StreamingParams stream;     // kStreaming (always causal)
};

// Launches the prefill kernel for p.dtype (bf16 / fp16) and p.head_dim (64 / 128) on `stream`.
// Requirements (checked here, cudaErrorInvalidValue otherwise): q/k/v/out 16-byte aligned
// with every stride a multiple of 8 elements, p.lse non-null, batch and heads_q <= 65535.
// Asynchronous; returns the first CUDA error (attribute setting or launch).
cudaError_t prefill_forward(const PrefillArgs& args, cudaStream_t stream);

// True if prefill_forward has a kernel for this dtype and head_dim.
bool prefill_supported(DType dtype, int64_t head_dim);

// Name of the kernel prefill_forward would launch (for error messages).
const char* prefill_kernel_name(DType dtype, int64_t head_dim);

}  // namespace sparse_attn::cuda
