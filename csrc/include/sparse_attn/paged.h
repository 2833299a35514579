// Paged KV cache for decode (vLLM layout) and Quest's page bound. Torch-free; the CUDA
// engine reuses the parameter struct, the page walk and the bound.
//
//   k_pages, v_pages [num_pages, page_size, H_kv, D]; token t of sequence b lives in page
//   page_table[b, t / page_size], slot t % page_size; k_max, k_min [num_pages, H_kv, D] are
//   the channel-wise max / min of the keys stored in each page (kept current on writes).
//   A selection lists logical page indices (0 = the sequence's first page) per (b, kv head).
#pragma once
#include <cstdint>
#include <cmath>
#include <cstring>
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

// Writing token n of a PagedKVWrite for KV head g, as the CPU engine does (host code): its K
// and V rows into page page_ids[n], slot slots[n], and the page's metadata: set to the key
// at slot 0, widened by it at other slots (float comparisons, exact for every dtype; the
// stored values are the key's own elements). Applied to one head's tokens in call order it
// gives the exact max/min of the stored keys. The CUDA engine's write kernel is checked
// against it on the host (cuda/host_checks/paged_ops_check.cu).
template <typename T>
inline void write_token_head(const PagedKVWrite& w, int64_t n, int64_t g) {
  const int64_t D = w.head_dim, page = w.page_ids[n], slot = w.slots[n];
  const T* ks = static_cast<const T*>(w.k) + n * w.src_stride[0] + g * w.src_stride[1];
  const T* vs = static_cast<const T*>(w.v) + n * w.v_src_stride[0] + g * w.v_src_stride[1];
  const int64_t row = page * w.page_stride[0] + slot * w.page_stride[1] + g * w.page_stride[2];
  std::memcpy(static_cast<T*>(w.k_pages) + row, ks, D * sizeof(T));
  std::memcpy(static_cast<T*>(w.v_pages) + row, vs, D * sizeof(T));
  T* mx = static_cast<T*>(w.k_max) + page * w.meta_stride[0] + g * w.meta_stride[1];
  T* mn = static_cast<T*>(w.k_min) + page * w.meta_stride[0] + g * w.meta_stride[1];
  if (slot == 0) {
    std::memcpy(mx, ks, D * sizeof(T));
    std::memcpy(mn, ks, D * sizeof(T));
    return;
  }
  for (int64_t d = 0; d < D; ++d) {
    const float x = static_cast<float>(ks[d]);  // exact: T -> float -> T round trips
    if (x > static_cast<float>(mx[d])) mx[d] = ks[d];
    if (x < static_cast<float>(mn[d])) mn[d] = ks[d];
  }
}

// Quest's bound on q . k for every key k of a page with channel-wise extremes kmax/kmin:
// sum_d max(q_d * kmax_d, q_d * kmin_d). Scalar reference form; engines vectorize it.
// The rule of every engine for special values: a zero q_d contributes 0 whatever the
// metadata (0 x inf would be NaN: a channel the query ignores cannot void the bound);
// otherwise the channel's term is NaN if either product is, and the sum is plain float
// addition (inf + -inf is NaN). Vector forms that compute 0 x inf may fall back to this
// one where their result is NaN: they agree everywhere else.
template <typename T>
SA_HOST_DEVICE float quest_bound(const float* q, const T* kmax, const T* kmin, int64_t D) {
  float s = 0.f;
  for (int64_t d = 0; d < D; ++d) {
    const float a = q[d] * static_cast<float>(kmax[d]), b = q[d] * static_cast<float>(kmin[d]);
    s += q[d] == 0.f ? 0.f : (a > b || a != a ? a : b);
  }
  return s;
}

// Page selection (select_pages, both engines): row (sequence b, KV head g) with n pages takes
// the min(n, k) smallest keys of select_key over its pages j < n, then lists their pages
// ascending. Keys are distinct (the page index is in the low 31 bits), so the result is
// unique: forced pages (the first sink_pages and the last recent_pages) key as j, below
// every other page; the others by score, highest first, ties to the lower page index, NaN
// lowest, -0 tied with +0 (the score mapped to an order-preserving integer, inverted, above
// the page index); pages past the sequence key as kSelectNoPage, above all. Forced pages
// number at most sink_pages + recent_pages <= k whenever n > k, so all of them are taken.
// The CUDA engine sorts select_key values; the CPU engine radix-selects on the same order,
// (select_forced ? 0 : select_score_rank, page), without building 64-bit keys.
constexpr int64_t kSelectNoPage = INT64_MAX;

// A score's rank as an unsigned integer, smaller for higher scores: NaN ranks with -inf and
// -0 with +0. Never 0 (that would need a NaN), so 0 can stand for "forced".
SA_HOST_DEVICE uint32_t select_score_rank(float score) {
  const float x = score != score ? -INFINITY : (score == 0.f ? 0.f : score);
  uint32_t u;
  memcpy(&u, &x, 4);
  // float order -> unsigned order: negatives flip every bit, others set the sign bit
  // (branch-free: the sign of a row's scores is not predictable).
  u ^= static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u;
  return ~u;
}

// Whether page j of n is always taken: one of the first sink_pages or last recent_pages.
SA_HOST_DEVICE bool select_forced(int64_t j, int64_t n, int64_t sink_pages, int64_t recent_pages) {
  const int64_t s_end = sink_pages < n ? sink_pages : n;
  const int64_t r_begin = n - recent_pages > s_end ? n - recent_pages : s_end;
  return j < s_end || j >= r_begin;
}

SA_HOST_DEVICE int64_t select_key(float score, int64_t j, int64_t n, int64_t sink_pages, int64_t recent_pages) {
  if (j >= n) return kSelectNoPage;
  if (select_forced(j, n, sink_pages, recent_pages)) return j;
  return (static_cast<int64_t>(select_score_rank(score)) << 31) | j;  // rank < 2^32: below 2^63 - 1
}

// The page of a key (kSelectNoPage gives 0x7fffffff, above every page id).
SA_HOST_DEVICE int32_t select_key_page(int64_t key) { return static_cast<int32_t>(key & 0x7fffffff); }

SA_ABI_END
}  // namespace sparse_attn
