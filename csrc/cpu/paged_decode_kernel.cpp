// CPU engine of the paged KV cache ops: writing tokens (with the page metadata), Quest's
// page bounds, and decode attention over all or selected pages.
//
// Decode reads every selected K/V byte once per KV head: a work item is (sequence, KV
// head), and the query heads of its GQA group share each K/V row as it streams by, so the
// kernel is bound by memory, not arithmetic. Rows are converted to float32 one at a time;
// scores, softmax and accumulation are float32.
// This file is compiled once per instruction set; SA_CPU_NS names the namespace.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include "attention_kernel.h"
#include "sparse_attn/paged.h"
#include "sparse_attn/softmax_state.h"
#include "sparse_attn/stream_k.h"

namespace sparse_attn::cpu::SA_CPU_NS {
namespace {

using Vec = at::vec::Vectorized<float>;

template <typename T>
void to_float(const T* src, float* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    at::vec::convert(src, dst, n);
  }
}

float dot(const float* a, const float* b, int64_t n) {
  Vec acc0(0.f), acc1(0.f);
  int64_t d = 0;
  for (; d + 2 * Vec::size() <= n; d += 2 * Vec::size()) {
    acc0 = at::vec::fmadd(Vec::loadu(a + d), Vec::loadu(b + d), acc0);
    acc1 = at::vec::fmadd(Vec::loadu(a + d + Vec::size()), Vec::loadu(b + d + Vec::size()), acc1);
  }
  for (; d + Vec::size() <= n; d += Vec::size()) acc0 = at::vec::fmadd(Vec::loadu(a + d), Vec::loadu(b + d), acc0);
  float s = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, acc0 + acc1);
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

// dst[i] = sum of the lanes of acc[i], i < n. Four at a time with AVX-512 (one shuffle tree
// for four vectors instead of four full reductions: the reductions were the largest cost
// of the score loop).
inline void hsum(const Vec* acc, int64_t n, float* dst) {
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
  for (; i + 4 <= n; i += 4) {
    const __m512 a0 = acc[i], a1 = acc[i + 1], a2 = acc[i + 2], a3 = acc[i + 3];
    // Per 128-bit lane: t0 = [a0 02, a1 02, a0 13, a1 13] (sums of lane pairs), same for t1.
    const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    // Per 128-bit lane: [a0, a1, a2, a3] partial sums.
    const __m512 t2 = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m128 r = _mm_add_ps(_mm_add_ps(_mm512_extractf32x4_ps(t2, 0), _mm512_extractf32x4_ps(t2, 1)),
                                _mm_add_ps(_mm512_extractf32x4_ps(t2, 2), _mm512_extractf32x4_ps(t2, 3)));
    _mm_storeu_ps(dst + i, r);
  }
#endif
  for (; i < n; ++i) dst[i] = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, acc[i]);
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
  // One KV head per task: a page's metadata rows are then touched by one thread, in token
  // order, so "first slot sets, later slots widen" is exact (max/min of stored values).
  at::parallel_for(0, w.heads_kv, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      for (int64_t n = 0; n < w.ntokens; ++n) {
        const int64_t page = w.page_ids[n], slot = w.slots[n];
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
          for (int64_t d = 0; d < D; ++d) {
            const float x = static_cast<float>(ks[d]);  // exact: T -> float -> T round trips
            if (x > static_cast<float>(mx[d])) mx[d] = ks[d];
            if (x < static_cast<float>(mn[d])) mn[d] = ks[d];
          }
        }
      }
    }
  });
}

// Quest bounds of one page for the G query heads of a KV head (quest_bound in paged.h, D
// in vector chunks); kG as in page_step.
template <int kG>
void page_bounds(const float* q, const float* mx, const float* mn, int64_t D, int64_t G_rt, float* out) {
  const int64_t G = kG > 0 ? kG : G_rt;
  if (kG == 0 || D % Vec::size() != 0) {
    for (int64_t h = 0; h < G; ++h) out[h] = quest_bound(q + h * D, mx, mn, D);
    return;
  }
  Vec acc[kG > 0 ? kG : 1];
  for (int64_t h = 0; h < G; ++h) acc[h] = Vec(0.f);
  for (int64_t d = 0; d < D; d += Vec::size()) {
    const Vec a = Vec::loadu(mx + d), c = Vec::loadu(mn + d);
    for (int64_t h = 0; h < G; ++h) {
      const Vec qv = Vec::loadu(q + h * D + d);
      acc[h] = acc[h] + at::vec::maximum(qv * a, qv * c);
    }
  }
  hsum(acc, G, out);
}

