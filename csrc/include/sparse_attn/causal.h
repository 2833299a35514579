// Causal geometry with bottom-right alignment: query row i sits at key position
// i + (seqlen_k - seqlen_q), as in flash-attention.
#pragma once
#include <cstdint>
#include "sparse_attn/macros.h"

namespace sparse_attn {
SA_ABI_BEGIN

struct CausalGeometry {
  int64_t seqlen_q, seqlen_k;
  bool causal;

  SA_HOST_DEVICE int64_t offset() const { return seqlen_k - seqlen_q; }
  // Key position of query row i (the last key it may see when causal).
  SA_HOST_DEVICE int64_t key_pos(int64_t q_row) const { return q_row + offset(); }
  // One past the last key query row i may attend.
  SA_HOST_DEVICE int64_t key_end(int64_t q_row) const {
    if (!causal) return seqlen_k;
    int64_t e = key_pos(q_row) + 1;
    return e < 0 ? 0 : (e > seqlen_k ? seqlen_k : e);
  }
  // True if every (query, key) pair of rows [q0, q1) x keys [k0, k1) is visible, i.e.
  // the tile needs no element mask on account of causality or the sequence end.
  SA_HOST_DEVICE bool tile_fully_visible(int64_t q0, int64_t k1) const {
    return k1 <= seqlen_k && (!causal || k1 <= key_end(q0));
  }
  // True if no pair of the tile is visible.
  SA_HOST_DEVICE bool tile_empty(int64_t q1, int64_t k0) const {
    return k0 >= seqlen_k || (causal && k0 >= key_end(q1 - 1));
  }
};

SA_ABI_END
}  // namespace sparse_attn
