// The only file that sees torch tensors: argument checks, dispatch by device, and
// registration of the ops (torch.library schema + CPU kernels; fake kernels live in
// sparse_attn/_ops.py) and of the pybind11 module sparse_attn._C (build facts).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <string>
#include <tuple>

#include "cpu/attention_kernel.h"
#include "cpu/output_cache.h"
#include "torch_checks.h"
#include "sparse_attn/causal.h"
#include "sparse_attn/params.h"
#include "sparse_attn/stream_k.h"
#include "sparse_attn/validate.h"

#ifdef SA_WITH_CUDA
#include "cuda/smoke.h"
#endif

namespace sparse_attn {
namespace {

DType to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default:
      TORCH_CHECK_VALUE(false, name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

void check_qkv_layout(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be [batch, seqlen, heads, head_dim], got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.stride(3) == 1, name, " must have a contiguous last dimension (stride 1), got strides ",
                    t.strides());
}

}  // namespace

// Checks q/k/v/out and fills the shared part of the parameters.
AttentionParams make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& out, const at::Tensor& lse, double scale, bool causal) {
  check_qkv_layout(q, "q");
  check_qkv_layout(k, "k");
  check_qkv_layout(v, "v");
  check_qkv_layout(out, "out");
  TORCH_CHECK_VALUE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                    "q, k and v must share a dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
                    v.scalar_type());
  TORCH_CHECK_VALUE(out.scalar_type() == q.scalar_type(), "out must have q's dtype ", q.scalar_type(),
                    ", got ", out.scalar_type());
  TORCH_CHECK_VALUE(k.device() == q.device() && v.device() == q.device() && out.device() == q.device(),
                    "q, k, v and out must be on one device");
  const int64_t B = q.size(0), Sq = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Sk = k.size(1), Hkv = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == B && v.size(0) == B, "k and v must have q's batch size ", B);
  TORCH_CHECK_VALUE(v.sizes() == k.sizes(), "v must have k's shape ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK_VALUE(k.size(3) == D, "k's head_dim ", k.size(3), " differs from q's ", D);
  TORCH_CHECK_VALUE(Hkv > 0 && Hq % Hkv == 0, "q's heads (", Hq, ") must be a multiple of k's heads (", Hkv, ")");
  TORCH_CHECK_VALUE(out.sizes() == q.sizes(), "out must have q's shape ", q.sizes(), ", got ", out.sizes());
  // Threads write disjoint rows of out and read q/k/v while they do.
  TORCH_CHECK_VALUE(at::has_internal_overlap(out) != at::MemOverlap::Yes,
                    "out has overlapping elements (e.g. an expanded tensor); pass a dense tensor");
  for (const auto* t : {&q, &k, &v}) {  // TooHard (a strided view) cannot be decided: allowed
    const auto st = at::get_overlap_status(out, *t);
    TORCH_CHECK_VALUE(st != at::MemOverlapStatus::Full && st != at::MemOverlapStatus::Partial,
                      "out must not share memory with q, k or v");
  }
  TORCH_CHECK_VALUE(D % 16 == 0 && D >= 16 && D <= 512, "head_dim must be a multiple of 16 in [16, 512], got ", D);
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0, "scale must be a positive finite number, got ", scale);
  AttentionParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.dtype = to_dtype(q, "q");
  p.batch = B, p.seqlen_q = Sq, p.seqlen_k = Sk, p.heads_q = Hq, p.heads_kv = Hkv, p.head_dim = D;
  for (int i = 0; i < 3; ++i) {
    p.q_stride[i] = q.stride(i);
    p.k_stride[i] = k.stride(i);
    p.v_stride[i] = v.stride(i);
    p.o_stride[i] = out.stride(i);
  }
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  return p;
}

namespace {

void check_index_tensor(const at::Tensor& t, const char* name, int64_t dim, const at::Tensor& q) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == q.device(), name, " must be on q's device ", q.device(), ", got ", t.device());
}

// Fills the mask part; counts [Bm, Hm, MB], indices [Bm, Hm, MB, K], Bm in {1, B}, Hm in {1, Hq}.
void fill_block_list(const at::Tensor& counts, const at::Tensor& indices, const char* cname, const char* iname,
                     const at::Tensor& q, int64_t num_q_blocks, const int32_t*& cptr, int64_t* cstride,
                     const int32_t*& iptr, int64_t* istride, int64_t& capacity) {
  check_index_tensor(counts, cname, 3, q);
  check_index_tensor(indices, iname, 4, q);
  const int64_t B = q.size(0), Hq = q.size(2);
  TORCH_CHECK_VALUE(counts.size(0) == 1 || counts.size(0) == B, cname, "'s batch dimension must be 1 or ", B,
                    ", got shape ", counts.sizes());
  TORCH_CHECK_VALUE(counts.size(1) == 1 || counts.size(1) == Hq, cname, "'s head dimension must be 1 or ", Hq,
                    " (query heads), got shape ", counts.sizes());
  TORCH_CHECK_VALUE(counts.size(2) == num_q_blocks, cname, " must have ", num_q_blocks,
                    " query blocks (ceil(seqlen_q / block_q)), got shape ", counts.sizes());
  TORCH_CHECK_VALUE(indices.size(0) == counts.size(0) && indices.size(1) == counts.size(1) &&
                        indices.size(2) == counts.size(2),
                    iname, " shape ", indices.sizes(), " does not match ", cname, " shape ", counts.sizes());
  cptr = counts.data_ptr<int32_t>();
  iptr = indices.data_ptr<int32_t>();
  for (int i = 0; i < 3; ++i) cstride[i] = counts.size(i) == 1 ? 0 : counts.stride(i);
  for (int i = 0; i < 4; ++i) istride[i] = indices.size(i) == 1 && i < 3 ? 0 : indices.stride(i);
  capacity = indices.size(3);
}

}  // namespace