#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
inline bool cpu_has_avx512_bf16() {
  static const bool ok = __builtin_cpu_supports("avx512bf16");
  return ok;
}

// Scores of a page straight from bf16 K and bf16 q with the CPU's bf16 dot-product
// instruction (exact products, float32 sums): no conversion of K to float32 and half the
// arithmetic instructions. qb: the group's query rows (row stride q_ld), unscaled.
template <int kG>
__attribute__((target("avx512bf16"))) void scores_bf16(const c10::BFloat16* kp, int64_t ld, int64_t ntok, int64_t ps,
                                                       int64_t D, const c10::BFloat16* qb, int64_t q_ld, float scale,
                                                       float* s) {
  for (int64_t t = 0; t < ntok; ++t) {
    const c10::BFloat16* k = kp + t * ld;
    Vec a[kG];
    for (int h = 0; h < kG; ++h) a[h] = Vec(0.f);
    for (int64_t d = 0; d < D; d += 32) {
      const __m512bh kv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(k + d));
      for (int h = 0; h < kG; ++h)
        a[h] = Vec(_mm512_dpbf16_ps(a[h], reinterpret_cast<__m512bh>(_mm512_loadu_si512(qb + h * q_ld + d)), kv));
    }
    float r[kG];
    hsum(a, kG, r);
    for (int h = 0; h < kG; ++h) s[h * ps + t] = r[h] * scale;
  }
}

// Quest bounds of one page from bf16 metadata: max(q kmax, q kmin) = q+ kmax + q- kmin
// with q+ = max(q, 0), q- = min(q, 0) (kmax >= kmin), i.e. two dot products, which the
// bf16 dot-product instruction computes with exact products and float32 sums. q+/q- must
// be exact in bf16 (q itself bf16), else the bound could fall below q . k.
template <int kG>
__attribute__((target("avx512bf16"))) void page_bounds_bf16(const c10::BFloat16* mx, const c10::BFloat16* mn,
                                                            const c10::BFloat16* qpos, const c10::BFloat16* qneg,
                                                            int64_t D, float* out) {
  Vec a[kG];
  for (int h = 0; h < kG; ++h) a[h] = Vec(0.f);
  for (int64_t d = 0; d < D; d += 32) {
    const __m512bh x = reinterpret_cast<__m512bh>(_mm512_loadu_si512(mx + d));
    const __m512bh n = reinterpret_cast<__m512bh>(_mm512_loadu_si512(mn + d));
    for (int h = 0; h < kG; ++h) {
      __m512 t = _mm512_dpbf16_ps(a[h], reinterpret_cast<__m512bh>(_mm512_loadu_si512(qpos + h * D + d)), x);
      a[h] = Vec(_mm512_dpbf16_ps(t, reinterpret_cast<__m512bh>(_mm512_loadu_si512(qneg + h * D + d)), n));
    }
  }
  hsum(a, kG, out);
}
#endif

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

// One page of one KV head for the G query heads of its group: scores, online softmax,
// accumulation. K/V rows (row stride ld) are converted to float32 once per page; the
// scores take one reduction tree per four heads, the P V product keeps each head's output
// chunk in registers across the page's rows.

