// decode_stream_k: argument checks that protect the kernel, then the (dtype, head_dim)
// instance. Torch-free.
#include <cstdint>

#include "decode_kernel.cuh"

namespace sparse_attn::cuda {
namespace {

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

bool decode_supported(DType dtype, int64_t head_dim, int64_t group) {
  return (dtype == DType::kBFloat16 || dtype == DType::kFloat16) && (head_dim == 64 || head_dim == 128) &&
         group >= 1 && group <= 16;
}

const char* decode_kernel_name(DType dtype, int64_t head_dim) {
  if (!decode_supported(dtype, head_dim, 1)) return "paged decode_kernel (unsupported dtype/head_dim)";
  if (dtype == DType::kBFloat16) return head_dim == 64 ? "decode_kernel<bf16, 64>" : "decode_kernel<bf16, 128>";
  return head_dim == 64 ? "decode_kernel<fp16, 64>" : "decode_kernel<fp16, 128>";
}

cudaError_t decode_max_workers(DType dtype, int64_t head_dim, int64_t group, int device, int64_t* workers) {
  if (!decode_supported(dtype, head_dim, group)) return cudaErrorInvalidValue;
  using decode::max_workers_instance;
  if (dtype == DType::kBFloat16)
    return head_dim == 64 ? max_workers_instance<__nv_bfloat16, 64>(group, device, workers)
                          : max_workers_instance<__nv_bfloat16, 128>(group, device, workers);
  return head_dim == 64 ? max_workers_instance<__half, 64>(group, device, workers)
                        : max_workers_instance<__half, 128>(group, device, workers);
}

cudaError_t decode_stream_k(const DecodeArgs& a, cudaStream_t stream) {
  const PagedKVParams& p = a.p;
  const PagedDecodeIO& io = a.io;
  if (p.heads_kv <= 0 || io.heads_q % p.heads_kv != 0) return cudaErrorInvalidValue;
  if (!decode_supported(io.dtype, p.head_dim, io.heads_q / p.heads_kv) || io.lse == nullptr) return cudaErrorInvalidValue;
  // 16-byte loads of q, out and page rows: aligned bases, strides multiples of 8 elements.
  if (!aligned16(io.q) || !aligned16(io.out) || !aligned16(p.k_pages) || !aligned16(p.v_pages) ||
      io.q_stride[0] % 8 || io.q_stride[1] % 8 || io.o_stride[0] % 8 || io.o_stride[1] % 8 || p.page_stride[0] % 8 ||
      p.page_stride[1] % 8 || p.page_stride[2] % 8 || !aligned16(a.plan.ws_acc))
    return cudaErrorInvalidValue;
  if (a.plan.workers < 1 || a.plan.workers > 0x7fffffff || a.plan.tile_pages < 1 || p.page_size < 1)
    return cudaErrorInvalidValue;
  using decode::launch_instance;
  if (io.dtype == DType::kBFloat16)
    return p.head_dim == 64 ? launch_instance<__nv_bfloat16, 64>(a, stream)
                            : launch_instance<__nv_bfloat16, 128>(a, stream);
  return p.head_dim == 64 ? launch_instance<__half, 64>(a, stream) : launch_instance<__half, 128>(a, stream);
}

}  // namespace sparse_attn::cuda
