// Online-softmax state of one output row, and the merge of two partial states.
// The running max is kept in the same (natural-log, already scaled) units as the scores,
// so lse = max + log(sum). An empty state has max = -inf and sum = 0.
#pragma once
#include <cmath>
#include "sparse_attn/macros.h"

namespace sparse_attn {
SA_ABI_BEGIN

struct SoftmaxRowState {
  float max;
  float sum;

  SA_HOST_DEVICE static SoftmaxRowState empty() { return {-INFINITY, 0.f}; }

  // Take in a tile whose row maximum is tile_max. Returns the factor by which the
  // accumulated output must be multiplied; the caller then adds the tile's exp-sum
  // (computed against the returned new max via new_max()) with add_sum().
  SA_HOST_DEVICE float rescale_to(float tile_max) {
    if (tile_max <= max) return 1.f;  // the common case once a row has seen its peak
    float new_max = tile_max;
    // exp(-inf - finite) = 0 is what we want; guard -inf - -inf (NaN) explicitly.
    float factor = (max == -INFINITY) ? 0.f : expf(max - new_max);
    sum *= factor;
    max = new_max;
    return factor;
  }
  SA_HOST_DEVICE void add_sum(float tile_sum) { sum += tile_sum; }

  SA_HOST_DEVICE float lse() const { return sum > 0.f ? max + logf(sum) : -INFINITY; }
  SA_HOST_DEVICE float inv_sum() const { return sum > 0.f ? 1.f / sum : 0.f; }
};

// Merge partial state b into a: returns the factors to apply to a's and b's accumulated
// outputs (acc = fa * acc_a + fb * acc_b). Used by split-KV / stream-K decode.
struct MergeFactors {
  float a, b;
};
SA_HOST_DEVICE MergeFactors merge_into(SoftmaxRowState& a, const SoftmaxRowState& b) {
  float m = a.max > b.max ? a.max : b.max;
  if (m == -INFINITY) return {0.f, 0.f};
  float fa = a.max == -INFINITY ? 0.f : expf(a.max - m);
  float fb = b.max == -INFINITY ? 0.f : expf(b.max - m);
  a.sum = a.sum * fa + b.sum * fb;
  a.max = m;
  return {fa, fb};
}

SA_ABI_END
}  // namespace sparse_attn