BlockSparseParams make_block_sparse_params(const AttentionParams& p, const at::Tensor& q, const at::Tensor& counts,
                                           const at::Tensor& indices, const std::optional<at::Tensor>& full_counts,
                                           const std::optional<at::Tensor>& full_indices, int64_t block_q,
                                           int64_t block_k, bool causal, bool validate) {
  TORCH_CHECK_VALUE(block_q >= 16 && block_q <= 512 && block_q % 16 == 0,
                    "block_size[0] (query block) must be a multiple of 16 in [16, 512], got ", block_q);
  TORCH_CHECK_VALUE(block_k >= 64 && block_k % 64 == 0 && block_k <= (1 << 20),
                    "block_size[1] (key block) must be a multiple of 64 in [64, 2^20], got ", block_k);
  TORCH_CHECK_VALUE(full_counts.has_value() == full_indices.has_value(),
                    "full_counts and full_indices must be given together");
  BlockSparseParams m;
  m.block_q = static_cast<int>(block_q);
  m.block_k = static_cast<int>(block_k);
  m.num_q_blocks = (p.seqlen_q + block_q - 1) / block_q;
  m.num_k_blocks = (p.seqlen_k + block_k - 1) / block_k;
  fill_block_list(counts, indices, "counts", "indices", q, m.num_q_blocks, m.counts, m.counts_stride, m.indices,
                  m.indices_stride, m.max_count);
  if (full_counts) {
    fill_block_list(*full_counts, *full_indices, "full_counts", "full_indices", q, m.num_q_blocks, m.full_counts,
                    m.full_counts_stride, m.full_indices, m.full_indices_stride, m.max_full_count);
  }
  if (validate) {
    // Device lists are validated from a host copy (one synchronizing copy per call; pass
    // validate=False to skip it once the lists are known to be good).
    BlockSparseParams hm = m;
    at::Tensor hc, hi, hfc, hfi;
    if (!counts.is_cpu()) {
      // a CPU stand-in for q (only its sizes and device are read; no copy)
      const at::Tensor qh = at::empty({1, 1, 1, 1}, q.options().device(at::kCPU)).expand(q.sizes());
      auto host = [](const at::Tensor& t) { return t.to(at::kCPU).contiguous(); };
      hc = host(counts), hi = host(indices);
      fill_block_list(hc, hi, "counts", "indices", qh, m.num_q_blocks, hm.counts, hm.counts_stride,
                      hm.indices, hm.indices_stride, hm.max_count);
      if (full_counts) {
        hfc = host(*full_counts), hfi = host(*full_indices);
        fill_block_list(hfc, hfi, "full_counts", "full_indices", qh, m.num_q_blocks, hm.full_counts,
                        hm.full_counts_stride, hm.full_indices, hm.full_indices_stride, hm.max_full_count);
      }
    }
    const CausalGeometry geo{p.seqlen_q, p.seqlen_k, causal};
    std::string err = validate_block_sparse(hm, counts.size(0), counts.size(1), full_counts ? full_counts->size(0) : 0,
                                            full_counts ? full_counts->size(1) : 0, geo);
    TORCH_CHECK_VALUE(err.empty(), err);
  }
  return m;
}

StreamingParams make_streaming_params(const AttentionParams& p, int64_t sink_tokens, int64_t window_tokens) {
  TORCH_CHECK_VALUE(sink_tokens >= 0, "sink_tokens must be >= 0, got ", sink_tokens);
  TORCH_CHECK_VALUE(window_tokens >= 0, "window_tokens must be >= 0, got ", window_tokens);
  // Anything past the key length means "everything"; clamping keeps the index math small.
  const int64_t cap = p.seqlen_k + 1;
  return StreamingParams{std::min(sink_tokens, cap), std::min(window_tokens, cap)};
}

at::Tensor new_lse(const at::Tensor& q) {
  return at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
}

namespace {

at::Tensor block_sparse_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      at::Tensor& out, const at::Tensor& counts, const at::Tensor& indices,
                                      const std::optional<at::Tensor>& full_counts,
                                      const std::optional<at::Tensor>& full_indices, int64_t block_q,
                                      int64_t block_k, bool causal, double scale, bool validate) {
  auto lse = new_lse(q);
  AttentionParams p = make_params(q, k, v, out, lse, scale, causal);
  const BlockSparseParams m =
      make_block_sparse_params(p, q, counts, indices, full_counts, full_indices, block_q, block_k, causal, validate);
  if (q.numel() > 0) cpu::block_sparse_forward(p, m);
  return lse;
}

at::Tensor streaming_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                                   int64_t sink_tokens, int64_t window_tokens, double scale) {
  auto lse = new_lse(q);
  AttentionParams p = make_params(q, k, v, out, lse, scale, /*causal=*/true);
  const StreamingParams s = make_streaming_params(p, sink_tokens, window_tokens);
  if (q.numel() > 0) cpu::streaming_forward(p, s);
  return lse;
}

// A vertical-slash list [Bv, Hv, N] (contiguous last dim) and its counts [Bv, Hv], both
// int32, Bv in {1, batch}, Hv in {1, heads}.
void fill_vs_list(const at::Tensor& list, const at::Tensor& count, const char* lname, const char* cname,
                  int64_t batch, int64_t heads, const at::Device& device, const int32_t*& lptr, int64_t* lstride,
                  const int32_t*& cptr, int64_t* cstride, int64_t& capacity) {
  TORCH_CHECK_VALUE(list.scalar_type() == at::kInt, lname, " must be int32, got ", list.scalar_type());
  TORCH_CHECK_VALUE(count.scalar_type() == at::kInt, cname, " must be int32, got ", count.scalar_type());
  TORCH_CHECK_VALUE(list.dim() == 3, lname, " must be [batch, heads, n], got shape ", list.sizes());
  TORCH_CHECK_VALUE(count.dim() == 2 && count.size(0) == list.size(0) && count.size(1) == list.size(1), cname,
                    " must be [", list.size(0), ", ", list.size(1), "] to match ", lname, ", got shape ",
                    count.sizes());
  TORCH_CHECK_VALUE(list.device() == device && count.device() == device, lname, " and ", cname,
                    " must be on device ", device);
  TORCH_CHECK_VALUE(list.size(0) == 1 || list.size(0) == batch, lname, "'s batch dimension must be 1 or ", batch,
                    ", got shape ", list.sizes());
  TORCH_CHECK_VALUE(list.size(1) == 1 || list.size(1) == heads, lname, "'s head dimension must be 1 or ", heads,
                    ", got shape ", list.sizes());
  TORCH_CHECK_VALUE(list.size(2) <= 1 || list.stride(2) == 1, lname, " must have a contiguous last dimension");
  lptr = list.data_ptr<int32_t>();
  cptr = count.data_ptr<int32_t>();
  for (int i = 0; i < 2; ++i) {
    lstride[i] = list.size(i) == 1 ? 0 : list.stride(i);
    cstride[i] = count.size(i) == 1 ? 0 : count.stride(i);
  }
  capacity = list.size(2);
  // Counts are clamped to the capacity by the kernels; entries must not be negative.
  const auto* c = cptr;
  const auto* l = lptr;
  for (int64_t b = 0; b < list.size(0); ++b) {
    for (int64_t h = 0; h < list.size(1); ++h) {
      const int64_t n = std::min<int64_t>(std::max<int32_t>(c[b * cstride[0] + h * cstride[1]], 0), capacity);
      for (int64_t i = 0; i < n; ++i) {
        TORCH_CHECK_VALUE(l[b * lstride[0] + h * lstride[1] + i] >= 0, lname, " holds negative values; it must hold ",
                          std::string(lname) == "vertical" ? "key positions"
                                                           : "diagonal offsets (0 = main diagonal, p - j >= 0)");
      }
    }
  }
}

}  // namespace

