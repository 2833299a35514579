// Turning a query tile's sparsity pattern into a short list of contiguous key spans.
// Both engines walk spans: a span is a run of keys [start, end) the tile attends; the
// element mask inside a span (causality, streaming window, sequence end) is applied by
// the tile loop from the geometry alone, so a span may safely cover masked keys.
#pragma once
#include <cstdint>
#include "sparse_attn/macros.h"
#include "sparse_attn/params.h"

namespace sparse_attn {
SA_ABI_BEGIN

struct KeySpan {
  int64_t start;
  int64_t end;
};

// Row m of a block-sparse mask, for batch b and query head h (broadcast handled by the
// strides, which are 0 on a broadcast dimension).
struct BlockRow {
  const int32_t* idx = nullptr;
  int64_t idx_step = 1;
  int64_t count = 0;
  const int32_t* full_idx = nullptr;
  int64_t full_step = 1;
  int64_t full_count = 0;

  SA_HOST_DEVICE static BlockRow of(const BlockSparseParams& p, int64_t b, int64_t h, int64_t m) {
    BlockRow r;
    r.count = p.counts[b * p.counts_stride[0] + h * p.counts_stride[1] + m * p.counts_stride[2]];
    r.idx = p.indices + b * p.indices_stride[0] + h * p.indices_stride[1] + m * p.indices_stride[2];
    r.idx_step = p.indices_stride[3];
    if (p.full_counts != nullptr) {
      r.full_count = p.full_counts[b * p.full_counts_stride[0] + h * p.full_counts_stride[1] +
                                   m * p.full_counts_stride[2]];
      r.full_idx = p.full_indices + b * p.full_indices_stride[0] + h * p.full_indices_stride[1] +
                   m * p.full_indices_stride[2];
      r.full_step = p.full_indices_stride[3];
    }
    return r;
  }
};

// Walks the union of a row's two sorted block lists in ascending order and emits runs of
// consecutive blocks as key spans of at most max_blocks blocks (max_blocks >= 1), clipped
// to [0, key_limit). Blocks at or past key_limit / block_k (e.g. entirely in the causal
// future of the whole tile) are skipped. Returns the number of spans written to `out`
// (at most count + full_count).
SA_HOST_DEVICE int64_t block_row_spans(const BlockRow& row, int block_k, int64_t key_limit,
                                       int64_t max_blocks, KeySpan* out) {
  int64_t i = 0, j = 0, n = 0;
  int64_t run_start = -1, run_end = -1;  // in blocks, [run_start, run_end)
  while (i < row.count || j < row.full_count) {
    int64_t a = i < row.count ? row.idx[i * row.idx_step] : INT64_MAX;
    int64_t c = j < row.full_count ? row.full_idx[j * row.full_step] : INT64_MAX;
    int64_t blk = a < c ? a : c;
    if (a == blk) ++i;
    if (c == blk) ++j;  // a block in both lists is attended once
    // Validated lists are ascending and in range; without validation (validate=False) a
    // negative, repeated or out-of-order id is dropped here rather than read out of bounds.
    if (blk < 0 || (run_start >= 0 && blk < run_end)) continue;
    if (blk * block_k >= key_limit) break;  // sorted: every later block is past the limit too
    if (run_start >= 0 && blk == run_end && run_end - run_start < max_blocks) {
      run_end = blk + 1;
      continue;
    }
    if (run_start >= 0) out[n++] = {run_start * block_k, run_end * block_k};
    run_start = blk;
    run_end = blk + 1;
  }
  if (run_start >= 0) out[n++] = {run_start * block_k, run_end * block_k};
  for (int64_t s = 0; s < n; ++s)
    if (out[s].end > key_limit) out[s].end = key_limit;
  return n;
}

// Streaming (sink + window) spans for query rows [q0, q1) at key positions p0..p1-1
// (p = row + seqlen_k - seqlen_q): the sink [0, sink) and the window
// [p0 - window + 1, p1), both clipped to [0, seqlen_k), merged when they touch.
// `align` rounds span starts down (and ends up, within seqlen_k) so that spans begin on
// the engine's packing granularity; the extra keys are removed by the element mask.
// Returns the number of spans (0, 1 or 2).
SA_HOST_DEVICE int streaming_spans(const StreamingParams& s, int64_t p0, int64_t p1,
                                   int64_t seqlen_k, int64_t align, KeySpan* out) {
  auto clip = [&](int64_t x) { return x < 0 ? 0 : (x > seqlen_k ? seqlen_k : x); };
  auto down = [&](int64_t x) { return x / align * align; };
  auto up = [&](int64_t x) { return clip((x + align - 1) / align * align); };
  int64_t hi = clip(p1);  // keys the tile may see at all (causal)
  int n = 0;
  int64_t sink_end = up(s.sink_tokens < hi ? s.sink_tokens : hi);
  int64_t win_start = down(clip(p0 - s.window_tokens + 1));
  int64_t win_end = up(hi);
  if (s.window_tokens <= 0) win_start = win_end;
  if (sink_end > 0 && sink_end >= win_start && win_start < win_end) {
    out[n++] = {0, win_end};  // sink and window touch: one span
    return n;
  }
  if (sink_end > 0) out[n++] = {0, sink_end};
  if (win_start < win_end) out[n++] = {win_start, win_end};
  return n;
}

// Element visibility for streaming: key j is visible from key position p.
SA_HOST_DEVICE bool streaming_visible(const StreamingParams& s, int64_t p, int64_t j) {
  return j <= p && (j < s.sink_tokens || p - j < s.window_tokens);
}

SA_ABI_END
}  // namespace sparse_attn
