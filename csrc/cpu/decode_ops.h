// Page-level building blocks of the CPU paged-cache kernels (paged_cache_kernel.cpp,
// paged_decode_kernel.cpp): conversions, reductions, Quest bounds of a page, and one
// page of decode attention for the query heads of a KV head. Compiled once per
// instruction set, like the kernels that include it.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include "sparse_attn/paged.h"
#include "sparse_attn/softmax_state.h"
#include "tile_ops.h"  // Vec, cpu_has_avx512_bf16

namespace sparse_attn::cpu::SA_CPU_NS {

template <typename T>
void to_float(const T* src, float* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    at::vec::convert(src, dst, n);
  }
}

// Asks for one K/V row (D elements) of the next page, a cache line at a time. The kernels
// issue these a row at a time between the current page's rows: issued as one burst per
// page they filled the line-fill buffers and stalled the core (17% of a hot decode).
template <typename T>
inline void prefetch_row(const T* row, int64_t D) {
  const char* r = reinterpret_cast<const char*>(row);
  for (int64_t o = 0; o < D * int64_t(sizeof(T)); o += 64) __builtin_prefetch(r + o);
}

inline float dot(const float* a, const float* b, int64_t n) {
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

#if defined(CPU_CAPABILITY_AVX512)
// The lane sums of four vectors, [sum a0, sum a1, sum a2, sum a3]: one shuffle tree for
// four vectors instead of four full reductions.
inline __m128 hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  // Per 128-bit lane: t0 = [a0 02, a1 02, a0 13, a1 13] (sums of lane pairs), same for t1.
  const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  // Per 128-bit lane: [a0, a1, a2, a3] partial sums.
  const __m512 t2 = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm_add_ps(_mm_add_ps(_mm512_extractf32x4_ps(t2, 0), _mm512_extractf32x4_ps(t2, 1)),
                    _mm_add_ps(_mm512_extractf32x4_ps(t2, 2), _mm512_extractf32x4_ps(t2, 3)));
}
#endif

// dst[i] = sum of the lanes of acc[i], i < n (the reductions were the largest cost of the
// score loop; four at a time with AVX-512).
inline void hsum(const Vec* acc, int64_t n, float* dst) {
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(dst + i, hsum4(acc[i], acc[i + 1], acc[i + 2], acc[i + 3]));
#endif
  for (; i < n; ++i) dst[i] = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, acc[i]);
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
  // A zero query channel times infinite metadata made a NaN here: quest_bound's rule decides
  // where a head's bound is NaN (it agrees with the sum above wherever that is not NaN).
  for (int64_t h = 0; h < G; ++h)
    if (out[h] != out[h]) out[h] = quest_bound(q + h * D, mx, mn, D);
}

