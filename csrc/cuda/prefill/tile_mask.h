// Which (query row, key) pairs of one 64-row query tile the prefill kernel keeps: the key
// chunks it walks, which chunks skip the element mask, and the element mask itself.
// Torch-free and CuTe-free, host + device: host_checks/prefill_layout_check.cu replays it
// for whole random problems against masks built from first principles.
#pragma once
#include <cstdint>

#include "launch.h"
#include "sparse_attn/causal.h"
#include "sparse_attn/key_spans.h"

namespace sparse_attn::cuda::prefill {

struct TileMask {
  CausalGeometry geo;
  StreamingParams stream;
  bool streaming;
  int64_t q0, q_last;  // the tile's first and last real query rows

  SA_HOST_DEVICE static TileMask of(const PrefillArgs& a, int64_t q0, int64_t rows) {
    return TileMask{CausalGeometry{a.p.seqlen_q, a.p.seqlen_k, a.p.causal}, a.stream,
                    a.mode == PrefillMode::kStreaming, q0, q0 + rows - 1};
  }

  // The tile's key chunks for query head h of batch b (never past the last row's last key).
  SA_HOST_DEVICE KeyChunkWalker walker(const PrefillArgs& a, int64_t b, int64_t h, int64_t chunk) const {
    if (streaming) {
      KeySpan spans[2];
      const int n = streaming_spans(stream, geo.key_pos(q0), geo.key_pos(q_last) + 1, geo.seqlen_k, chunk, spans);
      return KeyChunkWalker::of_spans(spans, n, chunk);
    }
    const BlockRow row = BlockRow::of(a.mask, b, h, q0 / a.mask.block_q);
    return KeyChunkWalker::of_blocks(row, a.mask.block_k, geo.key_end(q_last), chunk);
  }

  // True if every key of [k0, k1) is visible to every row of the tile: no element mask.
  SA_HOST_DEVICE bool chunk_full(int64_t k0, int64_t k1) const {
    return geo.tile_fully_visible(q0, k1) && (!streaming || streaming_chunk_full(stream, geo.key_pos(q_last), k0, k1));
  }

  // The element mask inside a walked chunk (causal, sequence end, sink + window).
  SA_HOST_DEVICE bool visible(int64_t row, int64_t key) const {
    return key < geo.key_end(row) && (!streaming || streaming_visible(stream, geo.key_pos(row), key));
  }
};

}  // namespace sparse_attn::cuda::prefill
