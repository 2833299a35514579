// prefill_forward: argument checks that protect the kernel, then the (dtype, head_dim)
// instance. Torch-free.
#include <cstdint>

#include "instances.cuh"
#include "launch.h"
#include "sparse_attn/vertical_slash.h"

namespace sparse_attn::cuda {
namespace {

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }
bool strides_ok(const int64_t* s) { return s[0] % 8 == 0 && s[1] % 8 == 0 && s[2] % 8 == 0; }

}  // namespace

bool prefill_supported(DType dtype, int64_t head_dim) {
  return (dtype == DType::kBFloat16 || dtype == DType::kFloat16) && (head_dim == 64 || head_dim == 128);
}

const char* prefill_kernel_name(DType dtype, int64_t head_dim) {
  if (!prefill_supported(dtype, head_dim)) return "prefill_kernel (unsupported dtype/head_dim)";
  if (dtype == DType::kBFloat16) return head_dim == 64 ? "prefill_kernel<bf16, 64>" : "prefill_kernel<bf16, 128>";
  return head_dim == 64 ? "prefill_kernel<fp16, 64>" : "prefill_kernel<fp16, 128>";
}

cudaError_t prefill_forward(const PrefillArgs& args, cudaStream_t stream) {
  const AttentionParams& p = args.p;
  if (!prefill_supported(p.dtype, p.head_dim) || p.lse == nullptr) return cudaErrorInvalidValue;
  // 16-byte cp.async of every row: aligned bases and strides (in elements of 2 bytes).
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v) || !strides_ok(p.q_stride) ||
      !strides_ok(p.k_stride) || !strides_ok(p.v_stride))
    return cudaErrorInvalidValue;
  if (p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0 || p.batch > 65535 || p.heads_q > 65535 ||
      (p.seqlen_q + 63) / 64 > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (args.mode == PrefillMode::kBlockSparse &&
      (args.mask.block_q % 64 != 0 || args.mask.block_k % 64 != 0 || args.mask.block_q <= 0 ||
       args.mask.block_k <= 0))
    return cudaErrorInvalidValue;
  if (args.mode == PrefillMode::kVerticalSlash &&
      (args.vs.bits == nullptr || args.vs.words != VSBits::words(p.seqlen_k) || args.vs.index.block_count == nullptr ||
       args.vs.index.block_offset == nullptr || args.vs.index.column_count == nullptr ||
       args.vs.index.column_index == nullptr || args.vs.index.max_blocks < 0 || args.vs.index.max_columns < 0))
    return cudaErrorInvalidValue;
  using prefill::launch_instance;
  if (p.dtype == DType::kBFloat16)
    return p.head_dim == 64 ? launch_instance<cute::bfloat16_t, 64>(args, stream)
                            : launch_instance<cute::bfloat16_t, 128>(args, stream);
  return p.head_dim == 64 ? launch_instance<cute::half_t, 64>(args, stream)
                          : launch_instance<cute::half_t, 128>(args, stream);
}

}  // namespace sparse_attn::cuda
