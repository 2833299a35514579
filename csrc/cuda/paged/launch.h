// Torch-free entry points of the CUDA engine for the paged cache's bookkeeping: writing
// tokens with their page metadata (paged_kv_write), Quest's page bounds (quest_scores) and
// the keys of the page selection (quest_select). Plain C++: includable from g++-compiled
// sources (only <cuda_runtime_api.h> is needed). Every pointer is a device pointer, every
// call asynchronous on `stream`; each returns the first CUDA error (cudaErrorInvalidValue for
// arguments it cannot take). Arguments are validated by the torch glue first
// (bindings_cuda_paged.cpp, with the CPU ops' checks).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sparse_attn/paged.h"

namespace sparse_attn::cuda {

// ---------------------------------------------------------------- paged_kv_write
// The tokens of a write grouped by page (write_runs.h): run r is the tokens
// order[run_start[r]] .. order[run_start[r + 1] - 1], all of one page, in call order.
// order == nullptr: the identity; run_start == nullptr: one token per run (runs = ntokens).
struct WriteRuns {
  const int32_t* order = nullptr;
  const int32_t* run_start = nullptr;
  int64_t runs = 0;
};

struct PagedWriteArgs {
  PagedKVWrite w;  // w.page_ids / w.slots: device copies
  WriteRuns runs;
  bool vectorized = false;  // 16-byte accesses (paged_write_vectorizable must hold)
};

// Writes w.ntokens tokens (K/V rows into their pages) and keeps k_max/k_min exact, as the CPU
// engine does: per (page, KV head), the page's tokens in call order, slot 0 sets, other slots
// widen. One pass: a thread group per (run, KV head) walks its tokens. float32, bf16, fp16,
// any head_dim.
cudaError_t paged_kv_write(const PagedWriteArgs& args, cudaStream_t stream);
const char* paged_kv_write_kernel_name(DType dtype, bool vectorized);

// ---------------------------------------------------------------- quest_scores
struct QuestScoresArgs {
  PagedKVParams p;  // k_max, k_min (p.meta_stride), page_table, seqlens, sizes
  DType dtype = DType::kFloat32;  // of k_max / k_min
  const void* q = nullptr;        // [B, heads_q, D], any strides
  DType q_dtype = DType::kFloat32;
  int64_t q_stride[3] = {0, 0, 0};
  int64_t heads_q = 0;
  bool sum_reduce = false;
  bool vectorized = false;  // 16-byte metadata loads
  float* out = nullptr;     // [B, H_kv, max_pages], contiguous; -inf past each sequence
};

// The Quest bound of every (sequence, KV head, page) for the query heads of the KV head's
// group, reduced by max or sum (quest_bound in paged.h on 16-byte slices of a page's rows).
// `device`: the device it runs on (for the shared-memory limit of large groups).
cudaError_t quest_scores(const QuestScoresArgs& args, int device, cudaStream_t stream);
const char* quest_scores_kernel_name(DType dtype, bool vectorized);

// ---------------------------------------------------------------- quest_select
struct SelectKeysArgs {
  const float* scores = nullptr;  // [B, H_kv, P] contiguous
  const int32_t* seqlens = nullptr;
  int64_t batch = 0, heads_kv = 0, max_pages = 0, page_size = 1, k = 0, sink_pages = 0, recent_pages = 0;
  int64_t* keys = nullptr;   // [B, H_kv, P]: select_key of every page
  int32_t* counts = nullptr;  // [B, H_kv]: min(pages of the sequence, k)
};

// keys and counts of the selection (select_key, paged.h); the op then takes the k smallest
// keys of each row (torch.topk on the device) and lists their pages ascending.
cudaError_t quest_select_keys(const SelectKeysArgs& args, cudaStream_t stream);
inline const char* quest_select_keys_kernel_name() { return "quest_select_keys_kernel"; }

// Whether a write can use 16-byte accesses: every pointer 16-byte aligned and every element
// offset (strides, head_dim) a multiple of the vector's elements.
bool paged_write_vectorizable(const PagedKVWrite& w);
bool quest_scores_vectorizable(const QuestScoresArgs& a);

}  // namespace sparse_attn::cuda
