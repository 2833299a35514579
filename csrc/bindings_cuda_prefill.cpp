// CUDA dispatch of the prefill ops (block-sparse and streaming attention): the same
// checks as the CPU ops (torch_checks.h), then the torch-free launcher
// (cuda/prefill/launch.h) on torch's current stream. Compiled only with the CUDA engine, and
// against any torch build: the stream and the device guard come through c10's generic
// device interfaces, not ATen/cuda headers, so a CPU-only torch compiles it too (its CUDA
// kernels are then registered but unreachable: no tensor can be on a CUDA device).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>

#include "cuda/prefill/launch.h"
#include "torch_checks.h"

namespace sparse_attn {
namespace {

cudaStream_t current_stream(const at::Device& device) {
  const c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
  return static_cast<cudaStream_t>(impl.getStream(device).native_handle());
}

// The kernel reads rows with 16-byte loads: a tensor whose base or strides do not allow
// that is copied to a fresh contiguous one (the caching allocator aligns it).
at::Tensor aligned_for_kernel(const at::Tensor& t) {
  const bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && t.stride(0) % 8 == 0 &&
                  t.stride(1) % 8 == 0 && t.stride(2) % 8 == 0;
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

void check_supported(const AttentionParams& p, const char* op) {
  TORCH_CHECK_VALUE(cuda::prefill_supported(p.dtype, p.head_dim), op,
                    " on CUDA supports bfloat16 and float16 with head_dim 64 or 128, got ",
                    p.dtype == DType::kFloat32 ? "float32" : "a 16-bit dtype", " with head_dim ", p.head_dim,
                    " (use the CPU engine for other cases)");
  TORCH_CHECK_VALUE(p.batch <= 65535 && p.heads_q <= 65535, op, " on CUDA: batch and heads must be <= 65535");
}

// Runs the kernel on q's device and current stream; raises naming the kernel on any error.
void run(cuda::PrefillArgs& args, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (q.numel() == 0) return;
  const c10::DeviceGuard guard(q.device());
  const at::Tensor qa = aligned_for_kernel(q), ka = aligned_for_kernel(k), va = aligned_for_kernel(v);
  args.p.q = qa.data_ptr(), args.p.k = ka.data_ptr(), args.p.v = va.data_ptr();
  for (int i = 0; i < 3; ++i) {
    args.p.q_stride[i] = qa.stride(i);
    args.p.k_stride[i] = ka.stride(i);
    args.p.v_stride[i] = va.stride(i);
  }
  const cudaError_t err = cuda::prefill_forward(args, current_stream(q.device()));
  TORCH_CHECK(err == cudaSuccess, cuda::prefill_kernel_name(args.p.dtype, args.p.head_dim), " failed: ",
              cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
}

at::Tensor block_sparse_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                                       const at::Tensor& counts, const at::Tensor& indices,
                                       const std::optional<at::Tensor>& full_counts,
                                       const std::optional<at::Tensor>& full_indices, int64_t block_q,
                                       int64_t block_k, bool causal, double scale, bool validate) {
  at::Tensor lse = new_lse(q);
  cuda::PrefillArgs args;
  args.p = make_params(q, k, v, out, lse, scale, causal);
  check_supported(args.p, "block_sparse_attention");
  TORCH_CHECK_VALUE(block_q % 64 == 0 && block_k % 64 == 0,
                    "block_sparse_attention on CUDA needs block sizes that are multiples of 64 (its query tile "
                    "is 64 rows), got (", block_q, ", ", block_k, ")");
  args.mode = cuda::PrefillMode::kBlockSparse;
  args.mask = make_block_sparse_params(args.p, q, counts, indices, full_counts, full_indices, block_q, block_k,
                                       causal, validate);
  run(args, q, k, v);
  return lse;
}

at::Tensor streaming_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                                    int64_t sink_tokens, int64_t window_tokens, double scale) {
  at::Tensor lse = new_lse(q);
  cuda::PrefillArgs args;
  args.p = make_params(q, k, v, out, lse, scale, /*causal=*/true);
  check_supported(args.p, "streaming_attention");
  args.mode = cuda::PrefillMode::kStreaming;
  args.stream = make_streaming_params(args.p, sink_tokens, window_tokens);
  run(args, q, k, v);
  return lse;
}

}  // namespace
}  // namespace sparse_attn

// Vertical-slash ops have no CUDA kernel yet: the dispatcher's own "no kernel for CUDA"
// error is what a caller sees (sparse_attn.vertical_slash_attention says so up front).
TORCH_LIBRARY_IMPL(sparse_attn, CUDA, m) {
  m.impl("block_sparse_attention", &sparse_attn::block_sparse_attention_cuda);
  m.impl("streaming_attention", &sparse_attn::streaming_attention_cuda);
}
