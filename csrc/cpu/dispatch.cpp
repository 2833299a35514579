// Picks the CPU kernel build for this processor once, at first use.
#include "attention_kernel.h"

#include <ATen/native/CPUBlas.h>

namespace sparse_attn::cpu {
namespace {
bool cpu_has_avx512() {
#if SA_HAVE_AVX512_BUILD && (defined(__x86_64__) || defined(_M_X64))
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return ok;
#else
  return false;
#endif
}
}  // namespace

void block_sparse_forward(const AttentionParams& p, const BlockSparseParams& mask) {
#if SA_HAVE_AVX512_BUILD
  if (cpu_has_avx512()) return AVX512::block_sparse_forward(p, mask);
#endif
  return DEFAULT::block_sparse_forward(p, mask);
}

void streaming_forward(const AttentionParams& p, const StreamingParams& s) {
#if SA_HAVE_AVX512_BUILD
  if (cpu_has_avx512()) return AVX512::streaming_forward(p, s);
#endif
  return DEFAULT::streaming_forward(p, s);
}

void vertical_slash_forward(const AttentionParams& p, const VerticalSlashParams& vs) {
#if SA_HAVE_AVX512_BUILD
  if (cpu_has_avx512()) return AVX512::vertical_slash_forward(p, vs);
#endif
  return DEFAULT::vertical_slash_forward(p, vs);
}

void vertical_slash_index(const VerticalSlashParams& vs, int64_t batch, int64_t heads, int64_t seqlen_q,
                          int64_t seqlen_k, int64_t block_size, const VerticalSlashIndex& out) {
  // Integer code only: the generic build is as fast.
  DEFAULT::vertical_slash_index(vs, batch, heads, seqlen_q, seqlen_k, block_size, out);
}

#if SA_HAVE_AVX512_BUILD
#define SA_PICK(fn) (cpu_has_avx512() ? AVX512::fn : DEFAULT::fn)
#else
#define SA_PICK(fn) DEFAULT::fn
#endif
void paged_kv_write(const PagedKVWrite& w) { SA_PICK(paged_kv_write)(w); }
void quest_scores(const PagedKVParams& p, DType dtype, const float* q, bool q_is_bf16, int64_t heads_q, bool sum_reduce,
                  float* out) {
  SA_PICK(quest_scores)(p, dtype, q, q_is_bf16, heads_q, sum_reduce, out);
}
void paged_decode(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io) {
  SA_PICK(paged_decode)(p, sel, io);
}
void select_pages(const float* scores, int64_t batch, int64_t heads_kv, int64_t max_pages, const int32_t* seqlens,
                  int64_t page_size, int64_t k, int64_t sink_pages, int64_t recent_pages, int32_t* pages,
                  int32_t* counts) {
  // Integer and comparison code: the generic build is as fast.
  DEFAULT::select_pages(scores, batch, heads_kv, max_pages, seqlens, page_size, k, sink_pages, recent_pages, pages,
                        counts);
}
void paged_decode_stream_k(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io,
                           const StreamKPlan& plan) {
  SA_PICK(paged_decode_stream_k)(p, sel, io, plan);
}
#undef SA_PICK

void release_workspace() {
  DEFAULT::release_workspace();
#if SA_HAVE_AVX512_BUILD
  AVX512::release_workspace();
#endif
}

const char* kernel_isa() { return cpu_has_avx512() ? "avx512" : "default"; }

bool uses_amx_bf16() { return at::native::cpublas::could_pack(at::kBFloat16); }

}  // namespace sparse_attn::cpu