VerticalSlashParams make_vs_params(const at::Tensor& vertical, const at::Tensor& vertical_count,
                                   const at::Tensor& slash, const at::Tensor& slash_count, int64_t batch,
                                   int64_t heads, const at::Device& device) {
  VerticalSlashParams vs;
  fill_vs_list(vertical, vertical_count, "vertical", "vertical_count", batch, heads, device, vs.vertical,
               vs.vertical_stride, vs.vertical_count, vs.vertical_count_stride, vs.max_vertical);
  fill_vs_list(slash, slash_count, "slash", "slash_count", batch, heads, device, vs.slash, vs.slash_stride,
               vs.slash_count, vs.slash_count_stride, vs.max_slash);
  return vs;
}

namespace {

at::Tensor vertical_slash_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        at::Tensor& out, const at::Tensor& vertical, const at::Tensor& vertical_count,
                                        const at::Tensor& slash, const at::Tensor& slash_count, bool causal,
                                        double scale) {
  auto lse = new_lse(q);
  AttentionParams p = make_params(q, k, v, out, lse, scale, causal);
  VerticalSlashParams vs =
      make_vs_params(vertical, vertical_count, slash, slash_count, p.batch, p.heads_q, q.device());
  if (q.numel() > 0) cpu::vertical_slash_forward(p, vs);
  return lse;
}

}  // namespace

VSIndexCall prepare_vs_index(const at::Tensor& vertical, const at::Tensor& vertical_count, const at::Tensor& slash,
                             const at::Tensor& slash_count, int64_t seqlen_q, int64_t seqlen_k, int64_t block_size,
                             const at::Device& out_device) {
  TORCH_CHECK_VALUE(seqlen_q >= 0 && seqlen_k >= 0, "seqlen_q and seqlen_k must be >= 0, got ", seqlen_q, ", ",
                    seqlen_k);
  TORCH_CHECK_VALUE(block_size >= 1 && block_size <= (1 << 20), "block_size must be in [1, 2^20], got ",
                    block_size);
  TORCH_CHECK_VALUE(vertical.dim() == 3 && slash.dim() == 3, "vertical and slash must be [batch, heads, n], got ",
                    vertical.sizes(), " and ", slash.sizes());
  VSIndexCall c;
  c.batch = std::max(vertical.size(0), slash.size(0));
  c.heads = std::max(vertical.size(1), slash.size(1));
  c.vs = make_vs_params(vertical, vertical_count, slash, slash_count, c.batch, c.heads, vertical.device());
  const int64_t mb = (seqlen_q + block_size - 1) / block_size;
  c.idx.max_blocks = std::min<int64_t>(2 * (c.vs.max_slash + 1), (seqlen_k + block_size - 1) / block_size);
  c.idx.max_columns = c.vs.max_vertical;
  auto opts = vertical.options().dtype(at::kInt).device(out_device);
  c.block_count = at::empty({c.batch, c.heads, mb}, opts);
  c.block_offset = at::empty({c.batch, c.heads, mb, c.idx.max_blocks}, opts);
  c.column_count = at::empty({c.batch, c.heads, mb}, opts);
  c.column_index = at::empty({c.batch, c.heads, mb, c.idx.max_columns}, opts);
  c.idx.block_count = c.block_count.data_ptr<int32_t>();
  c.idx.block_offset = c.block_offset.data_ptr<int32_t>();
  c.idx.column_count = c.column_count.data_ptr<int32_t>();
  c.idx.column_index = c.column_index.data_ptr<int32_t>();
  c.rows = c.batch * c.heads * mb;
  return c;
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> vertical_slash_index_cpu(
    const at::Tensor& vertical, const at::Tensor& vertical_count, const at::Tensor& slash,
    const at::Tensor& slash_count, int64_t seqlen_q, int64_t seqlen_k, int64_t block_size) {
  VSIndexCall c = prepare_vs_index(vertical, vertical_count, slash, slash_count, seqlen_q, seqlen_k, block_size,
                                   vertical.device());
  if (c.rows > 0) cpu::vertical_slash_index(c.vs, c.batch, c.heads, seqlen_q, seqlen_k, block_size, c.idx);
  return {c.block_count, c.block_offset, c.column_count, c.column_index};
}

// ---------------------------------------------------------------- paged KV cache

void check_pages_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be [num_pages, page_size, heads_kv, head_dim], got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.stride(3) == 1, name, " must have a contiguous last dimension");
  to_dtype(t, name);
}

void check_meta_tensor(const at::Tensor& t, const char* name, const at::Tensor& pages) {
  TORCH_CHECK_VALUE(t.dim() == 3 && t.size(0) == pages.size(0) && t.size(1) == pages.size(2) &&
                        t.size(2) == pages.size(3),
                    name, " must be [num_pages, heads_kv, head_dim] = [", pages.size(0), ", ", pages.size(2), ", ",
                    pages.size(3), "], got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.stride(2) == 1, name, " must have a contiguous last dimension");
  TORCH_CHECK_VALUE(t.scalar_type() == pages.scalar_type() && t.device() == pages.device(), name,
                    " must have the cache's dtype and device");
}

// page_table [B, max_pages] int32 (last dim contiguous), seqlens [B] int32, validated.
PagedKVParams make_paged(const at::Tensor* k_pages, const at::Tensor* v_pages, const at::Tensor& page_table,
                         const at::Tensor& seqlens, int64_t num_pages, int64_t page_size, int64_t heads_kv,
                         int64_t head_dim) {
  TORCH_CHECK_VALUE(page_table.scalar_type() == at::kInt && page_table.dim() == 2 && page_table.stride(1) == 1,
                    "page_table must be int32 [batch, max_pages] with a contiguous last dimension, got ",
                    page_table.scalar_type(), " ", page_table.sizes());
  TORCH_CHECK_VALUE(seqlens.scalar_type() == at::kInt && seqlens.dim() == 1 && seqlens.size(0) == page_table.size(0) &&
                        seqlens.is_contiguous(),
                    "seqlens must be contiguous int32 [batch] matching page_table's batch ", page_table.size(0),
                    ", got ", seqlens.scalar_type(), " ", seqlens.sizes());
  TORCH_CHECK_VALUE(page_size >= 1, "page_size must be >= 1, got ", page_size);
  PagedKVParams p;
  if (k_pages != nullptr) {
    p.k_pages = k_pages->data_ptr();
    p.v_pages = v_pages->data_ptr();
    for (int i = 0; i < 3; ++i) p.page_stride[i] = k_pages->stride(i);
    TORCH_CHECK_VALUE(v_pages->strides() == k_pages->strides() && v_pages->sizes() == k_pages->sizes(),
                      "v_pages must have k_pages' shape and strides");
  }
  p.page_table = page_table.data_ptr<int32_t>();
  p.seqlens = seqlens.data_ptr<int32_t>();
  p.num_pages = num_pages, p.page_size = page_size, p.heads_kv = heads_kv, p.head_dim = head_dim;
  p.batch = page_table.size(0), p.max_pages = page_table.size(1), p.table_stride = page_table.stride(0);
  const std::string err = validate_paged(p);
  TORCH_CHECK_VALUE(err.empty(), err);
  return p;
}

}  // namespace

