// quest_select on CUDA, first step: one thread per (sequence, KV head, page) writes the page's
// selection key (select_key, paged.h; the CPU op orders pages by the same select_forced /
// select_score_rank, by radix selection), and one thread per row its
// count min(pages, k). The op (bindings_cuda_paged.cpp) then takes each row's k smallest keys
// with torch.topk on the device and sorts their pages: the keys are distinct, so the
// selection is unique and equal to the CPU op's for the same scores.
#include <cuda_runtime.h>

#include "launch.h"

namespace sparse_attn::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t row_pages(const SelectKeysArgs& a, int64_t row) {
  const int64_t n = (a.seqlens[row / a.heads_kv] + a.page_size - 1) / a.page_size;
  return n < a.max_pages ? n : a.max_pages;
}

__global__ void __launch_bounds__(kThreads) quest_select_keys_kernel(SelectKeysArgs a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t rows = a.batch * a.heads_kv;
  if (i < rows * a.max_pages) {
    const int64_t row = i / a.max_pages, j = i % a.max_pages;
    a.keys[i] = select_key(a.scores[i], j, row_pages(a, row), a.sink_pages, a.recent_pages);
  }
  if (i < rows) {
    const int64_t n = row_pages(a, i);
    a.counts[i] = static_cast<int32_t>(n < a.k ? n : a.k);
  }
}

}  // namespace

cudaError_t quest_select_keys(const SelectKeysArgs& a, cudaStream_t stream) {
  if (a.heads_kv < 1 || a.page_size < 1 || a.k < 0 || a.k > a.max_pages) return cudaErrorInvalidValue;
  const int64_t rows = a.batch * a.heads_kv;
  const int64_t n = rows * a.max_pages > rows ? rows * a.max_pages : rows;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  quest_select_keys_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace sparse_attn::cuda
