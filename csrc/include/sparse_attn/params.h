// Plain parameter structs for the prefill attention ops. Both engines take these (raw
// pointers and element strides), so the CUDA launchers never see a torch tensor.
#pragma once
#include <cstdint>

namespace sparse_attn {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// q: [B, Sq, Hq, D], k/v: [B, Sk, Hkv, D], out: [B, Sq, Hq, D] (strides in elements,
// head_dim contiguous). lse: [B, Hq, Sq] float32, contiguous.
struct AttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  DType dtype = DType::kFloat32;
  int64_t batch = 0, seqlen_q = 0, seqlen_k = 0, heads_q = 0, heads_kv = 0, head_dim = 0;
  int64_t q_stride[3] = {0, 0, 0};  // batch, seq, head
  int64_t k_stride[3] = {0, 0, 0};
  int64_t v_stride[3] = {0, 0, 0};
  int64_t o_stride[3] = {0, 0, 0};
  float scale = 1.f;
  bool causal = true;
};

// Block-sparse pattern in the FlexAttention BlockMask layout. counts: [Bm, Hm, MB],
// indices: [Bm, Hm, MB, K]; Bm/Hm of 1 broadcast (stride 0). The optional full_* lists
// mark blocks that need no element mask; the union of both lists is attended.
struct BlockSparseParams {
  const int32_t* counts = nullptr;
  const int32_t* indices = nullptr;
  const int32_t* full_counts = nullptr;   // may be null
  const int32_t* full_indices = nullptr;  // may be null
  int64_t counts_stride[3] = {0, 0, 0};   // b, h, m
  int64_t indices_stride[4] = {0, 0, 0, 0};  // b, h, m, k
  int64_t full_counts_stride[3] = {0, 0, 0};
  int64_t full_indices_stride[4] = {0, 0, 0, 0};
  int64_t max_count = 0;       // K: capacity of indices' last dimension
  int64_t max_full_count = 0;  // capacity of full_indices' last dimension
  int64_t num_q_blocks = 0;    // MB
  int64_t num_k_blocks = 0;    // NB = ceil(Sk / block_k)
  int block_q = 64;
  int block_k = 64;
};

// Sink + local window (A-shape). A query at key position p attends key j iff
// j <= p and (j < sink_tokens or p - j < window_tokens).
struct StreamingParams {
  int64_t sink_tokens = 0;
  int64_t window_tokens = 0;
};

// Vertical-slash pattern (vertical_slash.h), per (batch, query head): ascending,
// duplicate-free key columns vertical[b, h, :vertical_count[b, h]] and diagonal offsets
// slash[b, h, :slash_count[b, h]] (the main diagonal is always added). Lists [Bv, Hv, N]
// with Bv/Hv of 1 broadcasting (stride 0), counts [Bv, Hv].
struct VerticalSlashParams {
  const int32_t* vertical = nullptr;
  const int32_t* vertical_count = nullptr;
  const int32_t* slash = nullptr;
  const int32_t* slash_count = nullptr;
  int64_t vertical_stride[2] = {0, 0};  // b, h (the list itself is contiguous)
  int64_t vertical_count_stride[2] = {0, 0};
  int64_t slash_stride[2] = {0, 0};
  int64_t slash_count_stride[2] = {0, 0};
  int64_t max_vertical = 0;  // capacity of the lists' last dimension
  int64_t max_slash = 0;
};

// Output of the vertical-slash index conversion, contiguous: block_count/column_count
// [B, H, MB], block_offset [B, H, MB, max_blocks] (first key of each listed key block),
// column_index [B, H, MB, max_columns].
struct VerticalSlashIndex {
  int32_t* block_count = nullptr;
  int32_t* block_offset = nullptr;
  int32_t* column_count = nullptr;
  int32_t* column_index = nullptr;
  int64_t max_blocks = 0;
  int64_t max_columns = 0;
};

}  // namespace sparse_attn
