// A cache of freed CPU output buffers, so that a prefill op called again with the same
// shapes (the next layer, the next request) writes into memory that is already mapped.
//
// Why: a fresh 64 MB output (8k tokens, 32 heads, head_dim 128, bf16) is mapped by the
// kernel on first touch, 16k page faults that cost ~15 ms on this 2-core machine, as much as
// the attention itself at 10% density. Tensors from this cache are ordinary contiguous
// tensors; when the last reference goes, the buffer comes back here instead of to the OS.
// At most SPARSE_ATTN_OUTPUT_CACHE_MB MiB are kept (default 512; 0 disables), oldest
// dropped first; release_output_cache() (sparse_attn._C.release_workspace) frees them all.
#pragma once
#include <ATen/ATen.h>

#include <cstddef>

namespace sparse_attn::cpu {

// An uninitialized contiguous CPU tensor of `like`'s shape and dtype. Sizes below
// kOutputCacheMinBytes come from at::empty (the heap reuses small blocks by itself).
at::Tensor cached_empty_like(const at::Tensor& like);

constexpr size_t kOutputCacheMinBytes = size_t(1) << 20;

// Bytes currently held by the cache (freed buffers waiting for reuse).
size_t output_cache_bytes();
void release_output_cache();

}  // namespace sparse_attn::cpu