PagedKVWrite make_paged_write(const at::Tensor& k_pages, const at::Tensor& v_pages, const at::Tensor& k_max,
                              const at::Tensor& k_min, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& page_ids, const at::Tensor& slots) {
  check_pages_tensor(k_pages, "k_pages");
  check_pages_tensor(v_pages, "v_pages");
  TORCH_CHECK_VALUE(v_pages.sizes() == k_pages.sizes() && v_pages.strides() == k_pages.strides() &&
                        v_pages.scalar_type() == k_pages.scalar_type(),
                    "v_pages must match k_pages (shape, strides, dtype)");
  check_meta_tensor(k_max, "k_max", k_pages);
  check_meta_tensor(k_min, "k_min", k_pages);
  TORCH_CHECK_VALUE(k_min.strides() == k_max.strides(), "k_min must have k_max's strides");
  // The four tensors written must not share memory, with themselves (a stride-0 dimension) or
  // with each other: the kernels write them in parallel and widen k_max / k_min in place.
  // The tests of assert_no_internal_overlap / assert_no_overlap (ATen/MemoryOverlap.h), as a
  // ValueError naming the tensors; memory too hard to tell (TooHard) is let through, as there.
  const std::pair<const at::Tensor*, const char*> written[] = {
      {&k_pages, "k_pages"}, {&v_pages, "v_pages"}, {&k_max, "k_max"}, {&k_min, "k_min"}};
  for (size_t i = 0; i < 4; ++i) {
    const auto& [t, name] = written[i];
    TORCH_CHECK_VALUE(at::has_internal_overlap(*t) != at::MemOverlap::Yes, name,
                      " has elements that share memory (an expanded tensor?); paged_kv_write writes it in place");
    for (size_t j = 0; j < i; ++j) {
      const at::MemOverlapStatus st = at::get_overlap_status(*t, *written[j].first);
      TORCH_CHECK_VALUE(st != at::MemOverlapStatus::Full && st != at::MemOverlapStatus::Partial, name,
                        " overlaps ", written[j].second, " in memory; paged_kv_write writes both in place");
    }
  }
  const int64_t N = page_ids.numel();
  for (const auto* t : {&k, &v}) {
    const char* name = t == &k ? "k" : "v";
    TORCH_CHECK_VALUE(t->dim() == 3 && t->size(0) == N && t->size(1) == k_pages.size(2) && t->size(2) == k_pages.size(3),
                      name, " must be [tokens, heads_kv, head_dim] = [", N, ", ", k_pages.size(2), ", ",
                      k_pages.size(3), "], got shape ", t->sizes());
    TORCH_CHECK_VALUE(t->scalar_type() == k_pages.scalar_type(), name, " must have the cache's dtype ",
                      k_pages.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->stride(2) == 1, name, " must have a contiguous last dimension");
  }
  TORCH_CHECK_VALUE(page_ids.scalar_type() == at::kInt && slots.scalar_type() == at::kInt && page_ids.dim() == 1 &&
                        slots.dim() == 1 && slots.size(0) == N && page_ids.is_contiguous() && slots.is_contiguous(),
                    "page_ids and slots must be contiguous int32 [tokens]");
  const int32_t* pid = page_ids.data_ptr<int32_t>();
  const int32_t* sl = slots.data_ptr<int32_t>();
  for (int64_t n = 0; n < N; ++n) {
    TORCH_CHECK_VALUE(pid[n] >= 0 && pid[n] < k_pages.size(0), "page_ids[", n, "] = ", pid[n],
                      " is not a page id in [0, ", k_pages.size(0), ")");
    TORCH_CHECK_VALUE(sl[n] >= 0 && sl[n] < k_pages.size(1), "slots[", n, "] = ", sl[n], " is not in [0, page_size = ",
                      k_pages.size(1), ")");
  }
  PagedKVWrite w;
  w.k_pages = k_pages.data_ptr(), w.v_pages = v_pages.data_ptr();
  w.k_max = k_max.data_ptr(), w.k_min = k_min.data_ptr();
  w.k = k.data_ptr(), w.v = v.data_ptr(), w.page_ids = pid, w.slots = sl, w.ntokens = N;
  w.heads_kv = k_pages.size(2), w.head_dim = k_pages.size(3), w.dtype = to_dtype(k_pages, "k_pages");
  for (int i = 0; i < 3; ++i) w.page_stride[i] = k_pages.stride(i);
  for (int i = 0; i < 2; ++i) {
    w.meta_stride[i] = k_max.stride(i);
    w.src_stride[i] = k.stride(i);
    w.v_src_stride[i] = v.stride(i);
  }
  return w;
}

