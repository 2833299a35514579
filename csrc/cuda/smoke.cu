// Smoke kernel: proves the CUDA build (nvcc + CuTe, static cudart) compiles, links and loads.
// The tile logic lives in smoke_tile.cuh so host_checks/layout_check.cu can verify it on the CPU.
#include "smoke.h"

#include "smoke_tile.cuh"

namespace sparse_attn::cuda {
namespace {

using namespace cute;

// One block per 64x64 tile: blockIdx.x walks the column tiles, blockIdx.y the row tiles.
__global__ void __launch_bounds__(smoke::kThreads)
tile_copy_smoke_kernel(const float* src, float* dst, int rows,
                       int cols, int ld_src, int ld_dst) {
  __shared__ float smem[cosize(smoke::SmemLayout{})];
  const int tile_m = blockIdx.y, tile_n = blockIdx.x, tid = threadIdx.x;
  smoke::load_tile(make_gmem_ptr(src), make_smem_ptr(smem), rows, cols, ld_src, tile_m, tile_n, tid);
  __syncthreads();  // the store below reads what other threads wrote
  smoke::store_tile(make_gmem_ptr(dst), make_smem_ptr(smem), rows, cols, ld_dst, tile_m, tile_n,
                    smoke::store_thread(tid));
}

}  // namespace

cudaError_t launch_tile_copy_smoke(const float* src, float* dst, int rows, int cols, int ld_src,
                                   int ld_dst, cudaStream_t stream) {
  if (rows < 0 || cols < 0 || ld_src < cols || ld_dst < cols) return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (src == nullptr || dst == nullptr) return cudaErrorInvalidValue;
  const unsigned tiles_m = (unsigned(rows) + smoke::kTile - 1) / smoke::kTile;
  const unsigned tiles_n = (unsigned(cols) + smoke::kTile - 1) / smoke::kTile;
  if (tiles_m > 65535u) return cudaErrorInvalidValue;  // gridDim.y limit
  tile_copy_smoke_kernel<<<dim3(tiles_n, tiles_m), smoke::kThreads, 0, stream>>>(
      src, dst, rows, cols, ld_src, ld_dst);
  return cudaGetLastError();
}

// nvcc (12+) defines __CUDA_ARCH_LIST__ in every pass as the comma-separated list of the
// virtual archs being compiled, e.g. 800,900.
#define SA_STRINGIFY_IMPL(...) #__VA_ARGS__
#define SA_STRINGIFY(...) SA_STRINGIFY_IMPL(__VA_ARGS__)
const char* compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  return SA_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}
#undef SA_STRINGIFY
#undef SA_STRINGIFY_IMPL

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear it: no driver / no device is a normal answer here
    return 0;
  }
  return n;
}

}  // namespace sparse_attn::cuda
