// End-to-end check of the smoke kernel on a real device: allocate, copy a ragged matrix
// through launch_tile_copy_smoke, read back, compare. Torch-free (the extension may be
// built against a CPU-only torch); the Python test calls it through _C.
#include <cuda_runtime_api.h>

#include <vector>

#include "smoke.h"

namespace sparse_attn::cuda {

cudaError_t tile_copy_selftest(int rows, int cols, long long* mismatches) {
  *mismatches = -1;
  const int ld_src = cols + 3, ld_dst = cols + 5;  // padded rows: strides are exercised
  std::vector<float> host(static_cast<size_t>(rows) * ld_src), back(static_cast<size_t>(rows) * ld_dst);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>((i * 2654435761u) % 1000003u);
  float *src = nullptr, *dst = nullptr;
  cudaError_t err = cudaMalloc(&src, host.size() * sizeof(float));
  if (err == cudaSuccess) err = cudaMalloc(&dst, back.size() * sizeof(float));
  if (err == cudaSuccess) err = cudaMemset(dst, 0xff, back.size() * sizeof(float));  // NaN poison
  if (err == cudaSuccess)
    err = cudaMemcpy(src, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice);
  if (err == cudaSuccess) err = launch_tile_copy_smoke(src, dst, rows, cols, ld_src, ld_dst, nullptr);
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  if (err == cudaSuccess)
    err = cudaMemcpy(back.data(), dst, back.size() * sizeof(float), cudaMemcpyDeviceToHost);
  if (err == cudaSuccess) {
    long long bad = 0;
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) bad += back[static_cast<size_t>(r) * ld_dst + c] != host[static_cast<size_t>(r) * ld_src + c];
    *mismatches = bad;
  }
  cudaFree(src);
  cudaFree(dst);
  return err;
}

}  // namespace sparse_attn::cuda
