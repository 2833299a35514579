// Torch glue shared by the CUDA ops (bindings_cuda_*.cpp): torch's current stream, device
// checks, host copies of index tensors (the CPU ops' validation reads them on the host) and
// the error raised when a launch fails. c10's generic device interfaces only, so a CPU-only
// torch compiles it too.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <optional>

namespace sparse_attn {

inline cudaStream_t current_stream(const at::Device& device) {
  const c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
  return static_cast<cudaStream_t>(impl.getStream(device).native_handle());
}

// ValueError unless t is on `device` (a CUDA op is dispatched when any argument is on CUDA).
inline void check_on_device(const at::Tensor& t, const at::Device& device, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device() == device, op, " on CUDA: ", name, " must be on ", device, ", got ", t.device());
}

// Whether 16-byte vectors of `elems` elements can be read from every row of t: a 16-byte
// aligned base and strides (all but the last, contiguous dimension) multiples of `elems`.
inline bool vector_aligned(const at::Tensor& t, int64_t elems) {
  bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) ok = ok && t.stride(d) % elems == 0;
  return ok;
}

// A device tensor's index data: a contiguous device copy (kept alive here) and its host copy.
struct HostCopy {
  at::Tensor dev, host;
  explicit HostCopy(const at::Tensor& t) : dev(t.contiguous()), host(dev.cpu()) {}
};
inline std::optional<HostCopy> host_copy_of(const std::optional<at::Tensor>& t) {
  return t ? std::optional<HostCopy>(HostCopy(*t)) : std::nullopt;
}

// RuntimeError naming the kernel on any CUDA error of a launch.
inline void check_launch(cudaError_t err, const char* kernel, const char* detail = "") {
  TORCH_CHECK(err == cudaSuccess, kernel, detail, " failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
              ")");
}

}  // namespace sparse_attn
