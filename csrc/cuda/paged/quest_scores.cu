// quest_scores on CUDA: the Quest bound of every (sequence b, KV head g, page j), reduced over
// the query heads of g's group by max or sum.
//
// One CTA = one (b, g) and 8 x (128 / L) consecutive pages. The group's queries are converted
// to float32 into shared memory once ([G, D]). A page's k_max and k_min rows are read by a
// group of L lanes in 16-byte slices (paged_ops.cuh bound_partials, which applies the shared
// quest_bound of paged.h to each slice and is run on the CPU by the host check); the lanes'
// partial bounds are summed by a butterfly of shuffles within the L-lane group, per query
// head, then reduced over the heads. Pages past the sequence get -inf.
#include <cuda_runtime.h>

#include "launch.h"
#include "paged_ops.cuh"

namespace sparse_attn::cuda {
namespace paged {
namespace {

constexpr int kThreads = 128;
constexpr int kIters = 8;  // pages per lane group and CTA

// Sum over the L lanes (a power of two) of the aligned group holding this lane; every lane
// of the warp must call it.
__device__ __forceinline__ float group_sum(float x, int L) {
  for (int off = L / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

__device__ __forceinline__ float load_q(const void* q, DType dt, int64_t off) {
  switch (dt) {
    case DType::kBFloat16: return to_f(static_cast<const __nv_bfloat16*>(q)[off]);
    case DType::kFloat16: return to_f(static_cast<const __half*>(q)[off]);
    default: return static_cast<const float*>(q)[off];
  }
}

// (128, 4): up to 128 registers. With the bound (128) alone ptxas held the 16-byte instances
// to 64 registers and spilled 4 bytes.
template <typename T, int N>
__global__ void __launch_bounds__(kThreads, 4) quest_scores_kernel(QuestScoresArgs a, int L, int64_t page_blocks) {
  extern __shared__ __align__(16) float qs[];  // [G, D]
  const PagedKVParams& p = a.p;
  const int64_t D = p.head_dim, G = a.heads_q / p.heads_kv;
  const int64_t bg = blockIdx.x / page_blocks, pb = blockIdx.x % page_blocks;
  const int64_t b = bg / p.heads_kv, g = bg % p.heads_kv;
  for (int64_t i = threadIdx.x; i < G * D; i += kThreads)
    qs[i] = load_q(a.q, a.q_dtype, b * a.q_stride[0] + (g * G + i / D) * a.q_stride[1] + (i % D) * a.q_stride[2]);
  __syncthreads();

  const int rows = kThreads / L, row = threadIdx.x / L, lane = threadIdx.x % L;
  const int64_t npages = (p.seqlens[b] + p.page_size - 1) / p.page_size;
  float* out = a.out + bg * p.max_pages;
  for (int it = 0; it < kIters; ++it) {
    const int64_t j0 = (pb * kIters + it) * rows;
    if (j0 >= p.max_pages) break;  // the same for the whole CTA
    const int64_t j = j0 + row;
    const bool active = j < npages;
    const int64_t page = active ? p.page_table[b * p.table_stride + j] : 0;
    const T* mx = static_cast<const T*>(p.k_max) + page * p.meta_stride[0] + g * p.meta_stride[1];
    const T* mn = static_cast<const T*>(p.k_min) + page * p.meta_stride[0] + g * p.meta_stride[1];
    float red = a.sum_reduce ? 0.f : -INFINITY;
    for (int64_t h0 = 0; h0 < G; h0 += kHeadBlock) {
      float part[kHeadBlock];
      if (active) {
        bound_partials<T, N>(mx, mn, qs, D, G, h0, lane, L, part);
      } else {
#pragma unroll
        for (int h = 0; h < kHeadBlock; ++h) part[h] = 0.f;
      }
#pragma unroll
      for (int h = 0; h < kHeadBlock; ++h) {
        if (h0 + h < G) {  // the same for the whole CTA: every lane shuffles
          const float s = group_sum(part[h], L);
          red = a.sum_reduce ? red + s : fmaxf(red, s);
        }
      }
    }
    if (lane == 0 && j < p.max_pages) out[j] = active ? red : -INFINITY;
  }
}

template <typename T, int N>
cudaError_t launch_scores(const QuestScoresArgs& a, int device, cudaStream_t stream) {
  const PagedKVParams& p = a.p;
  const int L = lanes_per_row(p.head_dim / N);
  const int64_t per_block = int64_t(kIters) * (kThreads / L);
  const int64_t page_blocks = (p.max_pages + per_block - 1) / per_block;
  const int64_t blocks = p.batch * p.heads_kv * page_blocks;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t smem = (a.heads_q / p.heads_kv) * p.head_dim * int64_t(sizeof(float));
  if (smem > 48 * 1024) {  // large groups: opt in to more dynamic shared memory
    int optin = 0;
    cudaError_t err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return err;
    if (smem > optin) return cudaErrorInvalidValue;
    err = cudaFuncSetAttribute(quest_scores_kernel<T, N>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  quest_scores_kernel<T, N><<<static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(smem), stream>>>(
      a, L, page_blocks);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_scores_dtype(const QuestScoresArgs& a, int device, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  return a.vectorized ? launch_scores<T, kVec>(a, device, stream) : launch_scores<T, 1>(a, device, stream);
}

}  // namespace
}  // namespace paged

bool quest_scores_vectorizable(const QuestScoresArgs& a) {
  const int64_t vec = 16 / paged::elem_bytes(a.dtype);
  return paged::aligned16(a.p.k_max) && paged::aligned16(a.p.k_min) && a.p.head_dim % vec == 0 &&
         a.p.meta_stride[0] % vec == 0 && a.p.meta_stride[1] % vec == 0;
}

const char* quest_scores_kernel_name(DType dtype, bool vectorized) {
  static const char* const kNames[2][3] = {
      {"quest_scores_kernel<float32>", "quest_scores_kernel<bf16>", "quest_scores_kernel<fp16>"},
      {"quest_scores_kernel<float32, 16B>", "quest_scores_kernel<bf16, 16B>", "quest_scores_kernel<fp16, 16B>"}};
  return kNames[vectorized ? 1 : 0][static_cast<int>(dtype)];
}

cudaError_t quest_scores(const QuestScoresArgs& a, int device, cudaStream_t stream) {
  if (a.p.heads_kv < 1 || a.heads_q % a.p.heads_kv != 0 || a.heads_q < 1 || a.p.head_dim < 1 || a.out == nullptr ||
      (a.vectorized && !quest_scores_vectorizable(a)))
    return cudaErrorInvalidValue;
  switch (a.dtype) {
    case DType::kFloat32: return paged::launch_scores_dtype<float>(a, device, stream);
    case DType::kBFloat16: return paged::launch_scores_dtype<__nv_bfloat16>(a, device, stream);
    case DType::kFloat16: return paged::launch_scores_dtype<__half>(a, device, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sparse_attn::cuda
