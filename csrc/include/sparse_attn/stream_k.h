// Stream-K partition of decode work (LeanAttention). All KV tiles of a batch lie on one
// line, output by output ((sequence, KV head) in order, each with its own ragged number of
// tiles); worker w of W takes the contiguous range
//   [w * q + min(w, r), (w + 1) * q + min(w + 1, r)),  q = T / W, r = T % W,
// so the first r workers get one tile more. A range is cut into segments at output
// boundaries. An output's first tile decides its host (the worker that merges its
// partials); every other segment of it is a partial that the host merges after a barrier.
// Torch-free; both engines and the schedule simulator use it.
#pragma once
#include <cstdint>
#include "sparse_attn/macros.h"

namespace sparse_attn {
SA_ABI_BEGIN

// Tiles [begin, end) of worker w.
SA_HOST_DEVICE void stream_k_range(int64_t total_tiles, int64_t workers, int64_t w, int64_t* begin, int64_t* end) {
  const int64_t q = total_tiles / workers, r = total_tiles % workers;
  *begin = w * q + (w < r ? w : r);
  *end = *begin + q + (w < r ? 1 : 0);
}

// The output holding global tile t: the last o with offsets[o] <= t, where offsets[o] is
// the first tile of output o (ascending, offsets[0] = 0; empty outputs share an offset with
// the next one and are skipped). Binary search over num_outputs entries.
SA_HOST_DEVICE int64_t stream_k_output_of(const int64_t* offsets, int64_t num_outputs, int64_t t) {
  int64_t lo = 0, hi = num_outputs;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= t) lo = mid; else hi = mid;
  }
  return lo;
}

// The worker holding global tile t.
SA_HOST_DEVICE int64_t stream_k_worker_of(int64_t total_tiles, int64_t workers, int64_t t) {
  const int64_t q = total_tiles / workers, r = total_tiles % workers;
  // The first r workers hold q + 1 tiles each.
  return t < r * (q + 1) ? t / (q + 1) : r + (t - r * (q + 1)) / q;
}

// One segment: tiles [tile_begin, tile_end) of output `output` (local to that output).
struct StreamKSegment {
  int64_t output;
  int64_t tile_begin;
  int64_t tile_end;
  bool host;  // the segment holds the output's first tile
};

// Walks worker w's segments in order, calling f(const StreamKSegment&). offsets has
// num_outputs + 1 entries (offsets[num_outputs] = total tiles).
template <typename F>
SA_HOST_DEVICE void stream_k_segments(const int64_t* offsets, int64_t num_outputs, int64_t workers, int64_t w, F&& f) {
  const int64_t total = offsets[num_outputs];
  int64_t begin = 0, end = 0;
  stream_k_range(total, workers, w, &begin, &end);
  int64_t t = begin;
  while (t < end) {
    const int64_t o = stream_k_output_of(offsets, num_outputs, t);
    const int64_t stop = offsets[o + 1] < end ? offsets[o + 1] : end;
    f(StreamKSegment{o, t - offsets[o], stop - offsets[o], t == offsets[o]});
    t = stop;
  }
}

SA_ABI_END
}  // namespace sparse_attn
