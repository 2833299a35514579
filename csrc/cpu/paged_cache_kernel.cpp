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

#if defined(CPU_CAPABILITY_AVX512)
// 16 elements of a row as float32 (bf16: a shift; fp16: F16C; exact for both).
template <typename T>
inline __m512 load16_as_float(const T* x) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_loadu_ps(x);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
  }
}

// Where take is set, dst[i] = src[i] (the stored bits, so -0 / +0 stay as written).
template <typename T>
inline void store16_where(T* dst, const T* src, __mmask16 take) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(dst, take, _mm512_loadu_ps(src));
  } else {
    _mm256_mask_storeu_epi16(dst, take, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  }
}
#endif

// write_token_head (paged.h) with the metadata widening 16 channels at a time: the same
// rule, "x > max (x < min) replaces it", NaN never replacing, compared in float32 (exact
// for bf16/fp16), so pages and metadata are bit-identical to the shared scalar code (and
// to the CUDA engine's). The scalar loop cost about 10 ms per layer of an 8k prefill.
template <typename T>
inline void write_token_head_vec(const PagedKVWrite& w, int64_t n, int64_t g) {
#if defined(CPU_CAPABILITY_AVX512)
  const int64_t D = w.head_dim, page = w.page_ids[n], slot = w.slots[n];
  if (slot != 0 && D % 16 == 0) {
    const T* ks = static_cast<const T*>(w.k) + n * w.src_stride[0] + g * w.src_stride[1];
    const T* vs = static_cast<const T*>(w.v) + n * w.v_src_stride[0] + g * w.v_src_stride[1];
    const int64_t row = page * w.page_stride[0] + slot * w.page_stride[1] + g * w.page_stride[2];
    std::memcpy(static_cast<T*>(w.k_pages) + row, ks, D * sizeof(T));
    std::memcpy(static_cast<T*>(w.v_pages) + row, vs, D * sizeof(T));
    T* mx = static_cast<T*>(w.k_max) + page * w.meta_stride[0] + g * w.meta_stride[1];
    T* mn = static_cast<T*>(w.k_min) + page * w.meta_stride[0] + g * w.meta_stride[1];
    for (int64_t d = 0; d < D; d += 16) {
      const __m512 x = load16_as_float(ks + d);
      store16_where(mx + d, ks + d, _mm512_cmp_ps_mask(x, load16_as_float(mx + d), _CMP_GT_OQ));
      store16_where(mn + d, ks + d, _mm512_cmp_ps_mask(x, load16_as_float(mn + d), _CMP_LT_OQ));
    }
    return;
  }
#endif
  write_token_head<T>(w, n, g);
}