#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
// Scores of a page straight from bf16 K and bf16 q with the CPU's bf16 dot-product
// instruction (exact products, float32 sums): no conversion of K to float32 and half the
// arithmetic instructions. qb: the group's query rows (row stride q_ld), unscaled.
template <int kG>
__attribute__((target("avx512bf16"))) void scores_bf16(const c10::BFloat16* kp, int64_t ld, int64_t ntok, int64_t ps,
                                                       int64_t D, const c10::BFloat16* qb, int64_t q_ld, float scale,
                                                       float* s, const c10::BFloat16* nk) {
  for (int64_t t = 0; t < ntok; ++t) {
    const c10::BFloat16* k = kp + t * ld;
    if (nk) prefetch_row(nk + t * ld, D);
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
// All KV heads of the page in one call (head g's rows at mx + g * head_stride, its group's
// queries at qpos/qneg + g * kG * D); out[g * out_stride] = the max (or sum) over the
// group, reduced in registers: the group's four sums written to memory and read back one
// by one cost 12% of the kernel.
// The zero halves of q+ / q- times infinite metadata give NaN (0 x inf) where quest_bound's
// rule has none: a head whose sum is NaN is bounded again by quest_bound from qf (the same
// queries in float32, [Hkv * kG, D]); a NaN check per head and page, none per channel.
template <int kG>
__attribute__((target("avx512bf16"))) void page_bounds_bf16(const c10::BFloat16* mx, const c10::BFloat16* mn,
                                                            int64_t head_stride, int64_t Hkv,
                                                            const c10::BFloat16* qpos, const c10::BFloat16* qneg,
                                                            const float* qf, int64_t D, bool sum_reduce, float* out,
                                                            int64_t out_stride, const c10::BFloat16* next_mx,
                                                            const c10::BFloat16* next_mn) {
  for (int64_t g = 0; g < Hkv; ++g) {
    if (next_mx) {  // a later page's rows, spread over this page's heads
      prefetch_row(next_mx + g * head_stride, D);
      prefetch_row(next_mn + g * head_stride, D);
    }
    const c10::BFloat16* x_row = mx + g * head_stride;
    const c10::BFloat16* n_row = mn + g * head_stride;
    const c10::BFloat16* qp = qpos + g * kG * D;
    const c10::BFloat16* qn = qneg + g * kG * D;
    // Separate q+ kmax and q- kmin sums: two dependency chains per head instead of one.
    Vec a[kG], c[kG];
    for (int h = 0; h < kG; ++h) a[h] = c[h] = Vec(0.f);
    for (int64_t d = 0; d < D; d += 32) {
      const __m512bh x = reinterpret_cast<__m512bh>(_mm512_loadu_si512(x_row + d));
      const __m512bh n = reinterpret_cast<__m512bh>(_mm512_loadu_si512(n_row + d));
      for (int h = 0; h < kG; ++h) {
        a[h] = Vec(_mm512_dpbf16_ps(a[h], reinterpret_cast<__m512bh>(_mm512_loadu_si512(qp + h * D + d)), x));
        c[h] = Vec(_mm512_dpbf16_ps(c[h], reinterpret_cast<__m512bh>(_mm512_loadu_si512(qn + h * D + d)), n));
      }
    }
    for (int h = 0; h < kG; ++h) a[h] = a[h] + c[h];
    // Per-head totals, then their max (NaN totals ignored, as std::max(tot, x) ignores
    // them) or sum, in registers.
    const float* qg = qf + g * kG * D;
    float tot;
    if constexpr (kG % 4 == 0) {
      const __m128 ninf = _mm_set1_ps(-INFINITY);
      __m128 r = sum_reduce ? _mm_setzero_ps() : ninf, nan = _mm_setzero_ps();
      for (int h = 0; h < kG; h += 4) {
        const __m128 t = hsum4(a[h], a[h + 1], a[h + 2], a[h + 3]);
        nan = _mm_or_ps(nan, _mm_cmpunord_ps(t, t));
        r = sum_reduce ? _mm_add_ps(r, t) : _mm_max_ps(_mm_max_ps(t, ninf), r);  // NaN -> -inf
      }
      if (_mm_movemask_ps(nan)) {  // rare: the totals one by one, NaN ones by the rule
        float x[kG];
        hsum(a, kG, x);
        tot = sum_reduce ? 0.f : -INFINITY;
        for (int h = 0; h < kG; ++h) {
          if (x[h] != x[h]) x[h] = quest_bound(qg + h * D, x_row, n_row, D);
          tot = sum_reduce ? tot + x[h] : std::max(tot, x[h]);
        }
      } else {
        if (sum_reduce) {
          r = _mm_add_ps(r, _mm_movehl_ps(r, r));
          r = _mm_add_ss(r, _mm_movehdup_ps(r));
        } else {
          r = _mm_max_ps(r, _mm_movehl_ps(r, r));
          r = _mm_max_ss(r, _mm_movehdup_ps(r));
        }
        tot = _mm_cvtss_f32(r);
      }
    } else {
      tot = sum_reduce ? 0.f : -INFINITY;
      for (int h = 0; h < kG; ++h) {
        float x = _mm512_reduce_add_ps(a[h]);
        if (x != x) x = quest_bound(qg + h * D, x_row, n_row, D);
        tot = sum_reduce ? tot + x : std::max(tot, x);
      }
    }
    out[g * out_stride] = tot;
  }
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
// Vec::size() elements of a K/V row as float32, converted in registers (bf16: a shift;
// fp16: the F16C conversion), so V needs no float32 copy before the P V product.
template <typename T>
inline Vec load_as_float(const T* x) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(x);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    return Vec(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  } else {
    return Vec(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))));
  }
}

// acc_h[d0, d0 + 16 kNC) += sum_t p[h][t] v_t[same], token by token: each V chunk is
// loaded and converted once for the whole group, the G x kNC accumulators stay in
// registers for the page (kG * kNC <= 16 leaves room for the V chunks).
template <typename T, int kG, int kNC>
inline void pv_block(const T* vp, int64_t ld, int64_t ntok, int64_t ps, const float* s, float* acc, int64_t D,
                     int64_t d0, const T* nv) {
  Vec a[kG][kNC];
  for (int h = 0; h < kG; ++h)
    for (int c = 0; c < kNC; ++c) a[h][c] = Vec::loadu(acc + h * D + d0 + c * Vec::size());
  for (int64_t t = 0; t < ntok; ++t) {
    if (nv) prefetch_row(nv + t * ld, D);
    Vec v[kNC];
    for (int c = 0; c < kNC; ++c) v[c] = load_as_float(vp + t * ld + d0 + c * Vec::size());
    for (int h = 0; h < kG; ++h) {
      const Vec p(s[h * ps + t]);
      for (int c = 0; c < kNC; ++c) a[h][c] = at::vec::fmadd(p, v[c], a[h][c]);
    }
  }
  for (int h = 0; h < kG; ++h)
    for (int c = 0; c < kNC; ++c) a[h][c].store(acc + h * D + d0 + c * Vec::size());
}