PagedKVParams make_quest_scores(const at::Tensor& q, const at::Tensor& k_max, const at::Tensor& k_min,
                                const at::Tensor& page_table, const at::Tensor& seqlens, int64_t page_size) {
  TORCH_CHECK_VALUE(k_max.dim() == 3 && k_max.stride(2) == 1, "k_max must be [num_pages, heads_kv, head_dim] with a "
                    "contiguous last dimension, got shape ", k_max.sizes());
  TORCH_CHECK_VALUE(k_min.sizes() == k_max.sizes() && k_min.strides() == k_max.strides() &&
                        k_min.scalar_type() == k_max.scalar_type(),
                    "k_min must match k_max (shape, strides, dtype)");
  to_dtype(k_max, "k_max");  // here, not only where the CPU op calls a kernel: for every engine and size
  const int64_t Hkv = k_max.size(1), D = k_max.size(2);
  TORCH_CHECK_VALUE(Hkv >= 1, "k_max must have heads_kv >= 1, got shape ", k_max.sizes());  // before % Hkv
  TORCH_CHECK_VALUE(q.dim() == 3 && q.size(0) == page_table.size(0) && q.size(2) == D && q.size(1) % Hkv == 0,
                    "q must be [batch, heads_q, head_dim] with batch ", page_table.size(0), ", head_dim ", D,
                    " and heads_q a multiple of ", Hkv, ", got shape ", q.sizes());
  PagedKVParams p = make_paged(nullptr, nullptr, page_table, seqlens, k_max.size(0), page_size, Hkv, D);
  p.k_max = k_max.data_ptr(), p.k_min = k_min.data_ptr();
  p.meta_stride[0] = k_max.stride(0), p.meta_stride[1] = k_max.stride(1);
  return p;
}

int64_t make_quest_select(const at::Tensor& scores, const at::Tensor& seqlens, int64_t page_size,
                          int64_t token_budget, int64_t sink_pages, int64_t recent_pages) {
  TORCH_CHECK_VALUE(scores.scalar_type() == at::kFloat && scores.dim() == 3,
                    "scores must be float32 [batch, heads_kv, max_pages], got ", scores.scalar_type(), " ",
                    scores.sizes());
  TORCH_CHECK_VALUE(seqlens.scalar_type() == at::kInt && seqlens.dim() == 1 && seqlens.size(0) == scores.size(0),
                    "seqlens must be int32 [batch] with batch ", scores.size(0), ", got ", seqlens.sizes());
  TORCH_CHECK_VALUE(page_size >= 1, "page_size must be >= 1, got ", page_size);
  TORCH_CHECK_VALUE(token_budget >= 1, "token_budget must be >= 1, got ", token_budget);
  TORCH_CHECK_VALUE(sink_pages >= 0 && recent_pages >= 0, "sink_pages and recent_pages must be >= 0");
  const int64_t P = scores.size(2);
  const at::Tensor sl = seqlens.contiguous();
  const int32_t* len = sl.data_ptr<int32_t>();
  for (int64_t b = 0; b < sl.size(0); ++b)
    TORCH_CHECK_VALUE(len[b] >= 0 && (len[b] + page_size - 1) / page_size <= P, "seqlens[", b, "] = ", len[b],
                      " needs more pages than scores has (", P, ")");
  return std::min(std::max((token_budget + page_size - 1) / page_size, sink_pages + recent_pages), P);
}

namespace {

void paged_kv_write_cpu(at::Tensor& k_pages, at::Tensor& v_pages, at::Tensor& k_max, at::Tensor& k_min,
                        const at::Tensor& k, const at::Tensor& v, const at::Tensor& page_ids, const at::Tensor& slots) {
  const PagedKVWrite w = make_paged_write(k_pages, v_pages, k_max, k_min, k, v, page_ids, slots);
  if (w.ntokens > 0) cpu::paged_kv_write(w);
}

at::Tensor quest_scores_cpu(const at::Tensor& q, const at::Tensor& k_max, const at::Tensor& k_min,
                            const at::Tensor& page_table, const at::Tensor& seqlens, int64_t page_size,
                            bool sum_reduce) {
  const PagedKVParams p = make_quest_scores(q, k_max, k_min, page_table, seqlens, page_size);
  const at::Tensor qf = q.to(at::kFloat).contiguous();  // [B, Hq, D]: small
  at::Tensor out = at::empty({p.batch, p.heads_kv, p.max_pages}, q.options().dtype(at::kFloat));
  if (out.numel() > 0)
    cpu::quest_scores(p, to_dtype(k_max, "k_max"), qf.data_ptr<float>(), q.scalar_type() == at::kBFloat16, q.size(1),
                      sum_reduce, out.data_ptr<float>());
  return out;
}

std::tuple<at::Tensor, at::Tensor> quest_select_cpu(const at::Tensor& scores, const at::Tensor& seqlens,
                                                     int64_t page_size, int64_t token_budget, int64_t sink_pages,
                                                     int64_t recent_pages) {
  const int64_t k = make_quest_select(scores, seqlens, page_size, token_budget, sink_pages, recent_pages);
  const int64_t P = scores.size(2);
  const at::Tensor sc = scores.contiguous();
  const at::Tensor sl = seqlens.contiguous();
  at::Tensor pages = at::empty({scores.size(0), scores.size(1), k}, scores.options().dtype(at::kInt));
  at::Tensor counts = at::empty({scores.size(0), scores.size(1)}, scores.options().dtype(at::kInt));
  if (counts.numel() > 0)
    cpu::select_pages(sc.data_ptr<float>(), scores.size(0), scores.size(1), P, sl.data_ptr<int32_t>(), page_size, k,
                      sink_pages, recent_pages, pages.data_ptr<int32_t>(), counts.data_ptr<int32_t>());
  return {pages, counts};
}

}  // namespace

