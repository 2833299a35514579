// CPU engine of the paged KV cache's bookkeeping and Quest: writing tokens (with the page
// metadata), Quest's page bounds, and the page selection. The bounds stream the metadata
// of every page once; bf16 metadata and queries use the CPU's bf16 dot products.
// This file is compiled once per instruction set; SA_CPU_NS names the namespace.
#include <cstring>
#include <vector>

#include "attention_kernel.h"
#include "decode_ops.h"

namespace sparse_attn::cpu::SA_CPU_NS {
namespace {

// mx = max(mx, x), mn = min(mn, x) element-wise. Exact: the result is always one of the
// stored values (at::vec compares bf16/fp16 in float, and those round trips are exact).
template <typename T>
inline void widen_bounds(T* mx, T* mn, const T* x, int64_t D) {
  using V = at::vec::Vectorized<T>;
  int64_t d = 0;
  for (; d + V::size() <= D; d += V::size()) {
    const V xv = V::loadu(x + d);
    at::vec::maximum(V::loadu(mx + d), xv).store(mx + d);
    at::vec::minimum(V::loadu(mn + d), xv).store(mn + d);
  }
  for (; d < D; ++d) {
    const float xf = static_cast<float>(x[d]);
    if (xf > static_cast<float>(mx[d])) mx[d] = x[d];
    if (xf < static_cast<float>(mn[d])) mn[d] = x[d];
  }
}

template <typename T>
void write_tokens(const PagedKVWrite& w) {
  auto* kp = static_cast<T*>(w.k_pages);
  auto* vp = static_cast<T*>(w.v_pages);
  auto* kmax = static_cast<T*>(w.k_max);
  auto* kmin = static_cast<T*>(w.k_min);
  const auto* k = static_cast<const T*>(w.k);
  const auto* v = static_cast<const T*>(w.v);
  const int64_t D = w.head_dim;
  // Tasks are (KV head, bucket of pages): a page's metadata row is then touched by one
  // thread, in token order, so "first slot sets, later slots widen" is exact. Buckets by
  // page id (not one task per head) keep both threads busy with 1-3 KV heads.
  const int64_t buckets = w.ntokens >= 256 ? 8 : 1;
  at::parallel_for(0, w.heads_kv * buckets, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / buckets, bucket = t % buckets;
      for (int64_t n = 0; n < w.ntokens; ++n) {
        const int64_t page = w.page_ids[n], slot = w.slots[n];
        if (page % buckets != bucket) continue;
        const T* ks = k + n * w.src_stride[0] + g * w.src_stride[1];
        const T* vs = v + n * w.v_src_stride[0] + g * w.v_src_stride[1];
        std::memcpy(kp + page * w.page_stride[0] + slot * w.page_stride[1] + g * w.page_stride[2], ks, D * sizeof(T));
        std::memcpy(vp + page * w.page_stride[0] + slot * w.page_stride[1] + g * w.page_stride[2], vs, D * sizeof(T));
        T* mx = kmax + page * w.meta_stride[0] + g * w.meta_stride[1];
        T* mn = kmin + page * w.meta_stride[0] + g * w.meta_stride[1];
        if (slot == 0) {
          std::memcpy(mx, ks, D * sizeof(T));
          std::memcpy(mn, ks, D * sizeof(T));
        } else {
          widen_bounds(mx, mn, ks, D);
        }
      }
    }
  });
}