// kG > 0: the group size at compile time, so the per-head accumulators stay in registers
// (with a run-time G they lived on the stack: 2x slower); kG == 0: any G.
template <typename T, int kG>
void page_step(const T* kp, const T* vp, int64_t ld, int64_t ntok, int64_t ps, int64_t D, int64_t G_rt,
               const float* qf, const T* qb, int64_t q_ld, float scale, float* kf, float* vf, float* s, float* acc,
               SoftmaxRowState* st) {
  constexpr int64_t kMaxG = kG > 0 ? kG : 16;
  const int64_t G = kG > 0 ? kG : G_rt;
  const bool vec_d = D % Vec::size() == 0 && G <= kMaxG;
  bool scored = false;
#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
  if constexpr (std::is_same_v<T, c10::BFloat16> && kG > 0) {
    if (D % 32 == 0 && cpu_has_avx512_bf16()) {
      for (int64_t t = 0; t < ntok; ++t) to_float(vp + t * ld, vf + t * D, D);  // V rows first: loads in flight
      scores_bf16<kG>(kp, ld, ntok, ps, D, qb, q_ld, scale, s);
      scored = true;
    }
  }
#endif
  for (int64_t t = 0; t < ntok && !scored; ++t) {
    to_float(kp + t * ld, kf + t * D, D);
    to_float(vp + t * ld, vf + t * D, D);
  }
  for (int64_t t = 0; t < ntok && !scored; ++t) {  // s[h * ps + t] = q_h . k_t (q pre-scaled)
    const float* k = kf + t * D;
    if (vec_d) {
      Vec a[kMaxG];
      float r[kMaxG];
      for (int64_t h = 0; h < G; ++h) a[h] = Vec(0.f);
      for (int64_t d = 0; d < D; d += Vec::size()) {
        const Vec kv = Vec::loadu(k + d);
        for (int64_t h = 0; h < G; ++h) a[h] = at::vec::fmadd(Vec::loadu(qf + h * D + d), kv, a[h]);
      }
      hsum(a, G, r);
      for (int64_t h = 0; h < G; ++h) s[h * ps + t] = r[h];
    } else {
      for (int64_t h = 0; h < G; ++h) s[h * ps + t] = dot(qf + h * D, k, D);
    }
  }
  for (int64_t h = 0; h < G; ++h) {  // online softmax of the page's scores
    float* sh = s + h * ps;
    float mx = -INFINITY;
    for (int64_t t = 0; t < ntok; ++t) mx = std::max(mx, sh[t]);
    const float factor = st[h].rescale_to(mx);
    if (factor != 1.f) at::vec::map([factor](Vec x) { return x * Vec(factor); }, acc + h * D, acc + h * D, D);
    const float m = st[h].max;
    int64_t t = 0;
    Vec vsum(0.f);
    for (; t + Vec::size() <= ntok; t += Vec::size()) {
      const Vec e = (Vec::loadu(sh + t) - Vec(m)).exp_u20();
      e.store(sh + t);
      vsum = vsum + e;
    }
    float sum = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, vsum);
    for (; t < ntok; ++t) sum += (sh[t] = std::exp(sh[t] - m));
    st[h].add_sum(sum);
  }
  if (vec_d) {  // acc_h += sum_t p[h][t] v_t, a head_dim chunk at a time, in registers
    for (int64_t d = 0; d < D; d += Vec::size()) {
      Vec a[kMaxG];
      for (int64_t h = 0; h < G; ++h) a[h] = Vec::loadu(acc + h * D + d);
      for (int64_t t = 0; t < ntok; ++t) {
        const Vec v = Vec::loadu(vf + t * D + d);
        for (int64_t h = 0; h < G; ++h) a[h] = at::vec::fmadd(Vec(s[h * ps + t]), v, a[h]);
      }
      for (int64_t h = 0; h < G; ++h) a[h].store(acc + h * D + d);
    }
  } else {
    for (int64_t t = 0; t < ntok; ++t)
      for (int64_t h = 0; h < G; ++h)
        for (int64_t d = 0; d < D; ++d) acc[h * D + d] += s[h * ps + t] * vf[t * D + d];
  }
}

// One KV head's pages [j0, j1) of sequence b (the selection's list, or logical pages j0..)
// for the G query heads of its group: leaves G partial softmax states and unnormalized
// outputs (st, acc [G, D]). Scratch buffers belong to the calling thread.
template <typename T>
struct SegmentRunner {
  const PagedKVParams& p;
  const PageSelection* sel;
  const PagedDecodeIO& io;
  int64_t D, G, ps;
  std::vector<float> qf, kf, vf, s;