// Checks a stream-K plan against the cache and the selection it is run with: the tiles of
// every output and the partial slots must be what the plan was built for, so that no
// worker writes outside the workspace (a plan goes stale when sequences grow).
StreamKPlan make_stream_k_plan(const PagedKVParams& p, const PageSelection* sel, int64_t G, const at::Tensor& offsets,
                               const at::Tensor& slot_base, int64_t workers, int64_t tile_pages, at::Tensor& ws_state,
                               at::Tensor& ws_acc) {
  const int64_t outputs = p.batch * p.heads_kv;
  for (const auto* t : {&offsets, &slot_base}) {
    TORCH_CHECK_VALUE(t->scalar_type() == at::kLong && t->dim() == 1 && t->size(0) == outputs + 1 && t->is_contiguous(),
                      "plan: offsets and slot_base must be contiguous int64 [batch * heads_kv + 1] = [", outputs + 1,
                      "]; rebuild the plan with plan_decode");
  }
  TORCH_CHECK_VALUE(workers >= 1 && tile_pages >= 1, "plan: workers and tile_pages must be >= 1");
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* sb = slot_base.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(off[0] == 0 && sb[0] == 0, "plan: offsets and slot_base must start at 0");
  for (int64_t o = 0; o < outputs; ++o) {
    const int64_t b = o / p.heads_kv, g = o % p.heads_kv;
    const int64_t n = sel ? sel->counts[b * sel->counts_stride[0] + g * sel->counts_stride[1]]
                          : (p.seqlens[b] + p.page_size - 1) / p.page_size;
    const int64_t tiles = (n + tile_pages - 1) / tile_pages;
    TORCH_CHECK_VALUE(off[o + 1] - off[o] == tiles, "plan: sequence ", b, ", KV head ", g, " has ", tiles,
                      " tiles of ", tile_pages, " pages but the plan has ", off[o + 1] - off[o],
                      "; the plan is stale (the cache or the selection changed): rebuild it with plan_decode");
  }
  const int64_t total = off[outputs];
  for (int64_t o = 0; o < outputs; ++o) {
    const int64_t n = off[o + 1] - off[o];
    const int64_t want = n == 0 ? 0 : stream_k_worker_of(total, workers, off[o + 1] - 1) -
                                          stream_k_worker_of(total, workers, off[o]) + 1;
    TORCH_CHECK_VALUE(sb[o + 1] - sb[o] == want, "plan: slot_base does not match offsets and workers");
  }
  const int64_t slots = sb[outputs];
  TORCH_CHECK_VALUE(ws_state.scalar_type() == at::kFloat && ws_state.is_contiguous() && ws_state.numel() >= slots * G * 2,
                    "plan: ws_state must be contiguous float32 with room for ", slots * G * 2, " values");
  TORCH_CHECK_VALUE(ws_acc.scalar_type() == at::kFloat && ws_acc.is_contiguous() &&
                        ws_acc.numel() >= slots * G * p.head_dim,
                    "plan: ws_acc must be contiguous float32 with room for ", slots * G * p.head_dim, " values");
  StreamKPlan plan;
  plan.offsets = off, plan.slot_base = sb, plan.workers = workers, plan.tile_pages = tile_pages;
  plan.ws_state = ws_state.data_ptr<float>(), plan.ws_acc = ws_acc.data_ptr<float>();
  return plan;
}

PagedDecodeInputs make_paged_decode(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
                                    const at::Tensor& page_table, const at::Tensor& seqlens,
                                    const std::optional<at::Tensor>& pages, const std::optional<at::Tensor>& counts,
                                    const at::Tensor& out, const at::Tensor& lse, double scale) {
  check_pages_tensor(k_pages, "k_pages");
  check_pages_tensor(v_pages, "v_pages");
  const int64_t Hkv = k_pages.size(2), D = k_pages.size(3);
  TORCH_CHECK_VALUE(Hkv >= 1, "k_pages must have heads_kv >= 1, got shape ", k_pages.sizes());  // before % Hkv
  TORCH_CHECK_VALUE(q.dim() == 3 && q.size(0) == page_table.size(0) && q.size(2) == D && q.size(1) % Hkv == 0 &&
                        q.stride(2) == 1,
                    "q must be [batch, heads_q, head_dim] (last dim contiguous) with batch ", page_table.size(0),
                    ", head_dim ", D, " and heads_q a multiple of ", Hkv, ", got shape ", q.sizes());
  TORCH_CHECK_VALUE(q.scalar_type() == k_pages.scalar_type() && v_pages.scalar_type() == k_pages.scalar_type(),
                    "q, k_pages and v_pages must share a dtype");
  TORCH_CHECK_VALUE(out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type() && out.stride(2) == 1,
                    "out must have q's shape and dtype (last dim contiguous)");
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0, "scale must be a positive finite number, got ", scale);
  TORCH_CHECK_VALUE(pages.has_value() == counts.has_value(), "pages and counts must be given together");
  PagedKVParams p = make_paged(&k_pages, &v_pages, page_table, seqlens, k_pages.size(0), k_pages.size(1), Hkv, D);
  PageSelection sel;
  if (pages) {
    TORCH_CHECK_VALUE(pages->scalar_type() == at::kInt && pages->dim() == 3 && pages->size(0) == p.batch &&
                          pages->size(1) == Hkv,
                      "pages must be int32 [batch, heads_kv, K] = [", p.batch, ", ", Hkv, ", K], got ",
                      pages->scalar_type(), " ", pages->sizes());
    TORCH_CHECK_VALUE(counts->scalar_type() == at::kInt && counts->dim() == 2 && counts->size(0) == p.batch &&
                          counts->size(1) == Hkv,
                      "counts must be int32 [batch, heads_kv], got ", counts->scalar_type(), " ", counts->sizes());
    sel.pages = pages->data_ptr<int32_t>();
    sel.counts = counts->data_ptr<int32_t>();
    for (int i = 0; i < 3; ++i) sel.pages_stride[i] = pages->stride(i);
    for (int i = 0; i < 2; ++i) sel.counts_stride[i] = counts->stride(i);
    sel.capacity = pages->size(2);
    // Always checked: O(B x H_kv x K), nothing next to reading the pages, and a bad id
    // would read another sequence's pages.
    const std::string err = validate_selection(p, sel);
    TORCH_CHECK_VALUE(err.empty(), err);
  }
  PagedDecodeIO io;
  io.q = q.data_ptr(), io.out = out.data_ptr(), io.lse = lse.data_ptr<float>(), io.heads_q = q.size(1);
  io.q_stride[0] = q.stride(0), io.q_stride[1] = q.stride(1);
  io.o_stride[0] = out.stride(0), io.o_stride[1] = out.stride(1);
  io.scale = static_cast<float>(scale), io.dtype = to_dtype(q, "q");
  return {p, sel, pages.has_value(), io};
}