template <typename T>
void write_tokens(const PagedKVWrite& w) {
  // Tasks are (KV head, bucket of page ids): a page's metadata row is then touched by one
  // thread, in token order, so "first slot sets, later slots widen" is exact. Buckets (not
  // one task per head) keep both threads busy with 1-3 KV heads.
  const int64_t buckets = w.ntokens >= 256 ? 8 : 1;
  at::parallel_for(0, w.heads_kv * buckets, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / buckets, bucket = t % buckets;
      for (int64_t n = 0; n < w.ntokens; ++n)
        if (w.page_ids[n] % buckets == bucket) write_token_head_vec<T>(w, n, g);
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
#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
        if constexpr (std::is_same_v<T, c10::BFloat16>) {
          if (fast_bf16) {
            const c10::BFloat16* mxp = kmax + page * p.meta_stride[0];
            const c10::BFloat16* mnp = kmin + page * p.meta_stride[0];
            float* o = out + b * Hkv * p.max_pages + j;
            const c10::BFloat16 *nmx = nullptr, *nmn = nullptr;  // the next page, prefetched
            if (j + 1 < npages) {
              const int64_t np = p.page_table[b * p.table_stride + j + 1];
              nmx = kmax + np * p.meta_stride[0];
              nmn = kmin + np * p.meta_stride[0];
            }
            switch (G) {
#define SA_BOUNDS(NG) page_bounds_bf16<NG>(mxp, mnp, p.meta_stride[1], Hkv, qpos.data(), qneg.data(), q + b * heads_q * D, D, sum_reduce, o, p.max_pages, nmx, nmn)
              case 1: SA_BOUNDS(1); break;
              case 2: SA_BOUNDS(2); break;
              case 3: SA_BOUNDS(3); break;
              case 4: SA_BOUNDS(4); break;
              default: SA_BOUNDS(8); break;
#undef SA_BOUNDS
            }
            continue;
          }
        }
#endif
        for (int64_t g = 0; g < Hkv; ++g) {
          const float* qg = q + (b * heads_q + g * G) * D;
          const T* mxr = kmax + page * p.meta_stride[0] + g * p.meta_stride[1];
          const T* mnr = kmin + page * p.meta_stride[0] + g * p.meta_stride[1];
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

// Lists ascending the pages of the take (< n) smallest of rank[0..n), ties to the lower page:
// select_key's order, whose key is (rank, page) with forced pages ranked 0. Radix selection
// of the take-th smallest rank, 8-bit digits from the highest bit on which the unforced
// ranks differ (all_and / all_or: over those only; a row's scores share sign and most
// exponent bits, and forced zeros would make every bit differ). Forced zeros stay among the
// candidates: their digits are 0 wherever they are compared, so they rank first as they
// should. Each pass counts the digits of the candidates and keeps the bucket holding the
// answer. Then one scan in page order takes the ranks below it and the first of those
// equal to it. nth_element on 64-bit keys took ~16 us per row of 2048 pages.
void list_smallest(const uint32_t* rank, int64_t n, int64_t take, uint32_t all_and, uint32_t all_or, uint32_t* work,
                   int32_t* out) {
  const uint32_t differ = all_and ^ all_or;
  uint32_t value = all_and;  // the take-th smallest rank; all unforced ranks are this one if none differ
  if (differ != 0) {
    int lo = std::max(0, 31 - __builtin_clz(differ) - 7);
    const uint32_t* src = rank;
    int64_t live = n, need = take;  // need: the answer's rank among the live candidates, 1-based
    while (true) {
      int64_t count[256] = {};
      for (int64_t i = 0; i < live; ++i) ++count[(src[i] >> lo) & 255];
      int digit = 0;
      while (need > count[digit]) need -= count[digit++];
      int64_t kept = 0;  // branch-free: a kept-or-not branch mispredicted on every other rank
      for (int64_t i = 0; i < live; ++i) {
        const uint32_t r = src[i];
        work[kept] = r;
        kept += ((r >> lo) & 255) == uint32_t(digit);
      }
      src = work, live = kept;
      if (lo == 0 || live == need) break;  // live == need: every candidate left is taken
      lo = std::max(0, lo - 8);
    }
    value = *std::max_element(work, work + live);  // all live are taken, or all equal
  }
  // Ranks below value are all taken; ties = how many equal to value, in page order.
  int64_t ties = take;
  for (int64_t j = 0; j < n; ++j) ties -= rank[j] < value;
  int64_t t = 0;
  for (int64_t j = 0; j < n && t < take; ++j) {
    const bool tie = rank[j] == value && ties > 0;
    ties -= tie;
    out[t] = static_cast<int32_t>(j);  // in bounds: t < take <= k
    t += rank[j] < value || tie;
  }
}

}  // namespace

void select_pages(const float* scores, int64_t batch, int64_t heads_kv, int64_t max_pages, const int32_t* seqlens,
                  int64_t page_size, int64_t k, int64_t sink_pages, int64_t recent_pages, int32_t* pages,
                  int32_t* counts) {
  // One (sequence, KV head) row per task: a row of a 32k-token sequence is ~2k pages. The
  // rule is select_key's (paged.h, shared with the CUDA engine): the min(n, k) smallest
  // keys of the row's pages, listed ascending.
  at::parallel_for(0, batch * heads_kv, 1, [&](int64_t i0, int64_t i1) {
    std::vector<uint32_t> rank, work;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / heads_kv;
      const int64_t n = std::min<int64_t>((seqlens[b] + page_size - 1) / page_size, max_pages);
      const float* sc = scores + i * max_pages;
      int32_t* out = pages + i * k;
      const int64_t take = std::min(n, k);
      if (take == n) {
        for (int64_t j = 0; j < n; ++j) out[j] = static_cast<int32_t>(j);
      } else if (take > 0) {
        rank.resize(n), work.resize(n);
        uint32_t all_and = ~0u, all_or = 0u;  // over the unforced pages (take < n: there are some)
        for (int64_t j = 0; j < n; ++j) {
          const bool forced = select_forced(j, n, sink_pages, recent_pages);
          const uint32_t r = forced ? 0u : select_score_rank(sc[j]);
          rank[j] = r;
          all_and &= forced ? ~0u : r, all_or |= r;
        }
        list_smallest(rank.data(), n, take, all_and, all_or, work.data(), out);
      }
      counts[i] = static_cast<int32_t>(take);
      for (int64_t t = take; t < k; ++t) out[t] = 0;
    }
  });
}

void paged_kv_write(const PagedKVWrite& w) { by_dtype<WriteF>(w.dtype, w); }

void quest_scores(const PagedKVParams& p, DType dtype, const float* q, bool q_is_bf16, int64_t heads_q,
                  bool sum_reduce, float* out) {
  by_dtype<ScoresF>(dtype, p, q, q_is_bf16, heads_q, sum_reduce, out);
}

}  // namespace sparse_attn::cpu::SA_CPU_NS
