// The per-thread work of the paged-cache kernels (paged_write.cu, quest_scores.cu), as
// __host__ __device__ functions so that host_checks/paged_ops_check.cu runs exactly this code
// on the CPU. No shuffles, no shared memory, no intrinsics beyond the bf16/fp16 conversions.
//
// Rows (a K/V row, a k_max/k_min row) are read in slices of N elements: N = 16 bytes' worth
// (Pack<T, N>, one 16-byte access) or N = 1 where the tensors' alignment does not allow that.
// A row of D elements has D / N slices; L = lanes_per_row(D / N) threads (a power of two, at
// most 32, so groups never straddle a warp) share a row, lane l taking slices l, l + L, ...
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "sparse_attn/macros.h"
#include "sparse_attn/paged.h"

// `#pragma unroll` in device code only (the host compiler of the host checks warns on it).
#if defined(__CUDA_ARCH__)
#define SA_UNROLL _Pragma("unroll")
#else
#define SA_UNROLL
#endif

namespace sparse_attn::cuda::paged {

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T e[N];
};

SA_HOST_DEVICE float to_f(float x) { return x; }
SA_HOST_DEVICE float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
SA_HOST_DEVICE float to_f(__half x) { return __half2float(x); }

template <typename T, int N>
SA_HOST_DEVICE Pack<T, N> load_pack(const T* p) { return *reinterpret_cast<const Pack<T, N>*>(p); }
template <typename T, int N>
SA_HOST_DEVICE void store_pack(T* p, const Pack<T, N>& x) { *reinterpret_cast<Pack<T, N>*>(p) = x; }

SA_HOST_DEVICE int64_t elem_bytes(DType t) { return t == DType::kFloat32 ? 4 : 2; }
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Smallest power of two >= slices, capped at 32.
SA_HOST_DEVICE int lanes_per_row(int64_t slices) {
  int l = 1;
  while (l < slices && l < 32) l *= 2;
  return l;
}

// ---------------------------------------------------------------- paged_kv_write
// A write, with its tokens grouped into runs of one page each (launch.h WriteRuns).
struct WriteView {
  PagedKVWrite w;
  const int32_t* order = nullptr;
  const int32_t* run_start = nullptr;
  int64_t runs = 0;
};

// Item = (run r, KV head g) = (item / H_kv, item % H_kv); `lane` of the L lanes of the item.
// For each of its slices: load the page's metadata slice, then for every token of the run in
// call order copy the K and V slices into the page and fold the key into the metadata
// (slot 0 sets it, other slots widen it; comparisons in float, exact for every dtype, stored
// values are the key's own elements), as the CPU engine's write_tokens; store the metadata.
template <typename T, int N>
SA_HOST_DEVICE void write_item(const WriteView& v, int64_t item, int lane, int L) {
  const PagedKVWrite& w = v.w;
  const int64_t r = item / w.heads_kv, g = item % w.heads_kv;
  const int64_t t0 = v.run_start ? v.run_start[r] : r, t1 = v.run_start ? v.run_start[r + 1] : r + 1;
  const int64_t first = v.order ? v.order[t0] : t0;
  const int64_t page = w.page_ids[first];
  T* kp = static_cast<T*>(w.k_pages) + page * w.page_stride[0] + g * w.page_stride[2];
  T* vp = static_cast<T*>(w.v_pages) + page * w.page_stride[0] + g * w.page_stride[2];
  T* mxp = static_cast<T*>(w.k_max) + page * w.meta_stride[0] + g * w.meta_stride[1];
  T* mnp = static_cast<T*>(w.k_min) + page * w.meta_stride[0] + g * w.meta_stride[1];
  const T* k = static_cast<const T*>(w.k) + g * w.src_stride[1];
  const T* vs = static_cast<const T*>(w.v) + g * w.v_src_stride[1];
  for (int64_t c = lane; c < w.head_dim / N; c += L) {
    const int64_t d = c * N;
    Pack<T, N> mx = load_pack<T, N>(mxp + d), mn = load_pack<T, N>(mnp + d);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = v.order ? v.order[t] : t;
      const int64_t slot = w.slots[n];
      const Pack<T, N> kx = load_pack<T, N>(k + n * w.src_stride[0] + d);
      const Pack<T, N> vx = load_pack<T, N>(vs + n * w.v_src_stride[0] + d);
      store_pack<T, N>(kp + slot * w.page_stride[1] + d, kx);
      store_pack<T, N>(vp + slot * w.page_stride[1] + d, vx);
      if (slot == 0) {
        mx = kx, mn = kx;
      } else {
SA_UNROLL
        for (int e = 0; e < N; ++e) {
          const float x = to_f(kx.e[e]);
          if (x > to_f(mx.e[e])) mx.e[e] = kx.e[e];
          if (x < to_f(mn.e[e])) mn.e[e] = kx.e[e];
        }
      }
    }
    store_pack<T, N>(mxp + d, mx);
    store_pack<T, N>(mnp + d, mn);
  }
}

// ---------------------------------------------------------------- quest_scores
constexpr int kHeadBlock = 8;  // query heads whose partial bounds a lane holds at once

// Partial bounds of one page for query heads h0 .. h0 + kHeadBlock - 1 (those < G) from the
// slices `lane` holds: part[h] = sum over its slices of quest_bound (paged.h) of the slice.
// q: the group's queries in float32 [G, D], 16-byte aligned; mx/mn: the page's k_max/k_min
// rows of the KV head.
template <typename T, int N>
SA_HOST_DEVICE void bound_partials(const T* mx, const T* mn, const float* q, int64_t D, int64_t G, int64_t h0,
                                   int lane, int L, float* part) {
  static_assert(N == 1 || N % 4 == 0, "slices of 1 element or of whole 16-byte vectors");
SA_UNROLL
  for (int h = 0; h < kHeadBlock; ++h) part[h] = 0.f;
  for (int64_t c = lane; c < D / N; c += L) {
    const Pack<T, N> a = load_pack<T, N>(mx + c * N), b = load_pack<T, N>(mn + c * N);
    float fa[N], fb[N];
SA_UNROLL
    for (int e = 0; e < N; ++e) fa[e] = to_f(a.e[e]), fb[e] = to_f(b.e[e]);
SA_UNROLL
    for (int h = 0; h < kHeadBlock; ++h) {
      if (h0 + h < G) {
        const float* qh = q + (h0 + h) * D + c * N;
        float qv[N];
        if constexpr (N % 4 == 0) {  // 16-byte reads (D and c * N are multiples of 4)
SA_UNROLL
          for (int i = 0; i < N; i += 4) {
            const Pack<float, 4> x = load_pack<float, 4>(qh + i);
            qv[i] = x.e[0], qv[i + 1] = x.e[1], qv[i + 2] = x.e[2], qv[i + 3] = x.e[3];
          }
        } else {
          qv[0] = qh[0];  // N == 1
        }
        part[h] += quest_bound(qv, fa, fb, N);
      }
    }
  }
}

}  // namespace sparse_attn::cuda::paged