template <typename T>
void scores(const PagedKVParams& p, const float* q, bool q_is_bf16, int64_t heads_q, bool sum_reduce, float* out) {
  const int64_t D = p.head_dim, Hkv = p.heads_kv, G = heads_q / Hkv;
  bool fast_bf16 = false;
#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
  fast_bf16 = std::is_same_v<T, c10::BFloat16> && q_is_bf16 && D % 32 == 0 && (G == 1 || G == 2 || G == 3 || G == 4 || G == 8) &&
              cpu_has_avx512_bf16();
#endif
  const auto* kmax = static_cast<const T*>(p.k_max);
  const auto* kmin = static_cast<const T*>(p.k_min);
  // Items are (sequence, chunk of pages) over all KV heads: a page's metadata rows of every
  // head are adjacent, so each item reads two sequential streams (one head at a time read
  // 256-byte rows 2 KB apart, at half the speed).
  constexpr int64_t kChunkPages = 64;  // enough items to balance two threads at B = 1
  const int64_t nchunks = std::max<int64_t>(1, (p.max_pages + kChunkPages - 1) / kChunkPages);
  at::parallel_for(0, p.batch * nchunks, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> mx(D), mn(D), r(G);
    std::vector<c10::BFloat16> qpos(fast_bf16 ? heads_q * D : 0), qneg(fast_bf16 ? heads_q * D : 0);
    int64_t q_of = -1;  // the sequence qpos/qneg hold
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / nchunks, c = i % nchunks;
      if (fast_bf16 && q_of != b) {
        for (int64_t x = 0; x < heads_q * D; ++x) {
          const float v = q[b * heads_q * D + x];
          qpos[x] = c10::BFloat16(v > 0.f ? v : 0.f);
          qneg[x] = c10::BFloat16(v < 0.f ? v : 0.f);
        }
        q_of = b;
      }
      const int64_t npages = (p.seqlens[b] + p.page_size - 1) / p.page_size;
      const int64_t j0 = c * kChunkPages, j1 = std::min(p.max_pages, j0 + kChunkPages);
      for (int64_t j = j0; j < j1; ++j) {
        if (j >= npages) {
          for (int64_t g = 0; g < Hkv; ++g) out[(b * Hkv + g) * p.max_pages + j] = -INFINITY;
          continue;
        }
        const int64_t page = p.page_table[b * p.table_stride + j];
        for (int64_t g = 0; g < Hkv; ++g) {
          const float* qg = q + (b * heads_q + g * G) * D;
          const T* mxr = kmax + page * p.meta_stride[0] + g * p.meta_stride[1];
          const T* mnr = kmin + page * p.meta_stride[0] + g * p.meta_stride[1];
#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
          if constexpr (std::is_same_v<T, c10::BFloat16>) {
            if (fast_bf16) {
              const c10::BFloat16* qp = qpos.data() + g * G * D;
              const c10::BFloat16* qn = qneg.data() + g * G * D;
              switch (G) {
                case 1: page_bounds_bf16<1>(mxr, mnr, qp, qn, D, r.data()); break;
                case 2: page_bounds_bf16<2>(mxr, mnr, qp, qn, D, r.data()); break;
                case 3: page_bounds_bf16<3>(mxr, mnr, qp, qn, D, r.data()); break;
                case 4: page_bounds_bf16<4>(mxr, mnr, qp, qn, D, r.data()); break;
                default: page_bounds_bf16<8>(mxr, mnr, qp, qn, D, r.data()); break;
              }
              float red = sum_reduce ? 0.f : -INFINITY;
              for (int64_t h = 0; h < G; ++h) red = sum_reduce ? red + r[h] : std::max(red, r[h]);
              out[(b * Hkv + g) * p.max_pages + j] = red;
              continue;
            }
          }
#endif
          to_float(mxr, mx.data(), D);
          to_float(mnr, mn.data(), D);
          switch (G) {
            case 1: page_bounds<1>(qg, mx.data(), mn.data(), D, G, r.data()); break;
            case 2: page_bounds<2>(qg, mx.data(), mn.data(), D, G, r.data()); break;
            case 3: page_bounds<3>(qg, mx.data(), mn.data(), D, G, r.data()); break;
            case 4: page_bounds<4>(qg, mx.data(), mn.data(), D, G, r.data()); break;
            case 8: page_bounds<8>(qg, mx.data(), mn.data(), D, G, r.data()); break;
            default: page_bounds<0>(qg, mx.data(), mn.data(), D, G, r.data()); break;
          }
          float red = sum_reduce ? 0.f : -INFINITY;
          for (int64_t h = 0; h < G; ++h) red = sum_reduce ? red + r[h] : std::max(red, r[h]);
          out[(b * Hkv + g) * p.max_pages + j] = red;
        }
      }
    }
  });
}

