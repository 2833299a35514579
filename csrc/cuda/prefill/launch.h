// Torch-free entry points of the CUDA prefill engine (block-sparse, streaming and
// vertical-slash attention; the vertical-slash index conversion).
// Plain C++: includable from g++-compiled sources (only <cuda_runtime_api.h> is needed).
#pragma once

#include <cuda_runtime_api.h>

#include "sparse_attn/params.h"

namespace sparse_attn::cuda {

enum class PrefillMode : int { kBlockSparse = 0, kStreaming = 1, kVerticalSlash = 2 };

// Vertical-slash mode: the per-(batch, query head) bitsets and the 64-row tiles' index, both
// built on the device by vs_build_index (block_size 64, column limit seqlen_k when not causal).
struct VSTileArgs {
  const uint64_t* bits = nullptr;  // [B * Hq][2 * words]: VSBits cols, then diag
  int64_t words = 0;               // VSBits::words(seqlen_k)
  VerticalSlashIndex index;        // [B, Hq, ceil(Sq / 64)] rows (const use only)
};

// Everything one launch needs, by value (it is the kernel's only argument).
struct PrefillArgs {
  AttentionParams p;          // q/k/v/out/lse pointers, shapes, element strides, scale, causal
  PrefillMode mode = PrefillMode::kBlockSparse;
  BlockSparseParams mask;     // kBlockSparse: device pointers; block_q, block_k multiples of 64
  StreamingParams stream;     // kStreaming (always causal)
  VSTileArgs vs;              // kVerticalSlash
};

// Launches the prefill kernel for p.dtype (bf16 / fp16) and p.head_dim (64 / 128) on `stream`.
// Requirements (checked here, cudaErrorInvalidValue otherwise): q/k/v/out 16-byte aligned
// with every stride a multiple of 8 elements, p.lse non-null, batch and heads_q <= 65535.
// Asynchronous; returns the first CUDA error (attribute setting or launch).
cudaError_t prefill_forward(const PrefillArgs& args, cudaStream_t stream);

// Scratch for vs_build_index: bytes of the bitsets of batch x heads rows.
int64_t vs_bits_bytes(int64_t batch, int64_t heads, int64_t seqlen_k);

// The vertical-slash index on the device, the CPU op's result to the bit: for every
// (b, h) the VSBits of its lists into `bits` (vs_bits_bytes, any contents; vs_bits_kernel),
// then one thread per (b, h, query block) runs vs_index_flat_row (vertical_slash.h) into
// `out` ([batch, heads, ceil(seqlen_q / block_size)] rows, contiguous; vs_index_kernel).
// col_limit_all: columns up to seqlen_k (non-causal attention) instead of the query block's
// end. Lists are device pointers. Two kernels on `stream`; returns the first launch error,
// and `*kernel` (if not null) names the kernel it belongs to.
cudaError_t vs_build_index(const VerticalSlashParams& vs, int64_t batch, int64_t heads, int64_t seqlen_q,
                           int64_t seqlen_k, int64_t block_size, bool col_limit_all, uint64_t* bits,
                           const VerticalSlashIndex& out, cudaStream_t stream, const char** kernel = nullptr);

// True if prefill_forward has a kernel for this dtype and head_dim.
bool prefill_supported(DType dtype, int64_t head_dim);

// Name of the kernel prefill_forward would launch (for error messages).
const char* prefill_kernel_name(DType dtype, int64_t head_dim);

}  // namespace sparse_attn::cuda
