// CUDA dispatch of the paged cache's bookkeeping ops (paged_kv_write, quest_scores,
// quest_select): the CPU ops' checks and validation (torch_checks.h) on host copies of the
// index tensors, then the torch-free launchers (cuda/paged/launch.h) on torch's current
// stream; a RuntimeError naming the kernel on any CUDA error. Like the CPU ops, each call
// copies its index tensors (page ids and slots, or page_table and seqlens) to the host to
// validate them: one synchronization per call.
//
// Selection: the keys come from a kernel running the shared select_key; the k smallest
// keys per row are taken by torch.topk on the device (at::topk: radix selection, no
// workspace or CUB instantiation of ours), their pages sorted by at::sort. Chosen over a CUB
// segmented sort for simplicity and because the keys are unique (a deterministic result
// equal to the CPU op's); which is faster is not measured (no GPU has been available).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "cuda/paged/launch.h"
#include "cuda/paged/write_runs.h"
#include "cuda_glue.h"
#include "torch_checks.h"

namespace sparse_attn {
namespace {

DType dtype_of(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 ? DType::kBFloat16
         : t.scalar_type() == at::kHalf   ? DType::kFloat16
                                          : DType::kFloat32;
}

void paged_kv_write_cuda(at::Tensor& k_pages, at::Tensor& v_pages, at::Tensor& k_max, at::Tensor& k_min,
                         const at::Tensor& k, const at::Tensor& v, const at::Tensor& page_ids,
                         const at::Tensor& slots) {
  const at::Device dev = k_pages.device();
  TORCH_CHECK_VALUE(k_pages.is_cuda(), "paged_kv_write on CUDA: k_pages must be a CUDA tensor");
  using Named = std::pair<const at::Tensor*, const char*>;
  for (const auto& [t, name] : {Named{&v_pages, "v_pages"}, {&k_max, "k_max"}, {&k_min, "k_min"}, {&k, "k"},
                                {&v, "v"}, {&page_ids, "page_ids"}, {&slots, "slots"}})
    check_on_device(*t, dev, "paged_kv_write", name);
  TORCH_CHECK_VALUE(page_ids.is_contiguous() && slots.is_contiguous(),
                    "page_ids and slots must be contiguous int32 [tokens]");
  TORCH_CHECK_VALUE(page_ids.numel() < (int64_t(1) << 31), "paged_kv_write on CUDA: at most 2^31 - 1 tokens a call");
  const c10::DeviceGuard guard(dev);
  const HostCopy ids(page_ids), sl(slots);
  cuda::PagedWriteArgs args;
  args.w = make_paged_write(k_pages, v_pages, k_max, k_min, k, v, ids.host, sl.host);
  // Nothing to write (the CPU op writes nothing either; the kernel takes no empty grid)
  if (args.w.ntokens == 0 || args.w.heads_kv == 0 || args.w.head_dim == 0) return;
  const cuda::HostWriteRuns runs = cuda::build_write_runs(ids.host.data_ptr<int32_t>(), args.w.ntokens);
  // run_start then order, one upload (none for a decode step: one token per page, in order)
  std::vector<int32_t> packed(runs.run_start);
  packed.insert(packed.end(), runs.order.begin(), runs.order.end());
  at::Tensor packed_dev;
  if (!packed.empty()) {
    packed_dev = at::from_blob(packed.data(), {int64_t(packed.size())}, at::TensorOptions().dtype(at::kInt))
                     .to(dev);  // pageable source: returns once the copy has read it
    const int32_t* base = packed_dev.data_ptr<int32_t>();
    if (!runs.run_start.empty()) args.runs.run_start = base;
    if (!runs.order.empty()) args.runs.order = base + runs.run_start.size();
  }
  args.runs.runs = runs.runs;
  args.w.page_ids = ids.dev.data_ptr<int32_t>(), args.w.slots = sl.dev.data_ptr<int32_t>();
  args.vectorized = cuda::paged_write_vectorizable(args.w);
  check_launch(cuda::paged_kv_write(args, current_stream(dev)),
               cuda::paged_kv_write_kernel_name(args.w.dtype, args.vectorized));
}

at::Tensor quest_scores_cuda(const at::Tensor& q, const at::Tensor& k_max, const at::Tensor& k_min,
                             const at::Tensor& page_table, const at::Tensor& seqlens, int64_t page_size,
                             bool sum_reduce) {
  const at::Device dev = k_max.device();
  TORCH_CHECK_VALUE(k_max.is_cuda(), "quest_scores on CUDA: k_max must be a CUDA tensor");
  using Named = std::pair<const at::Tensor*, const char*>;
  for (const auto& [t, name] : {Named{&q, "q"}, {&k_min, "k_min"}, {&page_table, "page_table"}, {&seqlens, "seqlens"}})
    check_on_device(*t, dev, "quest_scores", name);
  const c10::DeviceGuard guard(dev);
  const HostCopy pt(page_table), sl(seqlens);
  cuda::QuestScoresArgs args;
  args.p = make_quest_scores(q, k_max, k_min, pt.host, sl.host, page_size);
  args.p.page_table = pt.dev.data_ptr<int32_t>(), args.p.seqlens = sl.dev.data_ptr<int32_t>();
  const int64_t G = q.size(1) / args.p.heads_kv;
  TORCH_CHECK_VALUE(G * args.p.head_dim <= 24576, "quest_scores on CUDA keeps a KV head's group of queries in shared "
                    "memory: heads_q / heads_kv x head_dim must be <= 24576, got ", G, " x ", args.p.head_dim,
                    " (use the CPU engine)");
  // q in float32, bf16 or fp16 is read as it is (any strides); another dtype as float32
  const at::Tensor qq = (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16 ||
                         q.scalar_type() == at::kHalf) ? q : q.to(at::kFloat);
  args.q = qq.data_ptr(), args.q_dtype = dtype_of(qq), args.heads_q = q.size(1), args.sum_reduce = sum_reduce;
  for (int i = 0; i < 3; ++i) args.q_stride[i] = qq.stride(i);
  args.dtype = dtype_of(k_max);
  at::Tensor out = at::empty({args.p.batch, args.p.heads_kv, args.p.max_pages}, k_max.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  if (args.heads_q == 0 || args.p.head_dim == 0) {
    // Nothing to bound (the kernel takes no empty group or row): the CPU op's result, an empty
    // sum being 0 (a bound over no channels; the sum over no query heads) and an empty max -inf
    // (no query heads); -inf past each sequence (page j is past it iff j * page_size >= seqlen).
    const at::Tensor past = at::arange(args.p.max_pages, sl.dev.options().dtype(at::kLong)).mul(page_size).view(
                                {1, 1, args.p.max_pages}) >= sl.dev.to(at::kLong).view({args.p.batch, 1, 1});
    out.fill_(args.heads_q == 0 && !sum_reduce ? -INFINITY : 0.f).masked_fill_(past, -INFINITY);
    return out;
  }
  args.out = out.data_ptr<float>();
  args.vectorized = cuda::quest_scores_vectorizable(args);
  check_launch(cuda::quest_scores(args, dev.index(), current_stream(dev)),
               cuda::quest_scores_kernel_name(args.dtype, args.vectorized));
  return out;
}

std::tuple<at::Tensor, at::Tensor> quest_select_cuda(const at::Tensor& scores, const at::Tensor& seqlens,
                                                      int64_t page_size, int64_t token_budget, int64_t sink_pages,
                                                      int64_t recent_pages) {
  const at::Device dev = scores.device();
  TORCH_CHECK_VALUE(scores.is_cuda(), "quest_select on CUDA: scores must be a CUDA tensor");
  check_on_device(seqlens, dev, "quest_select", "seqlens");
  const c10::DeviceGuard guard(dev);
  const HostCopy sl(seqlens);
  const int64_t k = make_quest_select(scores, sl.host, page_size, token_budget, sink_pages, recent_pages);
  const int64_t B = scores.size(0), H = scores.size(1), P = scores.size(2);
  const at::Tensor sc = scores.contiguous();
  at::Tensor keys = at::empty({B, H, P}, sc.options().dtype(at::kLong));
  at::Tensor counts = at::empty({B, H}, sc.options().dtype(at::kInt));
  cuda::SelectKeysArgs a;
  a.scores = sc.data_ptr<float>(), a.seqlens = sl.dev.data_ptr<int32_t>();
  a.batch = B, a.heads_kv = H, a.max_pages = P, a.page_size = page_size, a.k = k;
  a.sink_pages = sink_pages, a.recent_pages = recent_pages;
  a.keys = keys.data_ptr<int64_t>(), a.counts = counts.data_ptr<int32_t>();
  if (B * H == 0) return {at::empty({B, H, k}, counts.options()), counts};
  check_launch(cuda::quest_select_keys(a, current_stream(dev)), cuda::quest_select_keys_kernel_name());
  if (k == 0) return {at::empty({B, H, 0}, counts.options()), counts};
  // The k smallest keys of each row; their pages ascending (select_key_page: & 0x7fffffff,
  // pages past the sequence give INT32_MAX, sorted last and then zeroed).
  const at::Tensor smallest = std::get<0>(at::topk(keys, k, -1, /*largest=*/false, /*sorted=*/false));
  at::Tensor pages = std::get<0>(at::sort(at::bitwise_and(smallest, 0x7fffffff).to(at::kInt), -1));
  pages.masked_fill_(pages == 0x7fffffff, 0);
  return {pages.contiguous(), counts};
}

}  // namespace
}  // namespace sparse_attn

TORCH_LIBRARY_IMPL(sparse_attn, CUDA, m) {
  m.impl("paged_kv_write", &sparse_attn::paged_kv_write_cuda);
  m.impl("quest_scores", &sparse_attn::quest_scores_cuda);
  m.impl("quest_select", &sparse_attn::quest_select_cuda);
}
