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

// The union of a row's two sorted block lists, one block id at a time, ascending; a block
// in both lists comes once. Validated lists are ascending and in range; without validation
// (validate=False) a negative, repeated or out-of-order id is dropped here rather than read
// out of bounds. Both engines walk rows with it (the CUDA kernel one key chunk at a time).
struct BlockRowCursor {
  BlockRow row;
  int64_t i = 0, j = 0, last = -1;

  BlockRowCursor() = default;
  SA_HOST_DEVICE explicit BlockRowCursor(const BlockRow& r) : row(r) {}
  // The next block id, or -1 when both lists are done.
  SA_HOST_DEVICE int64_t next() {
    while (i < row.count || j < row.full_count) {
      const int64_t a = i < row.count ? row.idx[i * row.idx_step] : INT64_MAX;
      const int64_t c = j < row.full_count ? row.full_idx[j * row.full_step] : INT64_MAX;
      const int64_t blk = a < c ? a : c;
      if (a == blk) ++i;
      if (c == blk) ++j;
      if (blk < 0 || blk <= last) continue;
      last = blk;
      return blk;
    }
    return -1;
  }
};

// Walks the union of a row's two sorted block lists in ascending order and emits runs of
// consecutive blocks as key spans of at most max_blocks blocks (max_blocks >= 1), clipped
// to [0, key_limit). Blocks at or past key_limit / block_k (e.g. entirely in the causal
// future of the whole tile) are skipped. Returns the number of spans written to `out`
// (at most count + full_count).
SA_HOST_DEVICE int64_t block_row_spans(const BlockRow& row, int block_k, int64_t key_limit,
                                       int64_t max_blocks, KeySpan* out) {
  int64_t n = 0;
  int64_t run_start = -1, run_end = -1;  // in blocks, [run_start, run_end)
  BlockRowCursor cur(row);
  for (int64_t blk = cur.next(); blk >= 0; blk = cur.next()) {
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
  int64_t sink_end = up(s.sink_tokens < hi ? s.sink_tokens : hi);
  int64_t win_start = down(clip(p0 - s.window_tokens + 1));
  int64_t win_end = up(hi);
  if (s.window_tokens <= 0) win_start = win_end;
  // (Constant indices into `out` only, so that a caller's array can live in registers.)
  if (sink_end > 0 && sink_end >= win_start && win_start < win_end) {
    out[0] = {0, win_end};  // sink and window touch: one span
    return 1;
  }
  const bool window = win_start < win_end;
  if (sink_end > 0) {
    out[0] = {0, sink_end};
    if (window) out[1] = {win_start, win_end};
    return window ? 2 : 1;
  }
  if (window) out[0] = {win_start, win_end};
  return window ? 1 : 0;
}

// True if every key of [k0, k1) is in the sink or in the window of every key position
// up to p_last (the causal part is checked separately, CausalGeometry::tile_fully_visible).
SA_HOST_DEVICE bool streaming_chunk_full(const StreamingParams& s, int64_t p_last, int64_t k0, int64_t k1) {
  return k1 <= s.sink_tokens || p_last - k0 < s.window_tokens;
}

// The key chunks (runs of `chunk` keys starting at multiples of `chunk`) of a query tile,
// ascending, one at a time: from a block row (block_k a multiple of chunk; blocks clipped to
// key_limit) or from up to two spans (streaming_spans with align = chunk). Walking the
// block list lazily keeps the CUDA kernel's state to a few registers; host_checks compare
// it with block_row_spans, which the CPU engine uses.
struct KeyChunkWalker {
  BlockRowCursor cur;
  KeySpan spans[2] = {{0, 0}, {0, 0}};
  int nspans = 0, next_span = 0;
  bool from_blocks = false;
  int64_t block_k = 0, key_limit = 0, chunk = 64;
  int64_t pos = 0, end = 0;  // the current block or span: chunks left in [pos, end)

  SA_HOST_DEVICE static KeyChunkWalker of_blocks(const BlockRow& row, int64_t block_k, int64_t key_limit,
                                                 int64_t chunk) {
    KeyChunkWalker w;
    w.cur = BlockRowCursor(row);
    w.from_blocks = true;
    w.block_k = block_k;
    w.key_limit = key_limit;
    w.chunk = chunk;
    return w;
  }
  SA_HOST_DEVICE static KeyChunkWalker of_spans(const KeySpan* s, int n, int64_t chunk) {
    KeyChunkWalker w;
    for (int i = 0; i < n && i < 2; ++i) w.spans[i] = s[i];
    w.nspans = n < 2 ? n : 2;
    w.chunk = chunk;
    return w;
  }
  // The next chunk's first key, or -1 when done.
  SA_HOST_DEVICE int64_t next() {
    while (pos >= end) {
      if (from_blocks) {
        const int64_t blk = cur.next();
        if (blk < 0 || blk * block_k >= key_limit) return -1;  // sorted: the rest is past it too
        pos = blk * block_k;
        end = pos + block_k < key_limit ? pos + block_k : key_limit;
      } else {
        if (next_span >= nspans) return -1;
        // constant indices only: the CUDA kernel keeps the walker in registers
        pos = next_span == 0 ? spans[0].start : spans[1].start;
        end = next_span == 0 ? spans[0].end : spans[1].end;
        ++next_span;
      }
    }
    const int64_t k0 = pos;
    pos += chunk;
    return k0;
  }
};

// Element visibility for streaming: key j is visible from key position p.
SA_HOST_DEVICE bool streaming_visible(const StreamingParams& s, int64_t p, int64_t j) {
  return j <= p && (j < s.sink_tokens || p - j < s.window_tokens);
}

SA_ABI_END
}  // namespace sparse_attn