  SegmentRunner(const PagedKVParams& p_, const PageSelection* sel_, const PagedDecodeIO& io_)
      : p(p_), sel(sel_), io(io_), D(p_.head_dim), G(io_.heads_q / p_.heads_kv), ps(p_.page_size),
        qf(G * D), kf(ps * D), vf(ps * D), s(G * ps) {}

  // Pages the (b, g) output walks: the selection's count or the sequence's page count.
  int64_t pages_of(int64_t b, int64_t g) const {
    return sel ? sel->counts[b * sel->counts_stride[0] + g * sel->counts_stride[1]]
               : (p.seqlens[b] + ps - 1) / ps;
  }

  void run(int64_t b, int64_t g, int64_t j0, int64_t j1, SoftmaxRowState* st, float* acc) {
    const auto* K = static_cast<const T*>(p.k_pages);
    const auto* V = static_cast<const T*>(p.v_pages);
    const auto* Q = static_cast<const T*>(io.q);
    const int64_t len = p.seqlens[b];
    const int32_t* list = sel ? sel->pages + b * sel->pages_stride[0] + g * sel->pages_stride[1] : nullptr;
    for (int64_t h = 0; h < G; ++h) {
      to_float(Q + b * io.q_stride[0] + (g * G + h) * io.q_stride[1], qf.data() + h * D, D);
      at::vec::map([sc = io.scale](Vec x) { return x * Vec(sc); }, qf.data() + h * D, qf.data() + h * D, D);
      st[h] = SoftmaxRowState::empty();
    }
    std::fill(acc, acc + G * D, 0.f);
    const T* qraw = Q + b * io.q_stride[0] + g * G * io.q_stride[1];
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t lp = list ? list[j * sel->pages_stride[2]] : j;  // logical page
      const int64_t page = p.page_table[b * p.table_stride + lp];
      const int64_t ntok = std::min(ps, len - lp * ps);
      if (j + 1 < j1) {  // ask for the next page early (the prefetchers stop at each 4 KB block)
        const int64_t npage = p.page_table[b * p.table_stride + (list ? list[(j + 1) * sel->pages_stride[2]] : j + 1)];
        for (int64_t t = 0; t < ps; ++t) {
          const char* kr =
              reinterpret_cast<const char*>(K + npage * p.page_stride[0] + t * p.page_stride[1] + g * p.page_stride[2]);
          const char* vr =
              reinterpret_cast<const char*>(V + npage * p.page_stride[0] + t * p.page_stride[1] + g * p.page_stride[2]);
          for (int64_t o = 0; o < D * int64_t(sizeof(T)); o += 64) {
            __builtin_prefetch(kr + o);
            __builtin_prefetch(vr + o);
          }
        }
      }
      const T* kp = K + page * p.page_stride[0] + g * p.page_stride[2];
      const T* vp = V + page * p.page_stride[0] + g * p.page_stride[2];
      switch (G) {
#define SA_STEP(NG)                                                                                              \
  page_step<T, NG>(kp, vp, p.page_stride[1], ntok, ps, D, G, qf.data(), qraw, io.q_stride[1], io.scale, kf.data(), \
                   vf.data(), s.data(), acc, st)
        case 1: SA_STEP(1); break;
        case 2: SA_STEP(2); break;
        case 3: SA_STEP(3); break;  // SmolLM2 and other 3:1 GQA models
        case 4: SA_STEP(4); break;
        case 8: SA_STEP(8); break;
        default: SA_STEP(0); break;
#undef SA_STEP
      }
    }
  }
};

