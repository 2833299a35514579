// Which (query row, key) pairs of one 64-row query tile the prefill kernel keeps: the key
// chunks it walks, which chunks skip the element mask, and the element mask itself.
// Torch-free and CuTe-free, host + device: host_checks/prefill_layout_check.cu replays it
// for whole random problems against masks built from first principles.
#pragma once
#include <cstdint>

#include "launch.h"
#include "sparse_attn/causal.h"
#include "sparse_attn/key_spans.h"
#include "sparse_attn/vertical_slash.h"

namespace sparse_attn::cuda::prefill {

struct TileMask {
  CausalGeometry geo;
  StreamingParams stream;
  bool streaming;
  bool vertical_slash;
  int64_t q0, q_last;  // the tile's first and last real query rows

  // Keys of a gathered column tile's rows that hold no column (never visible).
  static constexpr int32_t kNoKey = 0x7fffffff;

  SA_HOST_DEVICE static TileMask of(const PrefillArgs& a, int64_t q0, int64_t rows) {
    return TileMask{CausalGeometry{a.p.seqlen_q, a.p.seqlen_k, a.p.causal}, a.stream,
                    a.mode == PrefillMode::kStreaming, a.mode == PrefillMode::kVerticalSlash, q0, q0 + rows - 1};
  }

  // Vertical-slash: the tile's row of the 64-row index (block_size 64, so row q0 / 64).
  SA_HOST_DEVICE int64_t vs_index_row(const PrefillArgs& a, int64_t b, int64_t h) const {
    return (b * a.p.heads_q + h) * ((a.p.seqlen_q + 63) / 64) + q0 / 64;
  }
  // Vertical-slash: the element-mask bitsets of (b, h).
  SA_HOST_DEVICE VSBits vs_bits(const PrefillArgs& a, int64_t b, int64_t h) const {
    return VSBits::of_head(a.vs.bits, b * a.p.heads_q + h, geo.seqlen_k);
  }
  // Vertical-slash: the tile's gathered columns (ascending, outside its key blocks).
  SA_HOST_DEVICE const int32_t* vs_columns_of(const PrefillArgs& a, int64_t b, int64_t h, int64_t* n) const {
    const int64_t row = vs_index_row(a, b, h);
    const int64_t c = a.vs.index.column_count[row];
    *n = c < 0 ? 0 : (c > a.vs.index.max_columns ? a.vs.index.max_columns : c);
    return a.vs.index.column_index + row * a.vs.index.max_columns;
  }

  // The tile's key chunks for query head h of batch b (never past the last row's last key).
  SA_HOST_DEVICE KeyChunkWalker walker(const PrefillArgs& a, int64_t b, int64_t h, int64_t chunk) const {
    if (streaming) {
      KeySpan spans[2];
      const int n = streaming_spans(stream, geo.key_pos(q0), geo.key_pos(q_last) + 1, geo.seqlen_k, chunk, spans);
      return KeyChunkWalker::of_spans(spans, n, chunk);
    }
    if (vertical_slash) {
      // The index lists first keys of 64-key blocks: walked as block ids of 1-key blocks.
      const int64_t r = vs_index_row(a, b, h);
      BlockRow row;
      row.idx = a.vs.index.block_offset + r * a.vs.index.max_blocks;
      const int64_t c = a.vs.index.block_count[r];
      row.count = c < 0 ? 0 : (c > a.vs.index.max_blocks ? a.vs.index.max_blocks : c);
      return KeyChunkWalker::of_blocks(row, 1, geo.key_end(q_last), chunk);
    }
    const BlockRow row = BlockRow::of(a.mask, b, h, q0 / a.mask.block_q);
    return KeyChunkWalker::of_blocks(row, a.mask.block_k, geo.key_end(q_last), chunk);
  }

  // True if every key of [k0, k1) is visible to every row of the tile: no element mask.
  SA_HOST_DEVICE bool chunk_full(int64_t k0, int64_t k1) const {
    return geo.tile_fully_visible(q0, k1) && (!streaming || streaming_chunk_full(stream, geo.key_pos(q_last), k0, k1));
  }

  // Vertical-slash: true if the 64-key chunk at k0 (a listed block) needs no element mask
  // (the CPU engine's test, prefill_loop.h chunk_fully_visible).
  SA_HOST_DEVICE bool vs_chunk_full(const VSBits& vb, int64_t k0) const {
    return geo.tile_fully_visible(q0, k0 + 64) && vb.chunk_full(geo.key_pos(q0), geo.key_pos(q_last) + 1, k0);
  }
  // Vertical-slash: bit t set iff row `row` sees key k0 + t of a listed block (the CPU
  // engine's span_bits under low_bits(key_end - k0)). Rows past the tile's last real row
  // (the padding of a ragged last tile) see nothing: their key position may lie past the
  // sequence, where VSBits::row must not be asked.
  SA_HOST_DEVICE uint64_t vs_row_bits(const VSBits& vb, int64_t row, int64_t k0) const {
    const int64_t e = geo.key_end(row);
    if (e <= k0 || row > q_last) return 0;
    const uint64_t bits = vb.row(geo.key_pos(row), k0);
    return e - k0 >= 64 ? bits : bits & ((uint64_t(1) << (e - k0)) - 1);
  }
  // Vertical-slash: a gathered column `key` (kNoKey for none) is visible to `row`.
  SA_HOST_DEVICE bool column_visible(int64_t row, int64_t key) const { return key < geo.key_end(row); }

  // The element mask inside a walked chunk (causal, sequence end, sink + window).
  SA_HOST_DEVICE bool visible(int64_t row, int64_t key) const {
    return key < geo.key_end(row) && (!streaming || streaming_visible(stream, geo.key_pos(row), key));
  }
};

// The chunks of one tile in the kernel's order: the walker's 64-key chunks (first key
// k >= 0), then, for vertical-slash, the tile's gathered columns 64 list entries at a time
// (encoded as k = -2 - t for the tile of entries [64 t, 64 t + 64)), then -1.
struct TileChunks {
  KeyChunkWalker walk;
  int64_t ncols = 0, col_next = 0;

  SA_HOST_DEVICE int64_t next() {
    const int64_t k = walk.next();
    if (k >= 0 || col_next >= ncols) return k;
    const int64_t t = col_next / 64;
    col_next += 64;
    return -2 - t;
  }
  SA_HOST_DEVICE static bool gathered(int64_t k) { return k <= -2; }
  // First list entry of a gathered chunk.
  SA_HOST_DEVICE static int64_t first_column(int64_t k) { return (-2 - k) * 64; }
};

}  // namespace sparse_attn::cuda::prefill
