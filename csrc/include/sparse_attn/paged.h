// Paged KV cache for decode (vLLM layout) and Quest's page bound. Torch-free; the CUDA
// engine reuses the parameter struct, the page walk and the bound.
//
//   k_pages, v_pages [num_pages, page_size, H_kv, D]; token t of sequence b lives in page
//   page_table[b, t / page_size], slot t % page_size; k_max, k_min [num_pages, H_kv, D] are
//   the channel-wise max / min of the keys stored in each page (kept current on writes).
//   A selection lists logical page indices (0 = the sequence's first page) per (b, kv head).
#pragma once
#include <cstdint>
#include <sstream>
#include <string>

#include "sparse_attn/macros.h"
#include "sparse_attn/params.h"

namespace sparse_attn {

struct PagedKVParams {
  const void* k_pages = nullptr;
  const void* v_pages = nullptr;
  const void* k_max = nullptr;  // may be null where the op does not read it
  const void* k_min = nullptr;
  const int32_t* page_table = nullptr;
  const int32_t* seqlens = nullptr;
  int64_t num_pages = 0, page_size = 0, heads_kv = 0, head_dim = 0, batch = 0, max_pages = 0;
  int64_t page_stride[3] = {0, 0, 0};  // k/v pages: page, slot, head (elements; dim 3 contiguous)
  int64_t meta_stride[2] = {0, 0};     // k_max/k_min: page, head
  int64_t table_stride = 0;            // page_table row stride
};

// A page selection: pages [B, H_kv, K] logical page ids, counts [B, H_kv]. Null pages
// means every page of the sequence.
struct PageSelection {
  const int32_t* pages = nullptr;
  const int32_t* counts = nullptr;
  int64_t pages_stride[3] = {0, 0, 0};
  int64_t counts_stride[2] = {0, 0};
  int64_t capacity = 0;
};

// Writing ntokens new tokens: token n goes to page page_ids[n], slot slots[n], for every
// KV head; k/v sources [N, H_kv, D] (strides: token, head). Updates k_max/k_min.
struct PagedKVWrite {
  void* k_pages = nullptr;
  void* v_pages = nullptr;
  void* k_max = nullptr;
  void* k_min = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const int32_t* page_ids = nullptr;
  const int32_t* slots = nullptr;
  int64_t ntokens = 0, heads_kv = 0, head_dim = 0;
  int64_t page_stride[3] = {0, 0, 0};
  int64_t meta_stride[2] = {0, 0};
  int64_t src_stride[2] = {0, 0};
  int64_t v_src_stride[2] = {0, 0};
  DType dtype = DType::kFloat32;
};

// Decode inputs/outputs: q, out [B, H_q, D] (strides: batch, head), lse [B, H_q] float32.
struct PagedDecodeIO {
  const void* q = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  int64_t heads_q = 0;
  int64_t q_stride[2] = {0, 0};
  int64_t o_stride[2] = {0, 0};
  float scale = 1.f;
  DType dtype = DType::kFloat32;
};

// A stream-K decode plan (stream_k.h) over the outputs (b, g) in order: offsets
// [B * H_kv + 1] (first tile of each output; tile = tile_pages pages), slot_base
// [B * H_kv + 1] (first workspace slot of each output's partials, one per worker it spans),
// and the workspace: per slot and query head of the group a softmax state (2 floats) and
// head_dim partial outputs.
struct StreamKPlan {
  const int64_t* offsets = nullptr;
  const int64_t* slot_base = nullptr;
  int64_t workers = 1;
  int64_t tile_pages = 1;
  float* ws_state = nullptr;  // [slots, G, 2]
  float* ws_acc = nullptr;    // [slots, G, D]
};

// Host-side validation (the kernels then never read out of bounds). Empty string if valid.
inline std::string validate_paged(const PagedKVParams& p) {
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t len = p.seqlens[b];
    if (len < 0 || len > p.max_pages * p.page_size) {
      std::ostringstream e;
      e << "seqlens[" << b << "] = " << len << " is outside [0, max_pages * page_size = "
        << p.max_pages * p.page_size << "]";
      return e.str();
    }
    for (int64_t i = 0; i < (len + p.page_size - 1) / p.page_size; ++i) {
      const int64_t page = p.page_table[b * p.table_stride + i];
      if (page < 0 || page >= p.num_pages) {
        std::ostringstream e;
        e << "page_table[" << b << ", " << i << "] = " << page << " is not a page id in [0, " << p.num_pages
          << ") (sequence " << b << " has " << len << " tokens)";
        return e.str();
      }
    }
  }
  return "";
}

inline std::string validate_selection(const PagedKVParams& p, const PageSelection& s) {
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t npages = (p.seqlens[b] + p.page_size - 1) / p.page_size;
    for (int64_t g = 0; g < p.heads_kv; ++g) {
      const int64_t c = s.counts[b * s.counts_stride[0] + g * s.counts_stride[1]];
      if (c < 0 || c > s.capacity) {
        std::ostringstream e;
        e << "counts[" << b << ", " << g << "] = " << c << " is outside [0, " << s.capacity << "]";
        return e.str();
      }
      int64_t prev = -1;
      for (int64_t i = 0; i < c; ++i) {
        const int64_t page = s.pages[b * s.pages_stride[0] + g * s.pages_stride[1] + i * s.pages_stride[2]];
        if (page <= prev || page >= npages) {
          std::ostringstream e;
          e << "pages[" << b << ", " << g << ", " << i << "] = " << page
            << (page <= prev ? " is not above the previous entry (pages must be strictly ascending)"
                             : " is not a page of the sequence")
            << " (sequence " << b << " has " << npages << " pages)";
          return e.str();
        }
        prev = page;
      }
    }
  }
  return "";
}

SA_ABI_BEGIN

// Quest's bound on q . k for every key k of a page with channel-wise extremes kmax/kmin:
// sum_d max(q_d * kmax_d, q_d * kmin_d). Scalar reference form; engines vectorize it.
template <typename T>
SA_HOST_DEVICE float quest_bound(const float* q, const T* kmax, const T* kmin, int64_t D) {
  float s = 0.f;
  for (int64_t d = 0; d < D; ++d) {
    const float a = q[d] * static_cast<float>(kmax[d]), b = q[d] * static_cast<float>(kmin[d]);
    s += a > b ? a : b;
  }
  return s;
}

SA_ABI_END
}  // namespace sparse_attn