namespace {

struct StreamKArgs {
  const at::Tensor* offsets;
  const at::Tensor* slot_base;
  int64_t workers, tile_pages;
  at::Tensor* ws_state;
  at::Tensor* ws_acc;
};

at::Tensor paged_decode_impl(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
                             const at::Tensor& page_table, const at::Tensor& seqlens,
                             const std::optional<at::Tensor>& pages, const std::optional<at::Tensor>& counts,
                             at::Tensor& out, double scale, const StreamKArgs* sk) {
  auto lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  const PagedDecodeInputs in = make_paged_decode(q, k_pages, v_pages, page_table, seqlens, pages, counts, out, lse,
                                                 scale);
  const PagedKVParams& p = in.p;
  const PageSelection& sel = in.sel;
  const PagedDecodeIO& io = in.io;
  const int64_t Hkv = p.heads_kv;
  if (sk != nullptr) {
    const StreamKPlan plan = make_stream_k_plan(p, pages ? &sel : nullptr, q.size(1) / Hkv, *sk->offsets,
                                                *sk->slot_base, sk->workers, sk->tile_pages, *sk->ws_state, *sk->ws_acc);
    if (q.numel() > 0) cpu::paged_decode_stream_k(p, pages ? &sel : nullptr, io, plan);
  } else if (q.numel() > 0) {
    cpu::paged_decode(p, pages ? &sel : nullptr, io);
  }
  return lse;
}

at::Tensor paged_decode_attention_cpu(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
                                      const at::Tensor& page_table, const at::Tensor& seqlens,
                                      const std::optional<at::Tensor>& pages, const std::optional<at::Tensor>& counts,
                                      at::Tensor& out, double scale) {
  return paged_decode_impl(q, k_pages, v_pages, page_table, seqlens, pages, counts, out, scale, nullptr);
}

at::Tensor paged_decode_stream_k_cpu(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
                                     const at::Tensor& page_table, const at::Tensor& seqlens,
                                     const std::optional<at::Tensor>& pages, const std::optional<at::Tensor>& counts,
                                     at::Tensor& out, double scale, const at::Tensor& offsets,
                                     const at::Tensor& slot_base, int64_t workers, int64_t tile_pages,
                                     at::Tensor& ws_state, at::Tensor& ws_acc) {
  const StreamKArgs sk{&offsets, &slot_base, workers, tile_pages, &ws_state, &ws_acc};
  return paged_decode_impl(q, k_pages, v_pages, page_table, seqlens, pages, counts, out, scale, &sk);
}

// One Quest decode step in one op: scores, selection, attention over the selected pages,
// the same three CPU ops quest_decode would call from Python (bit-identical results).
// Why one op: at batch 1 each step is ~0.1-0.8 ms, and each op call after a step that
// streamed megabytes paid ~30-45 us of interpreter and dispatcher cache misses (a 16-float
// torch.add: 2 us warm, 30-45 us right after a Quest step), plus the Python wrappers.
at::Tensor quest_decode_cpu(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
                            const at::Tensor& k_max, const at::Tensor& k_min, const at::Tensor& page_table,
                            const at::Tensor& seqlens, bool sum_reduce, int64_t token_budget, int64_t sink_pages,
                            int64_t recent_pages, at::Tensor& out, double scale) {
  check_pages_tensor(k_pages, "k_pages");
  check_meta_tensor(k_max, "k_max", k_pages);  // shape, dtype, device and layout of the pool's metadata
  check_meta_tensor(k_min, "k_min", k_pages);
  const at::Tensor scores = quest_scores_cpu(q, k_max, k_min, page_table, seqlens, k_pages.size(1), sum_reduce);
  const auto [pages, counts] =
      quest_select_cpu(scores, seqlens, k_pages.size(1), token_budget, sink_pages, recent_pages);
  return paged_decode_impl(q, k_pages, v_pages, page_table, seqlens, pages, counts, out, scale, nullptr);
}

}  // namespace
}  // namespace sparse_attn

#ifdef SA_WITH_CUDA
namespace sparse_attn {
int64_t cuda_decode_max_workers(DType dt, int64_t head_dim, int64_t G, int device);  // bindings_cuda_decode.cpp
}
#endif

