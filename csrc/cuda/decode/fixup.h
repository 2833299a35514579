// The stream-K fix-up protocol of the persistent decode kernel, CUDA-free so that the host
// check (host_checks/decode_protocol_check.cu) replays it over every CTA ordering.
//
// One CTA per plan worker. Block `blk` of `grid` runs worker grid - 1 - blk: blocks are
// dispatched in ascending order, so the workers a host waits for (always later workers,
// see below) were dispatched first; with the occupancy-sized grid every CTA is resident
// anyway. A worker walks its segments (stream_k.h) in order:
//   kFinish    the segment is the whole output: normalize, store out and lse;
//   kPublish   a non-host segment (it never holds the output's first tile): store the partial
//              (state, unnormalized acc) in workspace slot `slot`, __threadfence, then set
//              flag[slot] = 1 (release);
//   kMerge     the host segment of an output spread over `nparts` workers: wait for
//              flag[first_slot + r] (r = 1 .. nparts-1, acquire), merge those partials in
//              worker order after its own, reset each flag to 0 (ready for the next launch),
//              store out and lse.
// A non-host segment is always a worker's first segment and a kMerge segment its last, so a
// worker publishes before it ever waits, and waits only for later workers: no cycle.
// Separate-merge mode (the fallback): every segment publishes its partial without flags and
// a second kernel merges each output.
#pragma once
#include <cstdint>

#include "sparse_attn/macros.h"
#include "sparse_attn/stream_k.h"

namespace sparse_attn::cuda::decode {

enum class FixupKind : int { kFinish = 0, kPublish = 1, kMerge = 2 };

struct FixupRole {
  FixupKind kind;
  int64_t slot;        // this segment's workspace slot (slot_base[o] + rank)
  int64_t first_slot;  // slot_base[o]: the host's slot
  int64_t nparts;      // workers the output spans
};

SA_HOST_DEVICE int64_t worker_of_block(int64_t block, int64_t grid) { return grid - 1 - block; }

SA_HOST_DEVICE FixupRole fixup_role(const int64_t* offsets, const int64_t* slot_base, int64_t num_outputs,
                                    int64_t workers, int64_t w, const StreamKSegment& seg, bool separate_merge) {
  const int64_t o = seg.output, total = offsets[num_outputs];
  const int64_t rank = w - stream_k_worker_of(total, workers, offsets[o]);
  FixupRole r;
  r.first_slot = slot_base[o];
  r.slot = slot_base[o] + rank;
  r.nparts = slot_base[o + 1] - slot_base[o];
  if (separate_merge || !seg.host) r.kind = FixupKind::kPublish;
  else r.kind = r.nparts > 1 ? FixupKind::kMerge : FixupKind::kFinish;
  return r;
}

// The flags follow the softmax states in ws_state: [slots * G * 2] floats, then one int32
// flag per slot (zeroed when the plan is made, left zero by every launch).
SA_HOST_DEVICE int64_t flags_offset(int64_t slots, int64_t group) { return slots * group * 2; }

// Token u of a segment's pages [j0, j1) (concatenated, every page counted as page_size rows):
// the row is list index j = j0 + u / page_size, slot u % page_size; it holds a token if the
// slot is below the page's fill (only a sequence's last page is partly filled).
struct SegmentRow {
  int64_t list_index;
  int64_t slot;
};
SA_HOST_DEVICE SegmentRow segment_row(int64_t j0, int64_t page_size, int64_t u) {
  return {j0 + u / page_size, u % page_size};
}

// Compute-side partition of a chunk row: lane l8 (of the 8 lanes a row is split over) holds
// elements e < D / 8 of the row at these columns, i.e. the 16-byte vectors l8 + 8 v: each
// quarter-warp reads 128 contiguous bytes of shared memory.
SA_HOST_DEVICE int lane_column(int l8, int e) { return (l8 + 8 * (e / 8)) * 8 + e % 8; }

}  // namespace sparse_attn::cuda::decode
