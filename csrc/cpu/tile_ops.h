// Vectorized building blocks of the CPU tile loop: aligned workspace, the transposes and
// interleaves that pack K and V for brgemm, and the two passes of the row softmax.
// Included only by attention_kernel.cpp, which is compiled once per instruction set.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#include "sparse_attn/softmax_state.h"

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace sparse_attn::cpu::SA_CPU_NS {

using Vec = at::vec::Vectorized<float>;

// 64-byte aligned, uninitialized storage. AMX tile loads of rows that straddle cache
// lines run at about half speed, so every tile operand the kernel owns is aligned.
template <typename T>
struct AlignedBuffer {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> p;
  int64_t capacity = 0;

  explicit AlignedBuffer(int64_t n = 0) { reserve(n); }
  void reserve(int64_t n) {
    if (n <= capacity) return;
    // Large buffers (packed K/V) get 2 MB alignment and a huge-page hint: fewer page
    // faults when first filled and fewer TLB misses when the tiles read them.
    constexpr size_t kHuge = size_t(2) << 20;
    const size_t raw = static_cast<size_t>(n) * sizeof(T);
    const size_t align = raw >= 2 * kHuge ? kHuge : 64;
    const size_t bytes = (raw + align - 1) / align * align;
    p.reset(static_cast<T*>(std::aligned_alloc(align, bytes)));
#ifdef MADV_HUGEPAGE
    if (p && align == kHuge) madvise(p.get(), bytes, MADV_HUGEPAGE);
#endif
    TORCH_CHECK(p, "sparse_attn: out of memory allocating ", bytes, " bytes of workspace");
    capacity = n;
  }
  T* data() const { return p.get(); }
};

// Grow-only scratch memory of the calling thread, kept between calls: packed K/V of a
// long prompt are tens of MB, and fresh pages would cost more than the packing itself.
inline AlignedBuffer<char>* scratch_buffers() {
  thread_local AlignedBuffer<char> bufs[2];
  return bufs;
}
template <typename T>
T* scratch(int slot, int64_t n) {
  AlignedBuffer<char>& buf = scratch_buffers()[slot];
  buf.reserve(n * static_cast<int64_t>(sizeof(T)));
  return reinterpret_cast<T*>(buf.data());
}

// dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c < cols (32-bit elements).
// Packing K^T for bf16 is this transpose on (d, d+1) pairs seen as 32-bit words.
inline void transpose_u32(const uint32_t* src, int64_t ld_src, int64_t rows, int64_t cols, uint32_t* dst,
                          int64_t ld_dst) {
  int64_t r0 = 0;
#if defined(CPU_CAPABILITY_AVX512)
  for (; r0 + 16 <= rows; r0 += 16) {
    int64_t c0 = 0;
    for (; c0 + 16 <= cols; c0 += 16) {
      // 16x16 transpose in four shuffle stages (32-, 64-bit unpacks, then 128-bit lanes).
      __m512i a[16], b[16];
      for (int i = 0; i < 16; ++i) a[i] = _mm512_loadu_si512(src + (r0 + i) * ld_src + c0);
      for (int i = 0; i < 16; i += 2) {
        b[i] = _mm512_unpacklo_epi32(a[i], a[i + 1]);
        b[i + 1] = _mm512_unpackhi_epi32(a[i], a[i + 1]);
      }
      for (int i = 0; i < 16; i += 4) {
        a[i] = _mm512_unpacklo_epi64(b[i], b[i + 2]);
        a[i + 1] = _mm512_unpackhi_epi64(b[i], b[i + 2]);
        a[i + 2] = _mm512_unpacklo_epi64(b[i + 1], b[i + 3]);
        a[i + 3] = _mm512_unpackhi_epi64(b[i + 1], b[i + 3]);
      }
      for (int i = 0; i < 4; ++i) {  // rows i, i+4 / i+8, i+12: gather 128-bit lanes
        b[i] = _mm512_shuffle_i32x4(a[i], a[i + 4], 0x88);
        b[i + 4] = _mm512_shuffle_i32x4(a[i], a[i + 4], 0xdd);
        b[i + 8] = _mm512_shuffle_i32x4(a[i + 8], a[i + 12], 0x88);
        b[i + 12] = _mm512_shuffle_i32x4(a[i + 8], a[i + 12], 0xdd);
      }
      for (int i = 0; i < 4; ++i) {
        a[i] = _mm512_shuffle_i32x4(b[i], b[i + 8], 0x88);
        a[i + 8] = _mm512_shuffle_i32x4(b[i], b[i + 8], 0xdd);
        a[i + 4] = _mm512_shuffle_i32x4(b[i + 4], b[i + 12], 0x88);
        a[i + 12] = _mm512_shuffle_i32x4(b[i + 4], b[i + 12], 0xdd);
      }
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + (c0 + i) * ld_dst + r0, a[i]);
    }
    for (; c0 < cols; ++c0)
      for (int64_t r = r0; r < r0 + 16; ++r) dst[c0 * ld_dst + r] = src[r * ld_src + c0];
  }
#endif
  for (; r0 < rows; ++r0)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r0] = src[r0 * ld_src + c];
}