template <typename T> struct WriteF { static void run(const PagedKVWrite& w) { write_tokens<T>(w); } };
template <typename T> struct ScoresF {
  static void run(const PagedKVParams& p, const float* q, bool qb, int64_t hq, bool sum, float* out) {
    scores<T>(p, q, qb, hq, sum, out);
  }
};
}  // namespace

void select_pages(const float* scores, int64_t batch, int64_t heads_kv, int64_t max_pages, const int32_t* seqlens,
                  int64_t page_size, int64_t k, int64_t sink_pages, int64_t recent_pages, int32_t* pages,
                  int32_t* counts) {
  // One (sequence, KV head) row per task: a row of a 32k-token sequence is ~2k pages.
  at::parallel_for(0, batch * heads_kv, 1, [&](int64_t i0, int64_t i1) {
    std::vector<uint64_t> cand;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / heads_kv;
      const int64_t n = std::min<int64_t>((seqlens[b] + page_size - 1) / page_size, max_pages);
      const float* sc = scores + i * max_pages;
      int32_t* out = pages + i * k;
      int64_t c = 0;
      if (n <= k) {  // the budget covers the sequence: every page
        for (int64_t j = 0; j < n; ++j) out[c++] = static_cast<int32_t>(j);
      } else {
        // Forced: the first sink_pages and the last recent_pages (may exceed k on their own).
        const int64_t s_end = std::min(sink_pages, n), r_begin = std::max(n - recent_pages, s_end);
        for (int64_t j = 0; j < s_end; ++j) out[c++] = static_cast<int32_t>(j);
        const int64_t forced = s_end + (n - r_begin), want = std::max<int64_t>(k - forced, 0);
        // Highest score first, ties by lower page index, NaN lowest (as the reference), as
        // one integer key per page: the score mapped to an order-preserving unsigned
        // integer, inverted (so ascending keys = descending scores), above the page index.
        cand.resize(r_begin - s_end);
        for (int64_t j = s_end; j < r_begin; ++j) {
          const float x = std::isnan(sc[j]) ? -INFINITY : (sc[j] == 0.f ? 0.f : sc[j]);  // -0 ties with +0
          uint32_t u;
          std::memcpy(&u, &x, 4);
          u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // float order -> unsigned order
          cand[j - s_end] = (uint64_t(~u) << 32) | uint64_t(j);
        }
        const int64_t take = std::min<int64_t>(want, cand.size());
        std::nth_element(cand.begin(), cand.begin() + take, cand.end());
        for (int64_t t = 0; t < take; ++t) cand[t] &= 0xffffffffu;  // keep the page indices
        std::sort(cand.begin(), cand.begin() + take);
        for (int64_t t = 0; t < take; ++t) out[c++] = static_cast<int32_t>(cand[t]);
        for (int64_t j = r_begin; j < n; ++j) out[c++] = static_cast<int32_t>(j);
      }
      counts[i] = static_cast<int32_t>(c);
      for (int64_t t = c; t < k; ++t) out[t] = 0;
    }
  });
}

void paged_kv_write(const PagedKVWrite& w) { by_dtype<WriteF>(w.dtype, w); }

void quest_scores(const PagedKVParams& p, DType dtype, const float* q, bool q_is_bf16, int64_t heads_q,
                  bool sum_reduce, float* out) {
  by_dtype<ScoresF>(dtype, p, q, q_is_bf16, heads_q, sum_reduce, out);
}

}  // namespace sparse_attn::cpu::SA_CPU_NS