TORCH_LIBRARY(sparse_attn, m) {
  m.def(
      "block_sparse_attention(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor counts, Tensor indices, "
      "Tensor? full_counts, Tensor? full_indices, int block_q, int block_k, bool causal, float scale, "
      "bool validate) -> Tensor");
  m.def(
      "streaming_attention(Tensor q, Tensor k, Tensor v, Tensor(a!) out, int sink_tokens, int window_tokens, "
      "float scale) -> Tensor");
  m.def(
      "vertical_slash_attention(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor vertical, "
      "Tensor vertical_count, Tensor slash, Tensor slash_count, bool causal, float scale) -> Tensor");
  m.def(
      "vertical_slash_index(Tensor vertical, Tensor vertical_count, Tensor slash, Tensor slash_count, "
      "int seqlen_q, int seqlen_k, int block_size) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "paged_kv_write(Tensor(a!) k_pages, Tensor(b!) v_pages, Tensor(c!) k_max, Tensor(d!) k_min, Tensor k, "
      "Tensor v, Tensor page_ids, Tensor slots) -> ()");
  m.def(
      "quest_scores(Tensor q, Tensor k_max, Tensor k_min, Tensor page_table, Tensor seqlens, int page_size, "
      "bool sum_reduce) -> Tensor");
  m.def(
      "quest_select(Tensor scores, Tensor seqlens, int page_size, int token_budget, int sink_pages, "
      "int recent_pages) -> (Tensor, Tensor)");
  m.def(
      "paged_decode_attention(Tensor q, Tensor k_pages, Tensor v_pages, Tensor page_table, Tensor seqlens, "
      "Tensor? pages, Tensor? counts, Tensor(a!) out, float scale) -> Tensor");
  m.def(
      "quest_decode(Tensor q, Tensor k_pages, Tensor v_pages, Tensor k_max, Tensor k_min, Tensor page_table, "
      "Tensor seqlens, bool sum_reduce, int token_budget, int sink_pages, int recent_pages, Tensor(a!) out, "
      "float scale) -> Tensor");
  // An uninitialized output of q's shape and dtype from the CPU output cache (output_cache.h).
  m.def("output_like(Tensor q) -> Tensor");
  m.def(
      "paged_decode_stream_k(Tensor q, Tensor k_pages, Tensor v_pages, Tensor page_table, Tensor seqlens, "
      "Tensor? pages, Tensor? counts, Tensor(a!) out, float scale, Tensor offsets, Tensor slot_base, int workers, "
      "int tile_pages, Tensor(b!) ws_state, Tensor(c!) ws_acc) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparse_attn, CPU, m) {
  m.impl("block_sparse_attention", &sparse_attn::block_sparse_attention_cpu);
  m.impl("streaming_attention", &sparse_attn::streaming_attention_cpu);
  m.impl("vertical_slash_attention", &sparse_attn::vertical_slash_attention_cpu);
  m.impl("vertical_slash_index", &sparse_attn::vertical_slash_index_cpu);
  m.impl("paged_kv_write", &sparse_attn::paged_kv_write_cpu);
  m.impl("quest_scores", &sparse_attn::quest_scores_cpu);
  m.impl("quest_select", &sparse_attn::quest_select_cpu);
  m.impl("paged_decode_attention", &sparse_attn::paged_decode_attention_cpu);
  m.impl("paged_decode_stream_k", &sparse_attn::paged_decode_stream_k_cpu);
  m.impl("quest_decode", &sparse_attn::quest_decode_cpu);
  m.impl("output_like", &sparse_attn::cpu::cached_empty_like);
}

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "sparse_attn compiled engines (ops are registered under torch.ops.sparse_attn)";
  mod.attr("__version__") = SPARSE_ATTN_VERSION;
  mod.def(
      "release_workspace",
      [] {
        sparse_attn::cpu::release_workspace();
        sparse_attn::cpu::release_output_cache();
      },
      "free the calling thread's packed K/V workspace and the cached output buffers (both kept between "
      "calls to avoid page faults)");
  mod.def("output_cache_bytes", &sparse_attn::cpu::output_cache_bytes,
          "bytes of freed prefill outputs held for reuse (SPARSE_ATTN_OUTPUT_CACHE_MB caps them)");
  mod.def(
      "stream_k_segments",
      [](const std::vector<int64_t>& tiles_per_output, int64_t workers) {
        TORCH_CHECK_VALUE(workers >= 1, "workers must be >= 1, got ", workers);
        std::vector<int64_t> offsets(tiles_per_output.size() + 1, 0);
        for (size_t o = 0; o < tiles_per_output.size(); ++o) {
          TORCH_CHECK_VALUE(tiles_per_output[o] >= 0, "tiles_per_output[", o, "] is negative");
          offsets[o + 1] = offsets[o] + tiles_per_output[o];
        }
        std::vector<std::vector<std::tuple<int64_t, int64_t, int64_t, bool>>> out(workers);
        const int64_t n = static_cast<int64_t>(tiles_per_output.size());
        for (int64_t w = 0; w < workers; ++w)
          sparse_attn::stream_k_segments(offsets.data(), n, workers, w, [&](const sparse_attn::StreamKSegment& s) {
            out[w].emplace_back(s.output, s.tile_begin, s.tile_end, s.host);
          });
        return out;
      },
      "stream-K partition (stream_k.h): per worker, its segments (output, tile_begin, tile_end, host)");
  mod.def(
      "stream_k_slots",
      [](const std::vector<int64_t>& tiles_per_output, int64_t workers) {
        TORCH_CHECK_VALUE(workers >= 1, "workers must be >= 1, got ", workers);
        int64_t total = 0;
        for (int64_t n : tiles_per_output) {
          TORCH_CHECK_VALUE(n >= 0, "tiles_per_output holds a negative count");
          total += n;
        }
        std::vector<int64_t> slots;  // per output: how many workers its tiles span
        int64_t t = 0;
        for (int64_t n : tiles_per_output) {
          slots.push_back(n == 0 ? 0
                                 : sparse_attn::stream_k_worker_of(total, workers, t + n - 1) -
                                       sparse_attn::stream_k_worker_of(total, workers, t) + 1);
          t += n;
        }
        return slots;
      },
      "stream-K: per output, the number of partials (workers its tiles span)");
  mod.def(
      "flush_from_caches",
      [](uintptr_t addr, int64_t nbytes) {
        // For benchmarks: write back and drop every cache line of [addr, addr + nbytes) from
        // all levels, so the next call reads it from memory while code and other data stay
        // cached, as for a layer's KV cache inside a decode step. The caller passes a live
        // tensor storage's range (harness.data_evictor); clflush does not fault on it.
        // The flush runs on the intra-op thread pool: the next op then finds its worker
        // threads awake, as after the previous layer's ops in a decode step. A flush of
        // ~100 MB on one thread left them idle long enough to sleep, and waking them cost a
        // B=1 decode op ~0.1 ms that a model never pays.
        TORCH_CHECK_VALUE(nbytes >= 0, "flush_from_caches: nbytes must be >= 0, got ", nbytes);
#if defined(__x86_64__) || defined(_M_X64)
        const uintptr_t first = addr & ~uintptr_t(63), end = addr + static_cast<uintptr_t>(nbytes);
        const int64_t lines = end > first ? static_cast<int64_t>((end - first + 63) / 64) : 0;
        at::parallel_for(0, lines, 1 << 14, [&](int64_t l0, int64_t l1) {
          for (int64_t l = l0; l < l1; ++l) _mm_clflush(reinterpret_cast<const void*>(first + 64 * l));
          _mm_mfence();
        });
        return true;
#else
        return false;
#endif
      },
      pybind11::arg("addr"), pybind11::arg("nbytes"),
      "benchmarks: evict a memory range from every cache level (x86 clflush); False elsewhere");
  mod.def("cpu_kernel_isa", &sparse_attn::cpu::kernel_isa, "instruction set of the CPU kernel build in use");
  mod.def("cpu_bf16_packed_brgemm", &sparse_attn::cpu::uses_amx_bf16,
          "True if bf16 tiles run through oneDNN's packed (VNNI/AMX) brgemm on this CPU");
#ifdef SA_WITH_CUDA
  mod.def(
      "cuda_decode_max_workers",
      [](int device, const std::string& dtype, int64_t head_dim, int64_t group) {
        // Plain values, not a tensor: this module's pybind11 has no at::Tensor caster.
        TORCH_CHECK_VALUE(dtype == "bfloat16" || dtype == "float16", "cuda_decode_max_workers: dtype must be "
                          "'bfloat16' or 'float16', got '", dtype, "'");
        return sparse_attn::cuda_decode_max_workers(
            dtype == "bfloat16" ? sparse_attn::DType::kBFloat16 : sparse_attn::DType::kFloat16, head_dim, group,
            device);
      },
      pybind11::arg("device"), pybind11::arg("dtype"), pybind11::arg("head_dim"), pybind11::arg("group"),
      "CUDA paged decode: CTAs of the decode kernel resident at once on a device (the default plan_decode "
      "workers); dtype 'bfloat16' or 'float16', group = query heads per KV head");
  mod.attr("cuda_compiled") = true;
  mod.attr("cuda_archs") = SA_CUDA_ARCHS;
  mod.attr("cutlass_version") = SA_CUTLASS_VERSION;
  mod.def("cuda_device_count", &sparse_attn::cuda::device_count, "CUDA devices visible (0 without a driver)");
  mod.def("cuda_compiled_archs", &sparse_attn::cuda::compiled_archs, "archs the CUDA code was compiled for");
  mod.def(
      "cuda_smoke_selftest",
      [](int rows, int cols) {
        long long bad = -1;
        cudaError_t err = sparse_attn::cuda::tile_copy_selftest(rows, cols, &bad);
        TORCH_CHECK(err == cudaSuccess, "tile_copy_smoke_kernel: ", cudaGetErrorString(err));
        return bad;
      },
      "run the CuTe smoke kernel on the current device; returns the number of wrong elements");
#else
  mod.attr("cuda_compiled") = false;
  mod.attr("cuda_archs") = "";
  mod.attr("cutlass_version") = "";
#endif
}