// out[2i] = a[i], out[2i+1] = b[i] for i < n (16-bit elements): one VNNI row pair of V.
inline void interleave_u16(const uint16_t* a, const uint16_t* b, int64_t n, uint16_t* out) {
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
  alignas(64) static const uint16_t lo_idx[32] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,
                                                  37, 6,  38, 7,  39, 8,  40, 9,  41, 10, 42,
                                                  11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i lo = _mm512_load_si512(lo_idx);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (; i + 32 <= n; i += 32) {
    __m512i x = _mm512_loadu_si512(a + i), y = _mm512_loadu_si512(b + i);
    _mm512_storeu_si512(out + 2 * i, _mm512_permutex2var_epi16(x, lo, y));
    _mm512_storeu_si512(out + 2 * i + 32, _mm512_permutex2var_epi16(x, hi, y));
  }
#endif
  for (; i < n; ++i) {
    out[2 * i] = a[i];
    out[2 * i + 1] = b[i];
  }
}

// Max of s[x0, x1) (raw scores, before scaling). Four independent accumulators: a
// single one is a dependency chain through the max latency (measured 3x slower).
inline float row_max(const float* s, int64_t x0, int64_t x1, float m) {
  int64_t j = x0;
#if defined(CPU_CAPABILITY_AVX512)
  __m512 m0 = _mm512_set1_ps(m), m1 = m0, m2 = m0, m3 = m0;
  for (; j + 64 <= x1; j += 64) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(s + j));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(s + j + 16));
    m2 = _mm512_max_ps(m2, _mm512_loadu_ps(s + j + 32));
    m3 = _mm512_max_ps(m3, _mm512_loadu_ps(s + j + 48));
  }
  for (; j + 16 <= x1; j += 16) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(s + j));
  if (j < x1) {  // masked tail: masked-off lanes read as -inf
    const __mmask16 k = static_cast<__mmask16>((1u << (x1 - j)) - 1);
    m1 = _mm512_max_ps(m1, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, s + j));
    j = x1;
  }
  m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
#endif
  for (; j < x1; ++j) m = std::max(m, s[j]);
  return m;
}

// Portable path (DEFAULT build): ATen's vectorized exp.
template <typename out_t>
inline float exp_store_generic(const float* s, int64_t x0, int64_t x1, float scale, float m, out_t* p) {
  int64_t j = x0;
  const Vec vs(scale), vm(-m);
  Vec vsum(0.f), vsum2(0.f);
  if constexpr (std::is_same_v<out_t, float>) {
    for (; j + Vec::size() <= x1; j += Vec::size()) {
      Vec e = at::vec::fmadd(Vec::loadu(s + j), vs, vm).exp_u20();
      e.store(p + j);
      vsum = vsum + e;
    }
  } else {
    for (; j + 2 * Vec::size() <= x1; j += 2 * Vec::size()) {
      Vec e0 = at::vec::fmadd(Vec::loadu(s + j), vs, vm).exp_u20();
      Vec e1 = at::vec::fmadd(Vec::loadu(s + j + Vec::size()), vs, vm).exp_u20();
      at::vec::convert_from_float<out_t>(e0, e1).store(p + j);
      vsum = vsum + e0;
      vsum2 = vsum2 + e1;
    }
  }
  float out = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, vsum + vsum2);
  for (; j < x1; ++j) {
    const float e = std::exp(s[j] * scale - m);
    p[j] = static_cast<out_t>(e);
    out += e;
  }
  return out;
}