template <typename T, int kG>
inline void pv_page(const T* vp, int64_t ld, int64_t ntok, int64_t ps, const float* s, float* acc, int64_t D,
                    const T* nv) {
  constexpr int kNC = kG <= 2 ? 8 : kG <= 4 ? 4 : 2;
  int64_t d0 = 0;
  for (; d0 + kNC * Vec::size() <= D; d0 += kNC * Vec::size(), nv = nullptr)
    pv_block<T, kG, kNC>(vp, ld, ntok, ps, s, acc, D, d0, nv);
  for (; d0 < D; d0 += Vec::size(), nv = nullptr) pv_block<T, kG, 1>(vp, ld, ntok, ps, s, acc, D, d0, nv);
}
#endif

// Online softmax of one page's scores for head h (sh: ntok scores): rescales the head's
// accumulator when the max grows, leaves p = exp(s - max) in sh.
inline void page_softmax(float* sh, int64_t ntok, SoftmaxRowState& st, float* acc_h, int64_t D) {
  int64_t t = 0;
  Vec vmax(-INFINITY);
  for (; t + Vec::size() <= ntok; t += Vec::size()) vmax = at::vec::maximum(vmax, Vec::loadu(sh + t));
  float mx = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, vmax);
  for (; t < ntok; ++t) mx = std::max(mx, sh[t]);
  const float factor = st.rescale_to(mx);
  if (factor != 1.f) {
    int64_t d = 0;
    for (; d + Vec::size() <= D; d += Vec::size()) (Vec::loadu(acc_h + d) * Vec(factor)).store(acc_h + d);
    for (; d < D; ++d) acc_h[d] *= factor;
  }
  const Vec m(st.max);
  t = 0;
  Vec vsum(0.f);
  for (; t + Vec::size() <= ntok; t += Vec::size()) {
    const Vec e = (Vec::loadu(sh + t) - m).exp_u20();
    e.store(sh + t);
    vsum = vsum + e;
  }
  float sum = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, vsum);
  for (; t < ntok; ++t) sum += (sh[t] = std::exp(sh[t] - st.max));
  st.add_sum(sum);
}

// One page of one KV head for the G query heads of its group: scores, online softmax,
// accumulation. The scores take one reduction tree per four heads; the P V product keeps
// the heads' output chunks in registers across the page's rows. With AVX-512 and a group
// size known at compile time, K (bf16) and V are read in their storage type; otherwise
// K/V rows (row stride ld) are converted to float32 once per page.

// kG > 0: the group size at compile time, so the per-head accumulators stay in registers
// (with a run-time G they lived on the stack: 2x slower); kG == 0: any G.
template <typename T, int kG>
void page_step(const T* kp, const T* vp, int64_t ld, int64_t ntok, int64_t ps, int64_t D, int64_t G_rt,
               const float* qf, const T* qb, int64_t q_ld, float scale, float* kf, float* vf, float* s, float* acc,
               SoftmaxRowState* st, const T* nk, const T* nv) {
  // nk, nv: the next page's K/V rows (same head), prefetched row by row; nullptr if none.
  for (int64_t t = ntok; t < ps && nk; ++t) {  // rows the loops below do not reach
    prefetch_row(nk + t * ld, D);
    prefetch_row(nv + t * ld, D);
  }
  constexpr int64_t kMaxG = kG > 0 ? kG : 16;
  const int64_t G = kG > 0 ? kG : G_rt;
  const bool vec_d = D % Vec::size() == 0 && G <= kMaxG;
  bool scored = false;
#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
  if constexpr (std::is_same_v<T, c10::BFloat16> && kG > 0) {
    if (D % 32 == 0 && cpu_has_avx512_bf16()) {
      scores_bf16<kG>(kp, ld, ntok, ps, D, qb, q_ld, scale, s, nk);
      scored = true;
    }
  }
#endif
  for (int64_t t = 0; t < ntok && !scored; ++t) {
    if (nk) prefetch_row(nk + t * ld, D);
    to_float(kp + t * ld, kf + t * D, D);
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
  for (int64_t h = 0; h < G; ++h) page_softmax(s + h * ps, ntok, st[h], acc + h * D, D);
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (kG > 0) {
    if (vec_d) {
      pv_page<T, kG>(vp, ld, ntok, ps, s, acc, D, nv);
      return;
    }
  }
#endif
  for (int64_t t = 0; t < ntok; ++t) {
    if (nv) prefetch_row(nv + t * ld, D);
    to_float(vp + t * ld, vf + t * D, D);
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

template <template <typename> class F, typename... Args>
void by_dtype(DType dt, Args&&... args) {
  switch (dt) {
    case DType::kFloat32: return F<float>::run(args...);
    case DType::kBFloat16: return F<c10::BFloat16>::run(args...);
    case DType::kFloat16: return F<c10::Half>::run(args...);
  }
}
}  // namespace sparse_attn::cpu::SA_CPU_NS
