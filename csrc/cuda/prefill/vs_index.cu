// The vertical-slash index on the device (vs_build_index, launch.h): the per-(batch, head)
// bitsets (VSBits) by atomics, then one thread per (batch, head, query block) running the
// shared vs_index_row, the very function the CPU op runs per row. Torch-free.
#include <cstdint>

#include "launch.h"
#include "sparse_attn/vertical_slash.h"

namespace sparse_attn::cuda {
namespace {

constexpr int kThreads = 128;

// One CTA per (b, h): zero its cols and diag words, then set the bits of the in-range
// columns and offsets (offset 0 always), as VSBits::build does on the host.
__global__ void __launch_bounds__(kThreads) vs_bits_kernel(const VerticalSlashParams vs, int64_t heads,
                                                           int64_t seqlen_k, int64_t words, uint64_t* bits) {
  const int64_t bh = blockIdx.x, b = bh / heads, h = bh % heads;
  auto* cols = reinterpret_cast<unsigned long long*>(bits + bh * 2 * words);
  auto* diag = cols + words;
  for (int64_t i = threadIdx.x; i < 2 * words; i += kThreads) cols[i] = 0;
  __syncthreads();
  int64_t nv = 0, ns = 0;
  const int32_t* vertical = vs_vertical_row(vs, b, h, &nv);
  const int32_t* slash = vs_slash_row(vs, b, h, &ns);
  for (int64_t i = threadIdx.x; i < nv; i += kThreads) {
    const int64_t j = vertical[i];
    if (j >= 0 && j < seqlen_k) atomicOr(cols + (j >> 6), 1ull << (j & 63));
  }
  for (int64_t i = threadIdx.x; i <= ns; i += kThreads) {
    const int64_t s = i == 0 ? 0 : slash[i - 1];
    if (s < 0 || s >= seqlen_k) continue;
    const int64_t bit = seqlen_k - 1 - s;
    atomicOr(diag + (bit >> 6), 1ull << (bit & 63));
  }
}

// One thread per index row (b, h, m).
__global__ void __launch_bounds__(kThreads) vs_index_kernel(const VerticalSlashParams vs, int64_t batch, int64_t heads,
                                                            int64_t seqlen_q, int64_t seqlen_k, int64_t block_size,
                                                            bool col_limit_all, int64_t words, const uint64_t* bits,
                                                            const VerticalSlashIndex out) {
  const int64_t mb = (seqlen_q + block_size - 1) / block_size;
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= batch * heads * mb) return;
  const int64_t bh = i / mb, m = i % mb, b = bh / heads, h = bh % heads;
  int64_t nv = 0;
  const int32_t* vertical = vs_vertical_row(vs, b, h, &nv);
  const VSBits vb{bits + bh * 2 * words, bits + bh * 2 * words + words, seqlen_k};
  const int64_t p0 = m * block_size + (seqlen_k - seqlen_q);
  const int64_t p1 = p0 + block_size < seqlen_k ? p0 + block_size : seqlen_k;
  vs_index_row(vb, vertical, nv, p0, p1, col_limit_all ? seqlen_k : p1, block_size, out.max_blocks, out.max_columns,
               out.block_offset + i * out.max_blocks, out.column_index + i * out.max_columns, out.block_count + i,
               out.column_count + i);
}

}  // namespace

int64_t vs_bits_bytes(int64_t batch, int64_t heads, int64_t seqlen_k) {
  return batch * heads * 2 * VSBits::words(seqlen_k) * int64_t(sizeof(uint64_t));
}

cudaError_t vs_build_index(const VerticalSlashParams& vs, int64_t batch, int64_t heads, int64_t seqlen_q,
                           int64_t seqlen_k, int64_t block_size, bool col_limit_all, uint64_t* bits,
                           const VerticalSlashIndex& out, cudaStream_t stream) {
  if (batch <= 0 || heads <= 0) return cudaSuccess;
  if (block_size < 1 || batch * heads > 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t words = VSBits::words(seqlen_k);
  vs_bits_kernel<<<unsigned(batch * heads), kThreads, 0, stream>>>(vs, heads, seqlen_k, words, bits);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t rows = batch * heads * ((seqlen_q + block_size - 1) / block_size);
  if (rows == 0) return cudaSuccess;
  const int64_t blocks = (rows + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  vs_index_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(
      vs, batch, heads, seqlen_q, seqlen_k, block_size, col_limit_all, words, bits, out);
  return cudaGetLastError();
}

}  // namespace sparse_attn::cuda
