// The vertical-slash index on the device (vs_build_index, launch.h): the per-(batch, head)
// bitsets (VSBits::set_bits by atomics), then one thread per (batch, head, query block)
// running the shared vs_index_flat_row, the very function the CPU op runs per row.
// Torch-free; host_checks/prefill_layout_check.cu runs both kernel bodies on the CPU.
#include <cstdint>

#include "launch.h"
#include "sparse_attn/vertical_slash.h"

namespace sparse_attn::cuda {
namespace {

constexpr int kThreads = 128;

// One CTA per (b, h): zero its cols and diag words, then every thread sets the bits of its
// share of the lists (VSBits::set_bits, the code VSBits::build_head runs on the host).
__global__ void __launch_bounds__(kThreads) vs_bits_kernel(const VerticalSlashParams vs, int64_t heads,
                                                           int64_t seqlen_k, uint64_t* bits) {
  const int64_t bh = blockIdx.x, b = bh / heads, h = bh % heads, words = VSBits::words(seqlen_k);
  uint64_t* cols = bits + VSBits::head_offset(bh, seqlen_k);
  for (int64_t i = threadIdx.x; i < 2 * words; i += kThreads) cols[i] = 0;
  __syncthreads();
  int64_t nv = 0, ns = 0;
  const int32_t* vertical = vs_vertical_row(vs, b, h, &nv);
  const int32_t* slash = vs_slash_row(vs, b, h, &ns);
  VSBits::set_bits(vertical, nv, slash, ns, seqlen_k, cols, cols + words, threadIdx.x, kThreads,
                   [](uint64_t* w, uint64_t m) {
                     atomicOr(reinterpret_cast<unsigned long long*>(w), static_cast<unsigned long long>(m));
                   });
}

// One thread per index row: vs_index_flat_row, the CPU op's row code.
__global__ void __launch_bounds__(kThreads) vs_index_kernel(const VerticalSlashParams vs, const VSIndexGeometry g,
                                                            int64_t rows, const uint64_t* bits,
                                                            const VerticalSlashIndex out) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < rows) vs_index_flat_row(vs, g, bits, i, out);
}

}  // namespace

int64_t vs_bits_bytes(int64_t batch, int64_t heads, int64_t seqlen_k) {
  return batch * heads * 2 * VSBits::words(seqlen_k) * int64_t(sizeof(uint64_t));
}

cudaError_t vs_build_index(const VerticalSlashParams& vs, int64_t batch, int64_t heads, int64_t seqlen_q,
                           int64_t seqlen_k, int64_t block_size, bool col_limit_all, uint64_t* bits,
                           const VerticalSlashIndex& out, cudaStream_t stream, const char** kernel) {
  if (kernel != nullptr) *kernel = "vs_bits_kernel";
  if (batch <= 0 || heads <= 0) return cudaSuccess;
  if (block_size < 1 || batch * heads > 0x7fffffff) return cudaErrorInvalidValue;
  vs_bits_kernel<<<unsigned(batch * heads), kThreads, 0, stream>>>(vs, heads, seqlen_k, bits);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (kernel != nullptr) *kernel = "vs_index_kernel";
  const VSIndexGeometry g{heads, seqlen_q, seqlen_k, block_size, col_limit_all};
  const int64_t rows = batch * heads * g.blocks_q();
  if (rows == 0) return cudaSuccess;
  const int64_t blocks = (rows + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  vs_index_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(vs, g, rows, bits, out);
  return cudaGetLastError();
}

}  // namespace sparse_attn::cuda
