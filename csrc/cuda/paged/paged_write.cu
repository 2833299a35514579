// paged_kv_write on CUDA: the K/V rows of new tokens into their pages and the pages' k_max /
// k_min, in one pass. The work of a thread is paged_ops.cuh write_item (run on the CPU by
// host_checks/paged_ops_check.cu); this file maps threads to (run, KV head, lane) and
// launches.
//
// Decode step (PagedKVCache.append): one token per sequence, each on its own page, so
// every run is one token (run_start == nullptr) and a thread group reads the page's metadata
// slice, widens it by the token and writes it back. Prefill (PagedKVCache.prefill / extend,
// ragged prompts): a run is the up to page_size consecutive tokens of one page; its thread
// group copies them in order and folds the metadata in registers, writing it once.
// Adjacent groups of a CTA take the KV heads of the same run (adjacent source rows).
#include <cuda_runtime.h>

#include "launch.h"
#include "paged_ops.cuh"

namespace sparse_attn::cuda {
namespace paged {
namespace {

constexpr int kThreads = 128;

// (128, 4): up to 128 registers (as quest_scores_kernel: the bound (128) alone means 64).
template <typename T, int N>
__global__ void __launch_bounds__(kThreads, 4) paged_kv_write_kernel(WriteView v, int L) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (kThreads / L) + threadIdx.x / L;
  if (item >= v.runs * v.w.heads_kv) return;
  write_item<T, N>(v, item, static_cast<int>(threadIdx.x % L), L);
}

template <typename T, int N>
cudaError_t launch_write(const PagedWriteArgs& a, cudaStream_t stream) {
  WriteView v;
  v.w = a.w, v.order = a.runs.order, v.run_start = a.runs.run_start, v.runs = a.runs.runs;
  const int L = lanes_per_row(a.w.head_dim / N);
  const int64_t blocks = (v.runs * a.w.heads_kv + kThreads / L - 1) / (kThreads / L);
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  paged_kv_write_kernel<T, N><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(v, L);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_write_dtype(const PagedWriteArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  return a.vectorized ? launch_write<T, kVec>(a, stream) : launch_write<T, 1>(a, stream);
}

}  // namespace
}  // namespace paged

bool paged_write_vectorizable(const PagedKVWrite& w) {
  using paged::aligned16;
  const int64_t vec = 16 / paged::elem_bytes(w.dtype);
  bool ok = aligned16(w.k_pages) && aligned16(w.v_pages) && aligned16(w.k_max) && aligned16(w.k_min) &&
            aligned16(w.k) && aligned16(w.v) && w.head_dim % vec == 0;
  for (int i = 0; i < 3; ++i) ok = ok && w.page_stride[i] % vec == 0;
  for (int i = 0; i < 2; ++i)
    ok = ok && w.meta_stride[i] % vec == 0 && w.src_stride[i] % vec == 0 && w.v_src_stride[i] % vec == 0;
  return ok;
}

const char* paged_kv_write_kernel_name(DType dtype, bool vectorized) {
  static const char* const kNames[2][3] = {
      {"paged_kv_write_kernel<float32>", "paged_kv_write_kernel<bf16>", "paged_kv_write_kernel<fp16>"},
      {"paged_kv_write_kernel<float32, 16B>", "paged_kv_write_kernel<bf16, 16B>", "paged_kv_write_kernel<fp16, 16B>"}};
  return kNames[vectorized ? 1 : 0][static_cast<int>(dtype)];
}

cudaError_t paged_kv_write(const PagedWriteArgs& a, cudaStream_t stream) {
  const PagedKVWrite& w = a.w;
  if (w.ntokens == 0) return cudaSuccess;
  if (w.heads_kv < 1 || w.head_dim < 1 || a.runs.runs < 1 || a.runs.runs > w.ntokens ||
      (a.runs.run_start == nullptr && a.runs.runs != w.ntokens) || (a.vectorized && !paged_write_vectorizable(w)))
    return cudaErrorInvalidValue;
  switch (w.dtype) {
    case DType::kFloat32: return paged::launch_write_dtype<float>(a, stream);
    case DType::kBFloat16: return paged::launch_write_dtype<__nv_bfloat16>(a, stream);
    case DType::kFloat16: return paged::launch_write_dtype<__half>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sparse_attn::cuda
