// Smoke test of the CUDA build: a tiny CuTe kernel that proves sa_cuda compiles, links
// (static cudart) and loads into the extension. The real attention kernels come later.
//
// Plain C++: includable from g++-compiled sources (only <cuda_runtime_api.h> is needed).
// Torch-free: raw pointers, sizes, strides and a stream; every function returns a status.
#pragma once

#include <cuda_runtime_api.h>

namespace sparse_attn::cuda {

// dst[r * ld_dst + c] = src[r * ld_src + c] for 0 <= r < rows, 0 <= c < cols (row-major,
// float, device pointers). Each 64x64 tile goes global -> shared -> global through a CuTe
// tiled copy; ragged edge tiles are predicated. Asynchronous on `stream`.
// Returns cudaErrorInvalidValue for negative sizes, ld < cols, or too many row tiles;
// cudaSuccess without launching for an empty matrix; else the launch status.
cudaError_t launch_tile_copy_smoke(const float* src, float* dst, int rows, int cols,
                                   int ld_src, int ld_dst, cudaStream_t stream);

// Architectures this library was compiled for, from nvcc's __CUDA_ARCH_LIST__
// (e.g. "800,900"), or "unknown" when the compiler does not define it.
const char* compiled_archs();

// Number of visible CUDA devices; 0 on any error (no driver, no device, ...). Never throws
// and leaves no pending CUDA error behind.
int device_count();

// Copies a ragged rows x cols matrix (padded strides) through the smoke kernel on the
// current device and counts wrong elements into *mismatches (-1 if it did not get that far).
// Synchronous. Returns the first CUDA error.
cudaError_t tile_copy_selftest(int rows, int cols, long long* mismatches);

}  // namespace sparse_attn::cuda