#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
// 2^x for finite x: x = n + f with f in [-1/2, 1/2], 2^f by a polynomial fitted for least
// maximum relative error on that interval, 2^n by vscalefps (which also flushes very
// negative x to 0). Relative error: 7.5e-8 at degree 5 (fp32 P: below fp32 rounding),
// 2.6e-6 at degree 4 (fp16/bf16 P: 1/190 and 1/1500 of their rounding; the fp32 row sums
// take the same values). Degree 3 (7.5e-5) measured 1-2% faster for bf16, within noise;
// not worth a visible error term. The softmax costs as much as the AMX tile products at
// head_dim 64.
template <int Deg>
inline __m512 exp2_fast(__m512 x) {
  static_assert(Deg == 4 || Deg == 5, "exp2_fast: degree 4 or 5");
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p;
  if constexpr (Deg == 5) {
    p = _mm512_set1_ps(1.327647129073739e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.675540961325169e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550713092088699e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022120237350464e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931469440460205e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001192092896f));
  } else {
    p = _mm512_set1_ps(9.570101276040077e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.591785907745361e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.40247443318367e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931217908859253e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.999992847442627e-1f));
  }
  return _mm512_scalef_ps(p, n);
}

// The polynomial degree for probabilities stored as out_t (see exp2_fast).
template <typename out_t>
constexpr int exp2_degree() {
  return std::is_same_v<out_t, float> ? 5 : 4;
}

// exp(s * scale - m) = 2^(s * scale * log2e - m * log2e) on [x0, x1); STORE(ptr, e0, e1)
// writes 32 results. Returns the sum. A macro so that the native-bf16 copy can carry its
// own target attribute (GCC will not inline AVX512_BF16 code into a function without it).
#define SA_EXP_STORE_BODY(STORE)                                                       \
  constexpr float kLog2e = 1.4426950408889634f;                                        \
  const __m512 vs = _mm512_set1_ps(scale * kLog2e), vm = _mm512_set1_ps(-m * kLog2e);  \
  __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();                       \
  int64_t j = x0;                                                                      \
  for (; j + 32 <= x1; j += 32) {                                                      \
    const __m512 e0 = exp2_fast<kDeg>(_mm512_fmadd_ps(_mm512_loadu_ps(s + j), vs, vm));      \
    const __m512 e1 = exp2_fast<kDeg>(_mm512_fmadd_ps(_mm512_loadu_ps(s + j + 16), vs, vm)); \
    sum0 = _mm512_add_ps(sum0, e0);                                                    \
    sum1 = _mm512_add_ps(sum1, e1);                                                    \
    STORE(p + j, e0, e1);                                                              \
  }                                                                                    \
  for (; j < x1; j += 16) { /* masked tail, 16 at a time: no scalar exp */            \
    const int64_t n = std::min<int64_t>(16, x1 - j);                                   \
    const __mmask16 k = static_cast<__mmask16>((1u << n) - 1);                         \
    const __m512 e = exp2_fast<kDeg>(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, s + j), vs, vm)); \
    sum0 = _mm512_mask_add_ps(sum0, k, sum0, e);                                       \
    alignas(64) float tmp[16];                                                         \
    _mm512_store_ps(tmp, e);                                                           \
    for (int64_t t = 0; t < n; ++t) p[j + t] = static_cast<std::remove_pointer_t<decltype(p)>>(tmp[t]); \
  }                                                                                    \
  return _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));

// Stores 32 results as out_t (the generic rounding for 16-bit types).
template <typename out_t>
inline void store32(out_t* dst, __m512 e0, __m512 e1) {
  if constexpr (std::is_same_v<out_t, float>) {
    _mm512_storeu_ps(dst, e0);
    _mm512_storeu_ps(dst + 16, e1);
  } else {
    at::vec::convert_from_float<out_t>(Vec(e0), Vec(e1)).store(dst);
  }
}

// bf16 rounding with the CPU's own instruction (AVX512_BF16) instead of the integer
// emulation; the *_bf16_native variants are picked at run time when the CPU has it.
#define SA_STORE_BF16_NATIVE(dst, e0, e1) \
  _mm512_storeu_si512(reinterpret_cast<void*>(dst), reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(e1, e0)))

template <typename out_t>
inline float exp_store_avx512(const float* s, int64_t x0, int64_t x1, float scale, float m, out_t* p) {
  constexpr int kDeg = exp2_degree<out_t>();
  SA_EXP_STORE_BODY(store32<out_t>)
}

__attribute__((target("avx512bf16"))) inline float exp_store_bf16_native(const float* s, int64_t x0, int64_t x1,
                                                                        float scale, float m, c10::BFloat16* p) {
  constexpr int kDeg = exp2_degree<c10::BFloat16>();
  SA_EXP_STORE_BODY(SA_STORE_BF16_NATIVE)
}
#undef SA_EXP_STORE_BODY