// Merges n partial (state, acc [D]) pairs in order, normalizes, stores one output row.
template <typename T>
void merge_store(const SoftmaxRowState* states, const float* accs, int64_t n, int64_t state_step, int64_t acc_step,
                 int64_t D, T* o, float* lse, float* tmp) {
  SoftmaxRowState st = SoftmaxRowState::empty();
  std::fill(tmp, tmp + D, 0.f);
  for (int64_t c = 0; c < n; ++c) {
    const SoftmaxRowState& pc = states[c * state_step];
    if (pc.sum == 0.f) continue;
    const MergeFactors f = merge_into(st, pc);
    const float* pa = accs + c * acc_step;
    for (int64_t d = 0; d < D; ++d) tmp[d] = tmp[d] * f.a + pa[d] * f.b;
  }
  const float inv = st.inv_sum();
  for (int64_t d = 0; d < D; ++d) tmp[d] *= inv;
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(o, tmp, D * sizeof(float));
  } else {
    at::vec::convert(tmp, o, D);
  }
  *lse = st.lse();
}

// Split-KV decode with a fixed split: a work item is (sequence, KV heads, chunk of
// kPagesPerChunk pages), all KV heads of the chunk for a dense walk, one for a selection
// (each head has its own pages). Each item leaves per query head a partial state and an
// unnormalized output; a second pass merges a head's chunks (softmax_state.h merge_into).
constexpr int64_t kPagesPerChunk = 64;

template <typename T>
void decode(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io) {
  const int64_t D = p.head_dim, Hkv = p.heads_kv, G = io.heads_q / Hkv;
  // A selection lists at most `capacity` pages per head, a dense walk up to max_pages.
  const int64_t nchunks = std::max<int64_t>(1, ((sel ? sel->capacity : p.max_pages) + kPagesPerChunk - 1) /
                                                   kPagesPerChunk);
  const int64_t head_groups = sel ? Hkv : 1;  // KV heads split across items
  const int64_t heads_per_item = sel ? 1 : Hkv;
  // Partials [B, H_kv, nchunks, G]: state and D outputs; chunks past a sequence stay empty.
  std::vector<SoftmaxRowState> part_state(p.batch * io.heads_q * nchunks, SoftmaxRowState::empty());
  // Outputs of empty chunks are never read (their state stays empty): no zero fill.
  std::unique_ptr<float[]> part_acc(new float[p.batch * io.heads_q * nchunks * D]);
  const int64_t items = p.batch * head_groups * nchunks;
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    SegmentRunner<T> runner(p, sel, io);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (head_groups * nchunks), hg = i / nchunks % head_groups, c = i % nchunks;
      for (int64_t g = hg * heads_per_item; g < (hg + 1) * heads_per_item; ++g) {
        const int64_t j0 = c * kPagesPerChunk, j1 = std::min(runner.pages_of(b, g), j0 + kPagesPerChunk);
        if (j0 >= j1) continue;
        const int64_t slot = ((b * Hkv + g) * nchunks + c) * G;
        runner.run(b, g, j0, j1, part_state.data() + slot, part_acc.get() + slot * D);
      }
    }
  });
  auto* O = static_cast<T*>(io.out);
  at::parallel_for(0, p.batch * io.heads_q, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp(D);
    for (int64_t r = r0; r < r1; ++r) {  // query head r = (b * H_kv + g) * G + h
      const int64_t bg = r / G, h = r % G, first = bg * nchunks * G + h;
      merge_store(part_state.data() + first, part_acc.get() + first * D, nchunks, G, G * D, D,
                  O + (r / io.heads_q) * io.o_stride[0] + (r % io.heads_q) * io.o_stride[1], io.lse + r, tmp.data());
    }
  });
}

