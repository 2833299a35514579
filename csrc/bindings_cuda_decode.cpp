// CUDA dispatch of the paged decode ops (paged_decode_stream_k, paged_decode_attention): the
// CPU ops' checks (torch_checks.h, on host copies of the small index tensors), then the
// torch-free launcher (cuda/decode/launch.h) on torch's current stream. Compiled against any
// torch build, like bindings_cuda_prefill.cpp (c10's generic device interfaces only).
//
// Grid: one CTA per plan worker. plan_decode on a CUDA cache defaults the worker count to
// cuda_decode_max_workers (the resident CTAs of the kernel on the device, from the occupancy
// query), so every CTA is resident and the in-kernel fix-up cannot deadlock. A plan with more
// workers, or SPARSE_ATTN_DECODE_MERGE=separate in the environment, runs the fallback: the
// decode kernel publishes every partial and a second kernel merges them.
// paged_decode_attention (no plan) builds a stream-K plan on the fly with that worker count
// and 256-token tiles: one host copy of seqlens / counts per call, which validation needs
// anyway.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "cuda/decode/launch.h"
#include "cuda_glue.h"
#include "sparse_attn/stream_k.h"
#include "torch_checks.h"

namespace sparse_attn {

// The resident CTAs of the decode kernel for (dtype, head_dim, group) on `device`: the default
// worker count of a CUDA plan (pybind: _C.cuda_decode_max_workers, which takes plain values
// because the module's pybind11 has no at::Tensor caster).
int64_t cuda_decode_max_workers(DType dt, int64_t head_dim, int64_t G, int device) {
  TORCH_CHECK_VALUE(cuda::decode_supported(dt, head_dim, G),
                    "paged decode on CUDA supports bfloat16 and float16, head_dim 64 or 128, and up to 16 query heads "
                    "per KV head; got ",
                    dt == DType::kBFloat16 ? "bfloat16" : dt == DType::kFloat16 ? "float16" : "float32",
                    ", head_dim ", head_dim, ", ", G,
                    " (use a CPU cache for other cases)");
  int64_t workers = 0;
  const cudaError_t err = cuda::decode_max_workers(dt, head_dim, G, device, &workers);
  TORCH_CHECK(err == cudaSuccess, "occupancy query of ", cuda::decode_kernel_name(dt, head_dim), " failed: ",
              cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  return workers;
}

namespace {

bool vec_ok(const at::Tensor& t) { return vector_aligned(t, 8); }

void check_device(const at::Tensor& t, const at::Tensor& q, const char* name) {
  check_on_device(t, q.device(), "paged decode", name);
}

struct PlanTensors {
  at::Tensor offsets, slot_base, ws_state, ws_acc;  // offsets / slot_base on the host
  int64_t workers, tile_pages;
};

// Runs the decode over `plan`; returns lse.
at::Tensor run_decode(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
                      const at::Tensor& page_table, const at::Tensor& seqlens, const std::optional<at::Tensor>& pages,
                      const std::optional<at::Tensor>& counts, at::Tensor& out, double scale,
                      const std::optional<PlanTensors>& given) {
  TORCH_CHECK_VALUE(q.is_cuda(), "paged decode on CUDA: q must be a CUDA tensor");
  for (const auto& [t, name] : {std::pair{&k_pages, "k_pages"}, {&v_pages, "v_pages"}, {&page_table, "page_table"},
                                {&seqlens, "seqlens"}, {&out, "out"}})
    check_device(*t, q, name);
  if (pages) check_device(*pages, q, "pages");
  if (counts) check_device(*counts, q, "counts");
  const c10::DeviceGuard guard(q.device());
  const HostCopy pt(page_table), sl(seqlens);
  const std::optional<HostCopy> pg = host_copy_of(pages), ct = host_copy_of(counts);
  at::Tensor lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  PagedDecodeInputs in = make_paged_decode(q, k_pages, v_pages, pt.host, sl.host,
                                           pg ? std::optional<at::Tensor>(pg->host) : std::nullopt,
                                           ct ? std::optional<at::Tensor>(ct->host) : std::nullopt, out, lse, scale);
  const int64_t Hkv = in.p.heads_kv, G = q.size(1) / Hkv, D = in.p.head_dim;
  TORCH_CHECK_VALUE(cuda::decode_supported(in.io.dtype, D, G),
                    "paged decode on CUDA supports bfloat16 and float16, head_dim 64 or 128, and up to 16 query heads "
                    "per KV head; got ", q.scalar_type(), ", head_dim ", D, ", ", G, " (use the CPU engine)");
  TORCH_CHECK_VALUE(vec_ok(k_pages) && vec_ok(v_pages), "paged decode on CUDA needs k_pages / v_pages with a "
                    "16-byte aligned base and strides that are multiples of 8 elements (PagedKVCache's are)");
  cuda::DecodeArgs args;

  // CTAs resident at once: the default worker count, and the most the in-kernel fix-up allows
  const int64_t resident = cuda_decode_max_workers(in.io.dtype, D, G, q.get_device());
  PlanTensors plan;
  if (given) {
    plan = *given;
  } else {  // stream-K over the resident CTAs, 256-token tiles
    plan.workers = resident;
    plan.tile_pages = std::max<int64_t>(1, 256 / in.p.page_size);
    const int64_t outputs = in.p.batch * Hkv;
    plan.offsets = at::zeros({outputs + 1}, at::kLong);
    plan.slot_base = at::zeros({outputs + 1}, at::kLong);
    int64_t* off = plan.offsets.data_ptr<int64_t>();
    for (int64_t o = 0; o < outputs; ++o) {
      const int64_t b = o / Hkv, g = o % Hkv;
      const int64_t n = pg ? ct->host.data_ptr<int32_t>()[b * ct->host.stride(0) + g * ct->host.stride(1)]
                           : (sl.host.data_ptr<int32_t>()[b] + in.p.page_size - 1) / in.p.page_size;
      off[o + 1] = off[o] + (n + plan.tile_pages - 1) / plan.tile_pages;
    }
    int64_t* sb = plan.slot_base.data_ptr<int64_t>();
    for (int64_t o = 0; o < outputs; ++o)
      sb[o + 1] = sb[o] + (off[o + 1] == off[o] ? 0
                                                : stream_k_worker_of(off[outputs], plan.workers, off[o + 1] - 1) -
                                                      stream_k_worker_of(off[outputs], plan.workers, off[o]) + 1);
    const int64_t slots = sb[outputs];
    plan.ws_state = at::zeros({slots * G * 2 + slots}, q.options().dtype(at::kFloat));  // states + zeroed flags
    plan.ws_acc = at::empty({std::max<int64_t>(slots, 1) * G * D}, q.options().dtype(at::kFloat));
  }
  const at::Tensor off_h = plan.offsets.cpu(), sb_h = plan.slot_base.cpu();
  check_device(plan.ws_state, q, "ws_state");
  check_device(plan.ws_acc, q, "ws_acc");
  args.plan = make_stream_k_plan(in.p, in.selected ? &in.sel : nullptr, G, off_h, sb_h, plan.workers, plan.tile_pages,
                                 plan.ws_state, plan.ws_acc);
  // make_stream_k_plan read seqlens / counts through in.p / in.sel, so they still pointed at the
  // host copies; those have the device copies' strides: now swap in the device pointers.
  in.p.page_table = pt.dev.data_ptr<int32_t>(), in.p.seqlens = sl.dev.data_ptr<int32_t>();
  if (pg) in.sel.pages = pg->dev.data_ptr<int32_t>(), in.sel.counts = ct->dev.data_ptr<int32_t>();
  args.slots = sb_h.data_ptr<int64_t>()[in.p.batch * Hkv];
  TORCH_CHECK_VALUE(plan.ws_state.numel() >= args.slots * G * 2 + args.slots,
                    "plan: on CUDA ws_state also holds one int32 flag per partial slot (", args.slots * G * 2 + args.slots,
                    " values); build the plan with plan_decode on the cache's device");
  if (q.numel() == 0) return lse;
  const at::Tensor off_d = off_h.to(q.device()), sb_d = sb_h.to(q.device());
  args.plan.offsets = off_d.data_ptr<int64_t>(), args.plan.slot_base = sb_d.data_ptr<int64_t>();
  const at::Tensor qa = vec_ok(q) ? q : q.clone(at::MemoryFormat::Contiguous);
  at::Tensor oa = vec_ok(out) ? out : at::empty(out.sizes(), out.options());
  args.p = in.p, args.sel = in.sel, args.io = in.io;
  if (!in.selected) args.sel = PageSelection{};
  args.io.q = qa.data_ptr(), args.io.out = oa.data_ptr();
  args.io.q_stride[0] = qa.stride(0), args.io.q_stride[1] = qa.stride(1);
  args.io.o_stride[0] = oa.stride(0), args.io.o_stride[1] = oa.stride(1);
  const char* mode = std::getenv("SPARSE_ATTN_DECODE_MERGE");
  args.separate_merge = (mode != nullptr && std::strcmp(mode, "separate") == 0) ||
                        plan.workers > resident;
  const cudaError_t err = cuda::decode_stream_k(args, current_stream(q.device()));
  check_launch(err, cuda::decode_kernel_name(in.io.dtype, D),
               args.separate_merge ? " (separate merge)" : " (in-kernel fix-up)");
  if (!oa.is_same(out)) out.copy_(oa);
  return lse;
}

at::Tensor paged_decode_attention_cuda(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
                                       const at::Tensor& page_table, const at::Tensor& seqlens,
                                       const std::optional<at::Tensor>& pages, const std::optional<at::Tensor>& counts,
                                       at::Tensor& out, double scale) {
  return run_decode(q, k_pages, v_pages, page_table, seqlens, pages, counts, out, scale, std::nullopt);
}

at::Tensor paged_decode_stream_k_cuda(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
                                      const at::Tensor& page_table, const at::Tensor& seqlens,
                                      const std::optional<at::Tensor>& pages, const std::optional<at::Tensor>& counts,
                                      at::Tensor& out, double scale, const at::Tensor& offsets,
                                      const at::Tensor& slot_base, int64_t workers, int64_t tile_pages,
                                      at::Tensor& ws_state, at::Tensor& ws_acc) {
  return run_decode(q, k_pages, v_pages, page_table, seqlens, pages, counts, out, scale,
                    PlanTensors{offsets, slot_base, ws_state, ws_acc, workers, tile_pages});
}

}  // namespace
}  // namespace sparse_attn

TORCH_LIBRARY_IMPL(sparse_attn, CUDA, m) {
  m.impl("paged_decode_attention", &sparse_attn::paged_decode_attention_cuda);
  m.impl("paged_decode_stream_k", &sparse_attn::paged_decode_stream_k_cuda);
}
