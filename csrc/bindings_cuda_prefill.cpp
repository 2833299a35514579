// CUDA dispatch of the prefill ops (block-sparse, streaming and vertical-slash attention, the
// vertical-slash index): the same
// checks as the CPU ops (torch_checks.h), then the torch-free launcher
// (cuda/prefill/launch.h) on torch's current stream. Compiled only with the CUDA engine, and
// against any torch build: the stream and the device guard come through c10's generic
// device interfaces, not ATen/cuda headers, so a CPU-only torch compiles it too (its CUDA
// kernels are then registered but unreachable: no tensor can be on a CUDA device).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "cuda/prefill/launch.h"
#include "cuda_glue.h"
#include "sparse_attn/vertical_slash.h"
#include "torch_checks.h"

namespace sparse_attn {
namespace {

// The kernel reads rows with 16-byte loads: a tensor whose base or strides do not allow
// that is copied to a fresh contiguous one (the caching allocator aligns it).
at::Tensor aligned_for_kernel(const at::Tensor& t) {
  return vector_aligned(t, 8) ? t : t.clone(at::MemoryFormat::Contiguous);
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

// The index on the device; returns the bitsets it was built from (the attention's element
// mask; freed in stream order). Raises naming the kernel that failed and the op.
at::Tensor build_index_on_device(const VerticalSlashParams& vs, int64_t batch, int64_t heads, int64_t seqlen_q,
                           int64_t seqlen_k, int64_t block_size, bool col_limit_all, const VerticalSlashIndex& idx,
                           const at::Tensor& like, const char* op) {
  at::Tensor bits = at::empty({cuda::vs_bits_bytes(batch, heads, seqlen_k) / 8}, like.options().dtype(at::kLong));
  const char* kernel = "vs_build_index";
  const cudaError_t err =
      cuda::vs_build_index(vs, batch, heads, seqlen_q, seqlen_k, block_size, col_limit_all,
                           reinterpret_cast<uint64_t*>(bits.data_ptr<int64_t>()), idx, current_stream(like.device()),
                           &kernel);
  TORCH_CHECK(err == cudaSuccess, kernel, " (", op, ") failed: ", cudaGetErrorName(err), " (",
              cudaGetErrorString(err), ")");
  return bits;
}

// The lists on the device (made contiguous) and their parameters: the shared checks run on
// one host copy of each (a synchronizing copy, as block-sparse validation does), then the
// device pointers replace the host ones (same contiguous strides).
struct DeviceVSLists {
  at::Tensor vertical, vertical_count, slash, slash_count;
};
DeviceVSLists device_lists(const at::Tensor& vertical, const at::Tensor& vertical_count, const at::Tensor& slash,
                           const at::Tensor& slash_count, const at::Device& device) {
  for (const at::Tensor* t : {&vertical, &vertical_count, &slash, &slash_count})
    TORCH_CHECK_VALUE(t->device() == device, "vertical, vertical_count, slash and slash_count must be on device ",
                      device, ", got ", t->device());
  return {vertical.contiguous(), vertical_count.contiguous(), slash.contiguous(), slash_count.contiguous()};
}
void use_device_lists(VerticalSlashParams& vs, const DeviceVSLists& d) {
  vs.vertical = d.vertical.data_ptr<int32_t>();
  vs.vertical_count = d.vertical_count.data_ptr<int32_t>();
  vs.slash = d.slash.data_ptr<int32_t>();
  vs.slash_count = d.slash_count.data_ptr<int32_t>();
}

at::Tensor vertical_slash_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         at::Tensor& out, const at::Tensor& vertical,
                                         const at::Tensor& vertical_count, const at::Tensor& slash,
                                         const at::Tensor& slash_count, bool causal, double scale) {
  at::Tensor lse = new_lse(q);
  cuda::PrefillArgs args;
  args.p = make_params(q, k, v, out, lse, scale, causal);
  check_supported(args.p, "vertical_slash_attention");
  const c10::DeviceGuard guard(q.device());
  const DeviceVSLists d = device_lists(vertical, vertical_count, slash, slash_count, q.device());
  VerticalSlashParams vs = make_vs_params(d.vertical.cpu(), d.vertical_count.cpu(), d.slash.cpu(),
                                          d.slash_count.cpu(), args.p.batch, args.p.heads_q, at::Device(at::kCPU));
  use_device_lists(vs, d);
  if (q.numel() == 0) return lse;
  // The 64-row tiles' index and the element-mask bitsets, built on the device (temporary).
  const int64_t B = args.p.batch, H = args.p.heads_q, Sq = args.p.seqlen_q, Sk = args.p.seqlen_k;
  const int64_t mb = (Sq + 63) / 64;
  VerticalSlashIndex idx;
  idx.max_blocks = std::max<int64_t>(1, std::min<int64_t>(2 * (vs.max_slash + 1), (Sk + 63) / 64));
  idx.max_columns = std::max<int64_t>(1, vs.max_vertical);
  const auto iopts = q.options().dtype(at::kInt);
  at::Tensor counts = at::empty({2, B * H * mb}, iopts);
  at::Tensor offsets = at::empty({B * H * mb, idx.max_blocks}, iopts);
  at::Tensor columns = at::empty({B * H * mb, idx.max_columns}, iopts);
  idx.block_count = counts.data_ptr<int32_t>();
  idx.column_count = idx.block_count + B * H * mb;
  idx.block_offset = offsets.data_ptr<int32_t>();
  idx.column_index = columns.data_ptr<int32_t>();
  const at::Tensor bits =
      build_index_on_device(vs, B, H, Sq, Sk, 64, /*col_limit_all=*/!causal, idx, q, "vertical_slash_attention");
  args.mode = cuda::PrefillMode::kVerticalSlash;
  args.vs.bits = reinterpret_cast<const uint64_t*>(bits.data_ptr<int64_t>());
  args.vs.words = VSBits::words(Sk);
  args.vs.index = idx;
  run(args, q, k, v);
  return lse;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> vertical_slash_index_cuda(
    const at::Tensor& vertical, const at::Tensor& vertical_count, const at::Tensor& slash,
    const at::Tensor& slash_count, int64_t seqlen_q, int64_t seqlen_k, int64_t block_size) {
  const c10::DeviceGuard guard(vertical.device());
  const DeviceVSLists d = device_lists(vertical, vertical_count, slash, slash_count, vertical.device());
  VSIndexCall c = prepare_vs_index(d.vertical.cpu(), d.vertical_count.cpu(), d.slash.cpu(), d.slash_count.cpu(),
                                   seqlen_q, seqlen_k, block_size, vertical.device());
  use_device_lists(c.vs, d);
  if (c.rows > 0)
    build_index_on_device(c.vs, c.batch, c.heads, seqlen_q, seqlen_k, block_size, /*col_limit_all=*/false, c.idx,
                          vertical, "vertical_slash_index");
  return {c.block_count, c.block_offset, c.column_count, c.column_index};
}

}  // namespace
}  // namespace sparse_attn

TORCH_LIBRARY_IMPL(sparse_attn, CUDA, m) {
  m.impl("block_sparse_attention", &sparse_attn::block_sparse_attention_cuda);
  m.impl("streaming_attention", &sparse_attn::streaming_attention_cuda);
  m.impl("vertical_slash_attention", &sparse_attn::vertical_slash_attention_cuda);
  m.impl("vertical_slash_index", &sparse_attn::vertical_slash_index_cuda);
}