// The two passes under a bit mask, over nc 64-score chunks of one tile row: bit t of
// bits[c] set means score c * 64 + t is visible (element masks that are not intervals:
// vertical-slash). Masked-off entries of p get exact zeros. One reduction per row.
inline float row_max_bits_avx512(const float* s, const uint64_t* bits, int64_t nc, float m) {
  __m512 acc0 = _mm512_set1_ps(m), acc1 = acc0;
  for (int64_t c = 0; c < nc; ++c, s += 64) {
    const uint64_t w = bits[c];
    acc0 = _mm512_mask_max_ps(acc0, static_cast<__mmask16>(w), acc0, _mm512_loadu_ps(s));
    acc1 = _mm512_mask_max_ps(acc1, static_cast<__mmask16>(w >> 16), acc1, _mm512_loadu_ps(s + 16));
    acc0 = _mm512_mask_max_ps(acc0, static_cast<__mmask16>(w >> 32), acc0, _mm512_loadu_ps(s + 32));
    acc1 = _mm512_mask_max_ps(acc1, static_cast<__mmask16>(w >> 48), acc1, _mm512_loadu_ps(s + 48));
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(acc0, acc1));
}

// Masked-off lanes may hold scores above m (exp overflows to inf): zeroed by the mask.
#define SA_EXP_STORE_BITS_BODY(STORE)                                                               \
  constexpr float kLog2e = 1.4426950408889634f;                                                     \
  const __m512 vs = _mm512_set1_ps(scale * kLog2e), vm = _mm512_set1_ps(-m * kLog2e);               \
  __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();                                    \
  for (int64_t c = 0; c < nc; ++c) {                                                                \
    const uint64_t w = bits[c];                                                                     \
    for (int q = 0; q < 64; q += 32) {                                                              \
      const float* x = s + c * 64 + q;                                                              \
      const __m512 e0 = _mm512_maskz_mov_ps(static_cast<__mmask16>(w >> q),                        \
                                            exp2_fast<kDeg>(_mm512_fmadd_ps(_mm512_loadu_ps(x), vs, vm))); \
      const __m512 e1 = _mm512_maskz_mov_ps(static_cast<__mmask16>(w >> (q + 16)),                 \
                                            exp2_fast<kDeg>(_mm512_fmadd_ps(_mm512_loadu_ps(x + 16), vs, vm))); \
      sum0 = _mm512_add_ps(sum0, e0);                                                               \
      sum1 = _mm512_add_ps(sum1, e1);                                                               \
      STORE(p + c * 64 + q, e0, e1);                                                                \
    }                                                                                               \
  }                                                                                                 \
  return _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));

template <typename out_t>
inline float exp_store_bits_avx512(const float* s, const uint64_t* bits, int64_t nc, float scale, float m, out_t* p) {
  constexpr int kDeg = exp2_degree<out_t>();
  SA_EXP_STORE_BITS_BODY(store32<out_t>)
}
__attribute__((target("avx512bf16"))) inline float exp_store_bits_bf16_native(const float* s, const uint64_t* bits,
                                                                             int64_t nc, float scale, float m,
                                                                             c10::BFloat16* p) {
  constexpr int kDeg = exp2_degree<c10::BFloat16>();
  SA_EXP_STORE_BITS_BODY(SA_STORE_BF16_NATIVE)
}
#undef SA_STORE_BF16_NATIVE
#undef SA_EXP_STORE_BITS_BODY

inline bool cpu_has_avx512_bf16() {
  static const bool ok = __builtin_cpu_supports("avx512bf16");
  return ok;
}
#endif

// p[j] = exp(s[j] * scale - m) on [x0, x1), stored as out_t; returns the sum of the
// float values (flash-attention's convention: the sum is not re-rounded).
template <typename out_t>
inline float exp_store(const float* s, int64_t x0, int64_t x1, float scale, float m, out_t* p) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
  if constexpr (std::is_same_v<out_t, c10::BFloat16>) {
    if (cpu_has_avx512_bf16()) return exp_store_bf16_native(s, x0, x1, scale, m, p);
  }
  return exp_store_avx512<out_t>(s, x0, x1, scale, m, p);
#else
  return exp_store_generic(s, x0, x1, scale, m, p);
#endif
}

// Max of the visible scores of a tile row under bits (see row_max_bits_avx512).
inline float row_max_bits(const float* s, const uint64_t* bits, int64_t nc, float m) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
  return row_max_bits_avx512(s, bits, nc, m);
