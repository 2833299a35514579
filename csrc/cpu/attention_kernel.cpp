// CPU engine entry points of block-sparse and streaming prefill attention: the policies
// that turn each op's pattern into key spans for the shared tile loop (prefill_loop.h).
// This file is compiled once per instruction set; SA_CPU_NS names the namespace.
#include <cstdint>

#include "attention_kernel.h"
#include "prefill_loop.h"
#include "sparse_attn/key_spans.h"

namespace sparse_attn::cpu::SA_CPU_NS {
namespace {

struct BlockSparsePolicy {
  const BlockSparseParams& mask;
  int64_t tile_q;  // query rows per work item == mask block_q
  static constexpr MaskKind kMask = MaskKind::kCausal;
  int64_t num_tiles(int64_t) const { return mask.num_q_blocks; }
  int64_t max_spans() const { return mask.max_count + mask.max_full_count + 1; }
  int64_t max_columns() const { return 0; }
  int64_t plan(int64_t b, int64_t h, int64_t m, int64_t key_limit, KeySpan* spans, int64_t* nspans,
               int32_t*) const {
    // Spans are not capped: the tile loop walks them in 64-key chunks.
    *nspans = block_row_spans(BlockRow::of(mask, b, h, m), mask.block_k, key_limit, INT64_MAX, spans);
    return 0;
  }
};

struct StreamingPolicy {
  const StreamingParams& s;
  int64_t offset;  // seqlen_k - seqlen_q
  int64_t seqlen_k;
  int64_t tile_q;
  static constexpr MaskKind kMask = MaskKind::kStreaming;
  int64_t num_tiles(int64_t seqlen_q) const { return ceil_div(seqlen_q, tile_q); }
  int64_t max_spans() const { return 2; }
  int64_t max_columns() const { return 0; }
  int64_t plan(int64_t, int64_t, int64_t m, int64_t, KeySpan* spans, int64_t* nspans, int32_t*) const {
    const int64_t p0 = m * tile_q + offset;
    *nspans = streaming_spans(s, p0, p0 + tile_q, seqlen_k, kChunk, spans);  // p1 clipped inside
    return 0;
  }
};

}  // namespace

void block_sparse_forward(const AttentionParams& p, const BlockSparseParams& mask) {
  run_prefill_dispatch(p, BlockSparsePolicy{mask, mask.block_q});
}

void streaming_forward(const AttentionParams& p, const StreamingParams& s) {
  run_prefill_dispatch(p, StreamingPolicy{s, p.seqlen_k - p.seqlen_q, p.seqlen_k, /*tile_q=*/64});
}

void release_workspace() {
  for (int i = 0; i < 2; ++i) scratch_buffers()[i] = AlignedBuffer<char>();
}

}  // namespace sparse_attn::cpu::SA_CPU_NS
