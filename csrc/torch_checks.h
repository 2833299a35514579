// Torch-side argument checks shared by the CPU ops (bindings.cpp, where they are defined)
// and the CUDA ops (bindings_cuda_prefill.cpp, bindings_cuda_decode.cpp): one set of checks and messages per op.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "sparse_attn/paged.h"
#include "sparse_attn/params.h"

namespace sparse_attn {

// Checks q/k/v/out (shapes, dtypes, devices, layout, overlap, head_dim, scale) and fills
// the shared parameters; lse is [B, Hq, Sq] float32 (new_lse).
AttentionParams make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                            const at::Tensor& lse, double scale, bool causal);
at::Tensor new_lse(const at::Tensor& q);

// Checks and fills the block-sparse mask; with `validate`, checks every listed id (range,
// order, full blocks under the causal mask). Device lists are validated from a host copy.
BlockSparseParams make_block_sparse_params(const AttentionParams& p, const at::Tensor& q, const at::Tensor& counts,
                                           const at::Tensor& indices, const std::optional<at::Tensor>& full_counts,
                                           const std::optional<at::Tensor>& full_indices, int64_t block_q,
                                           int64_t block_k, bool causal, bool validate);

StreamingParams make_streaming_params(const AttentionParams& p, int64_t sink_tokens, int64_t window_tokens);

// Vertical-slash lists [B|1, H|1, N] int32 (contiguous last dim) and counts [B|1, H|1] on
// `device`; reads the counts and entries (no negative entries), so the tensors must be in
// host memory: the CUDA ops pass contiguous host copies and swap in the device pointers.
VerticalSlashParams make_vs_params(const at::Tensor& vertical, const at::Tensor& vertical_count,
                                   const at::Tensor& slash, const at::Tensor& slash_count, int64_t batch,
                                   int64_t heads, const at::Device& device);

// vertical_slash_index: the checked lists (as make_vs_params) and the four outputs, allocated
// on out_device; rows = batch * heads * ceil(seqlen_q / block_size).
struct VSIndexCall {
  VerticalSlashParams vs;
  VerticalSlashIndex idx;
  int64_t batch = 0, heads = 0, rows = 0;
  at::Tensor block_count, block_offset, column_count, column_index;
};
VSIndexCall prepare_vs_index(const at::Tensor& vertical, const at::Tensor& vertical_count, const at::Tensor& slash,
                             const at::Tensor& slash_count, int64_t seqlen_q, int64_t seqlen_k, int64_t block_size,
                             const at::Device& out_device);

// Paged cache bookkeeping (paged_kv_write, quest_scores, quest_select): the checks and
// validation of the CPU ops. Index tensors (page_ids, slots, page_table, seqlens) are read
// here, so they must be in host memory: the CUDA ops pass host copies and then swap in the
// device pointers.
PagedKVWrite make_paged_write(const at::Tensor& k_pages, const at::Tensor& v_pages, const at::Tensor& k_max,
                              const at::Tensor& k_min, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& page_ids, const at::Tensor& slots);
PagedKVParams make_quest_scores(const at::Tensor& q, const at::Tensor& k_max, const at::Tensor& k_min,
                                const at::Tensor& page_table, const at::Tensor& seqlens, int64_t page_size);
// Returns K, the selection's capacity: min(max(ceil(token_budget / page_size), sink + recent), max_pages).
int64_t make_quest_select(const at::Tensor& scores, const at::Tensor& seqlens, int64_t page_size,
                          int64_t token_budget, int64_t sink_pages, int64_t recent_pages);

// Paged decode (paged_decode_attention / paged_decode_stream_k): checks the tensors and fills
// the shared parameters. page_table, seqlens, pages and counts are read here (validated):
// the CUDA ops pass host copies and then swap in the device pointers (same strides).
struct PagedDecodeInputs {
  PagedKVParams p;
  PageSelection sel;
  bool selected;
  PagedDecodeIO io;
};
PagedDecodeInputs make_paged_decode(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
                                    const at::Tensor& page_table, const at::Tensor& seqlens,
                                    const std::optional<at::Tensor>& pages, const std::optional<at::Tensor>& counts,
                                    const at::Tensor& out, const at::Tensor& lse, double scale);

// Checks a stream-K plan (host offsets / slot_base) against the cache and the selection and
// the workspace sizes; G = query heads per KV head.
StreamKPlan make_stream_k_plan(const PagedKVParams& p, const PageSelection* sel, int64_t G, const at::Tensor& offsets,
                               const at::Tensor& slot_base, int64_t workers, int64_t tile_pages, at::Tensor& ws_state,
                               at::Tensor& ws_acc);

}  // namespace sparse_attn