// Stream-K decode (stream_k.h): the outputs (sequence, KV head) in order, each with
// ceil(pages / tile_pages) tiles, on one line split evenly over the plan's workers. A
// worker's segments leave partials in the plan's workspace (slot slot_base[o] + the
// worker's rank among the output's workers); after the barrier each output merges its
// partials in worker order, so results do not depend on thread timing.
template <typename T>
void decode_stream_k(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io, const StreamKPlan& plan) {
  const int64_t D = p.head_dim, Hkv = p.heads_kv, G = io.heads_q / Hkv, outputs = p.batch * Hkv;
  const int64_t total = plan.offsets[outputs];
  auto* states = reinterpret_cast<SoftmaxRowState*>(plan.ws_state);
  at::parallel_for(0, plan.workers, 1, [&](int64_t w0, int64_t w1) {
    SegmentRunner<T> runner(p, sel, io);
    for (int64_t w = w0; w < w1; ++w) {
      stream_k_segments(plan.offsets, outputs, plan.workers, w, [&](const StreamKSegment& seg) {
        const int64_t b = seg.output / Hkv, g = seg.output % Hkv, n = runner.pages_of(b, g);
        const int64_t rank = w - stream_k_worker_of(total, plan.workers, plan.offsets[seg.output]);
        const int64_t slot = (plan.slot_base[seg.output] + rank) * G;
        runner.run(b, g, seg.tile_begin * plan.tile_pages, std::min(n, seg.tile_end * plan.tile_pages),
                   states + slot, plan.ws_acc + slot * D);
      });
    }
  });
  auto* O = static_cast<T*>(io.out);
  at::parallel_for(0, outputs, 4, [&](int64_t o0, int64_t o1) {
    std::vector<float> tmp(D);
    for (int64_t o = o0; o < o1; ++o) {
      const int64_t nparts = plan.slot_base[o + 1] - plan.slot_base[o];  // 0 for an empty output
      for (int64_t h = 0; h < G; ++h) {
        const int64_t r = o * G + h, first = plan.slot_base[o] * G + h;
        merge_store(states + first, plan.ws_acc + first * D, nparts, G, G * D, D,
                    O + (r / io.heads_q) * io.o_stride[0] + (r % io.heads_q) * io.o_stride[1], io.lse + r, tmp.data());
      }
    }
  });
}

template <template <typename> class F, typename... Args>
void by_dtype(DType dt, Args&&... args) {
  switch (dt) {
    case DType::kFloat32: return F<float>::run(args...);
    case DType::kBFloat16: return F<c10::BFloat16>::run(args...);
    case DType::kFloat16: return F<c10::Half>::run(args...);
  }
}
template <typename T> struct WriteF { static void run(const PagedKVWrite& w) { write_tokens<T>(w); } };
template <typename T> struct ScoresF {
  static void run(const PagedKVParams& p, const float* q, bool qb, int64_t hq, bool sum, float* out) {
    scores<T>(p, q, qb, hq, sum, out);
  }
};
template <typename T> struct StreamKF {
  static void run(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io, const StreamKPlan& plan) {
    decode_stream_k<T>(p, sel, io, plan);
  }
};
template <typename T> struct DecodeF {
  static void run(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io) { decode<T>(p, sel, io); }
};

}  // namespace

void select_pages(const float* scores, int64_t batch, int64_t heads_kv, int64_t max_pages, const int32_t* seqlens,
                  int64_t page_size, int64_t k, int64_t sink_pages, int64_t recent_pages, int32_t* pages,
                  int32_t* counts) {
  at::parallel_for(0, batch * heads_kv, 16, [&](int64_t i0, int64_t i1) {
    std::vector<int32_t> cand;
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
        cand.resize(r_begin - s_end);
        for (int64_t j = s_end; j < r_begin; ++j) cand[j - s_end] = static_cast<int32_t>(j);
        // Highest score first, ties (and NaN, ranked lowest) by lower page index, as the reference.
        auto better = [&](int32_t a, int32_t b2) {
          const float x = std::isnan(sc[a]) ? -INFINITY : sc[a], y = std::isnan(sc[b2]) ? -INFINITY : sc[b2];
          return x > y || (x == y && a < b2);
        };
        const int64_t take = std::min<int64_t>(want, cand.size());
        std::nth_element(cand.begin(), cand.begin() + take, cand.end(), better);
        std::sort(cand.begin(), cand.begin() + take);
        for (int64_t t = 0; t < take; ++t) out[c++] = cand[t];
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

void paged_decode(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io) {
  by_dtype<DecodeF>(io.dtype, p, sel, io);
}

void paged_decode_stream_k(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io,
                           const StreamKPlan& plan) {
  by_dtype<StreamKF>(io.dtype, p, sel, io, plan);
}

}  // namespace sparse_attn::cpu::SA_CPU_NS
