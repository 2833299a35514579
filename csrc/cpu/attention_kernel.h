// CPU engine entry points. The kernel files (attention_kernel.cpp, vertical_slash_kernel.cpp)
// are compiled once per instruction set (namespaces DEFAULT and AVX512); dispatch.cpp picks
// one at run time.
#pragma once
#include "sparse_attn/paged.h"
#include "sparse_attn/params.h"

namespace sparse_attn::cpu {

#define SA_DECLARE_CPU_KERNELS(NS)                                                     \
  namespace NS {                                                                       \
  void block_sparse_forward(const AttentionParams& p, const BlockSparseParams& mask); \
  void streaming_forward(const AttentionParams& p, const StreamingParams& s);         \
  void vertical_slash_forward(const AttentionParams& p, const VerticalSlashParams& vs); \
  void vertical_slash_index(const VerticalSlashParams& vs, int64_t batch, int64_t heads, int64_t seqlen_q, \
                            int64_t seqlen_k, int64_t block_size, const VerticalSlashIndex& out);         \
  void paged_kv_write(const PagedKVWrite& w);                                          \
  void quest_scores(const PagedKVParams& p, DType dtype, const float* q, bool q_is_bf16, int64_t heads_q, bool sum_reduce, \
                    float* out);                                                                      \
  void paged_decode(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io);           \
  void paged_decode_stream_k(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io,   \
                             const StreamKPlan& plan);                                                   \
  void select_pages(const float* scores, int64_t batch, int64_t heads_kv, int64_t max_pages, const int32_t* seqlens, \
                    int64_t page_size, int64_t k, int64_t sink_pages, int64_t recent_pages, int32_t* pages,         \
                    int32_t* counts);                                                                               \
  void release_workspace();                                                           \
  }
SA_DECLARE_CPU_KERNELS(DEFAULT)
SA_DECLARE_CPU_KERNELS(AVX512)
#undef SA_DECLARE_CPU_KERNELS

// Run-time dispatch (dispatch.cpp).
void block_sparse_forward(const AttentionParams& p, const BlockSparseParams& mask);
void streaming_forward(const AttentionParams& p, const StreamingParams& s);
void vertical_slash_forward(const AttentionParams& p, const VerticalSlashParams& vs);
// The per-query-block key blocks + columns of a vertical-slash pattern (causal).
void vertical_slash_index(const VerticalSlashParams& vs, int64_t batch, int64_t heads, int64_t seqlen_q,
                          int64_t seqlen_k, int64_t block_size, const VerticalSlashIndex& out);
// Paged KV cache (paged_decode_kernel.cpp): token writes with page metadata, Quest bounds
// [B, H_kv, max_pages] (q float32 [B, H_q, D]), decode over all or selected pages.
void paged_kv_write(const PagedKVWrite& w);
// q_is_bf16: q's values are exact in bf16 (a bf16 q), which allows the bf16 dot-product path.
void quest_scores(const PagedKVParams& p, DType dtype, const float* q, bool q_is_bf16, int64_t heads_q, bool sum_reduce,
                  float* out);
void paged_decode(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io);
void paged_decode_stream_k(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io,
                           const StreamKPlan& plan);
// Quest selection per (sequence, KV head) row of scores [B, H_kv, max_pages]: pages [.., k]
// ascending (first sink_pages and last recent_pages forced, then by score), counts [B, H_kv].
void select_pages(const float* scores, int64_t batch, int64_t heads_kv, int64_t max_pages, const int32_t* seqlens,
                  int64_t page_size, int64_t k, int64_t sink_pages, int64_t recent_pages, int32_t* pages, int32_t* counts);
// Frees the calling thread's packed-K/V workspace (it is kept between calls otherwise).
void release_workspace();
// Which kernel build and tile path the dispatcher uses on this CPU.
const char* kernel_isa();
bool uses_amx_bf16();

}  // namespace sparse_attn::cpu