#else
  for (int64_t t = 0; t < nc * 64; ++t)
    if ((bits[t / 64] >> (t % 64)) & 1) m = std::max(m, s[t]);
  return m;
#endif
}

// p = exp(s * scale - m) where visible under bits, exact 0 elsewhere; returns the sum.
template <typename out_t>
inline float exp_store_bits(const float* s, const uint64_t* bits, int64_t nc, float scale, float m, out_t* p) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
  if constexpr (std::is_same_v<out_t, c10::BFloat16>) {
    if (cpu_has_avx512_bf16()) return exp_store_bits_bf16_native(s, bits, nc, scale, m, p);
  }
  return exp_store_bits_avx512<out_t>(s, bits, nc, scale, m, p);
#else
  float sum = 0.f;
  for (int64_t t = 0; t < nc * 64; ++t) {
    const float e = (bits[t / 64] >> (t % 64)) & 1 ? std::exp(s[t] * scale - m) : 0.f;
    p[t] = static_cast<out_t>(e);
    sum += e;
  }
  return sum;
#endif
}

// Bits [0, n) set, n clamped to [0, 64].
inline uint64_t low_bits(int64_t n) {
  return n <= 0 ? 0 : n >= 64 ? ~uint64_t(0) : (uint64_t(1) << n) - 1;
}

// o[0, D) = a[0, D) * inv, rounded to out_t (bf16 with the CPU's own conversion where it
// has one). bf16 rows on 64-byte lines are written with streaming stores: the output is
// written once and read by the next op, and a normal store first reads each line
// (64 MB more traffic at 8k tokens, 32 heads). Measured: -7 ms at 8k tokens into a buffer
// already mapped (the output cache's or out=), +7 ms into a fresh one (page faults), which
// is why they came with the output cache. The caller fences (store_fence) before its
// thread finishes.
#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
__attribute__((target("avx512bf16"))) inline void store_row_bf16_native(const float* a, float inv, c10::BFloat16* o,
                                                                       int64_t D) {
  const __m512 vi = _mm512_set1_ps(inv);
  const bool stream = reinterpret_cast<uintptr_t>(o) % 64 == 0;  // D % 32 == 0: whole lines
  for (int64_t d = 0; d < D; d += 32) {
    const __m512 x0 = _mm512_mul_ps(_mm512_loadu_ps(a + d), vi), x1 = _mm512_mul_ps(_mm512_loadu_ps(a + d + 16), vi);
    const __m512i y = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(x1, x0));
    if (stream) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(o + d), y);
    } else {
      _mm512_storeu_si512(o + d, y);
    }
  }
}
#endif

// Orders this thread's streaming stores before anything it does next (they are weakly
// ordered); called once per work item.
inline void store_fence() {
#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
  _mm_sfence();
#endif
}

template <typename out_t>
inline void store_row_scaled(float* a, float inv, out_t* o, int64_t D) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__)
  if constexpr (std::is_same_v<out_t, c10::BFloat16>) {
    if (D % 32 == 0 && cpu_has_avx512_bf16()) return store_row_bf16_native(a, inv, o, D);
  }
#endif
  at::vec::map([inv](Vec x) { return x * Vec(inv); }, a, a, D);
  at::vec::convert(a, o, D);
}

// lse of each row state, vectorized (one log per row was ~2% of a sparse prefill).
inline void store_lse(const SoftmaxRowState* st, int64_t rows, float* lse) {
  alignas(64) float sum[Vec::size()], mx[Vec::size()];
  for (int64_t r0 = 0; r0 < rows; r0 += Vec::size()) {
    const int64_t n = std::min<int64_t>(Vec::size(), rows - r0);
    for (int64_t i = 0; i < Vec::size(); ++i) {
      sum[i] = i < n ? st[r0 + i].sum : 1.f;
      mx[i] = i < n ? st[r0 + i].max : 0.f;
    }
    const Vec l = Vec::loadu(mx) + Vec::loadu(sum).log();
    alignas(64) float out[Vec::size()];
    l.store(out);
    for (int64_t i = 0; i < n; ++i) lse[r0 + i] = sum[i] > 0.f ? out[i] : -INFINITY;
  }
}

// All-zero bits are 0.0 in float, bf16 and fp16.
template <typename T>
inline void fill_zero(T* p, int64_t x0, int64_t x1) {
  if (x1 > x0) std::memset(static_cast<void*>(p + x0), 0, sizeof(T) * (x1 - x0));
}

}  // namespace sparse_attn::cpu::SA_CPU_NS
