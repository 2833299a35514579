// CPU engine of decode attention over the paged KV cache: all pages or a Quest selection,
// split over the threads by fixed page chunks or by a stream-K plan (stream_k.h).
//
// Decode reads every selected K/V byte once per KV head: the query heads of a GQA group
// share each K/V row as it streams by (decode_ops.h page_step), so the kernel is bound by
// memory, not arithmetic. Scores, softmax and accumulation are float32.
// This file is compiled once per instruction set; SA_CPU_NS names the namespace.
#include <memory>
#include <vector>

#include "attention_kernel.h"
#include "decode_ops.h"
#include "sparse_attn/stream_k.h"

namespace sparse_attn::cpu::SA_CPU_NS {
namespace {

// One KV head's pages [j0, j1) of sequence b (the selection's list, or logical pages j0..)
// for the G query heads of its group: leaves G partial softmax states and unnormalized
// outputs (st, acc [G, D]). Scratch buffers belong to the calling thread.
template <typename T>
struct SegmentRunner {
  const PagedKVParams& p;
  const PageSelection* sel;
  const PagedDecodeIO& io;
  int64_t D, G, ps;
  std::vector<float> qf, kf, vf, s;

  SegmentRunner(const PagedKVParams& p_, const PageSelection* sel_, const PagedDecodeIO& io_)
      : p(p_), sel(sel_), io(io_), D(p_.head_dim), G(io_.heads_q / p_.heads_kv), ps(p_.page_size),
        qf(G * D), kf(ps * D), vf(ps * D), s(G * ps) {}

  // Pages the (b, g) output walks: the selection's count or the sequence's page count.
  int64_t pages_of(int64_t b, int64_t g) const {
    return sel ? sel->counts[b * sel->counts_stride[0] + g * sel->counts_stride[1]]
               : (p.seqlens[b] + ps - 1) / ps;
  }

  // The segment being walked (begin / step), so segments can advance in lockstep.
  int64_t b_ = 0, g_ = 0, j1_ = 0, len_ = 0, ahead_ = 1;
  const int32_t* list_ = nullptr;
  const T* qraw_ = nullptr;
  SoftmaxRowState* st_ = nullptr;
  float* acc_ = nullptr;

  // Logical page of list position j of the segment.
  int64_t logical(int64_t j) const { return list_ ? list_[j * sel->pages_stride[2]] : j; }
  const T* block(const void* base, int64_t page, int64_t t) const {
    return static_cast<const T*>(base) + page * p.page_stride[0] + t * p.page_stride[1] + g_ * p.page_stride[2];
  }

  void begin(int64_t b, int64_t g, int64_t j0, int64_t j1, SoftmaxRowState* st, float* acc) {
    const auto* Q = static_cast<const T*>(io.q);
    b_ = b, g_ = g, j1_ = j1, st_ = st, acc_ = acc;
    len_ = p.seqlens[b];
    list_ = sel ? sel->pages + b * sel->pages_stride[0] + g * sel->pages_stride[1] : nullptr;
    for (int64_t h = 0; h < G; ++h) {
      to_float(Q + b * io.q_stride[0] + (g * G + h) * io.q_stride[1], qf.data() + h * D, D);
      at::vec::map([sc = io.scale](Vec x) { return x * Vec(sc); }, qf.data() + h * D, qf.data() + h * D, D);
      st[h] = SoftmaxRowState::empty();
    }
    std::fill(acc, acc + G * D, 0.f);
    qraw_ = Q + b * io.q_stride[0] + g * G * io.q_stride[1];
    // Prefetch about 16 KB of K/V ahead (2 pages of 16 x 128 bf16, 4 of 16 x 64): one page
    // ahead left the core waiting on memory in cold steps (stream-K B=1 32k, 8 KV heads,
    // head_dim 128: 55% -> 63% of the read bandwidth); 32 KB ahead measured lower again.
    const int64_t page_bytes = 2 * ps * D * int64_t(sizeof(T));
    ahead_ = std::max<int64_t>(1, (16384 + page_bytes - 1) / page_bytes);
    for (int64_t j = j0 + 1; j < std::min(j1, j0 + ahead_); ++j) {  // the pages step()'s prefetch skips
      const int64_t page = p.page_table[b * p.table_stride + logical(j)];
      for (int64_t t = 0; t < ps; ++t) {
        prefetch_row(block(p.k_pages, page, t), D);
        prefetch_row(block(p.v_pages, page, t), D);
      }
    }
  }

  // Position j of the segment (pages are walked in increasing j).
  void step(int64_t j) {
    const int64_t lp = logical(j);
    const int64_t page = p.page_table[b_ * p.table_stride + lp];
    const int64_t ntok = std::min(ps, len_ - lp * ps);
    const T *nk = nullptr, *nv = nullptr;  // a later page, prefetched while this one runs
    if (j + ahead_ < j1_) {
      const int64_t npage = p.page_table[b_ * p.table_stride + logical(j + ahead_)];
      nk = block(p.k_pages, npage, 0);
      nv = block(p.v_pages, npage, 0);
    }
    const T* kp = block(p.k_pages, page, 0);
    const T* vp = block(p.v_pages, page, 0);
    switch (G) {
#define SA_STEP(NG)                                                                                               \
  page_step<T, NG>(kp, vp, p.page_stride[1], ntok, ps, D, G, qf.data(), qraw_, io.q_stride[1], io.scale, kf.data(), \
                   vf.data(), s.data(), acc_, st_, nk, nv)
      case 1: SA_STEP(1); break;
      case 2: SA_STEP(2); break;
      case 3: SA_STEP(3); break;  // SmolLM2 and other 3:1 GQA models
      case 4: SA_STEP(4); break;
      case 8: SA_STEP(8); break;
      default: SA_STEP(0); break;
#undef SA_STEP
    }
  }

  void run(int64_t b, int64_t g, int64_t j0, int64_t j1, SoftmaxRowState* st, float* acc) {
    begin(b, g, j0, j1, st, acc);
    for (int64_t j = j0; j < j1; ++j) step(j);
  }
};

// Merges n partial (state, acc [D]) pairs in order, normalizes, stores one output row.
template <typename T>
void merge_store(const SoftmaxRowState* states, const float* accs, int64_t n, int64_t state_step, int64_t acc_step,
                 int64_t D, T* o, float* lse, float* tmp) {
  SoftmaxRowState st = SoftmaxRowState::empty();
  std::fill(tmp, tmp + D, 0.f);
  for (int64_t c = 0; c < n; ++c) {
    const SoftmaxRowState& pc = states[c * state_step];
    if (pc.sum == 0.f) continue;
    const MergeFactors f = merge_into(st, pc);
    const float* pa = accs + c * acc_step;
    for (int64_t d = 0; d < D; ++d) tmp[d] = tmp[d] * f.a + pa[d] * f.b;
  }
  const float inv = st.inv_sum();
  for (int64_t d = 0; d < D; ++d) tmp[d] *= inv;
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(o, tmp, D * sizeof(float));
  } else {
    at::vec::convert(tmp, o, D);
  }
  *lse = st.lse();
}

// Split-KV decode with a fixed split: a work item is (sequence, KV heads, chunk of up to
// kPagesPerChunk pages), all KV heads of the chunk for a dense walk, one for a selection
// (each head has its own pages). Each item leaves per query head a partial state and an
// unnormalized output; a second pass merges a head's chunks (softmax_state.h merge_into).
constexpr int64_t kPagesPerChunk = 64;
constexpr int64_t kMinPagesPerChunk = 8;

// Pages per chunk: the longest output's pages (not the cache's capacity) cut so that the
// items are at least twice the threads, between kMinPagesPerChunk and kPagesPerChunk pages.
// parallel_for hands each thread a contiguous run of items: chunks sized from the capacity
// gave a sequence far shorter than max_pages_per_seq to the first thread alone, and at
// B=1, 8k tokens with one spare page (9 chunks, the last of one page) a 5 / 4 split.
int64_t pages_per_chunk(int64_t longest, int64_t items_per_chunk_index, int64_t threads) {
  const int64_t want = std::max<int64_t>(1, (2 * threads + items_per_chunk_index - 1) / items_per_chunk_index);
  const int64_t per = (longest + want - 1) / want;
  return std::min(kPagesPerChunk, std::max(kMinPagesPerChunk, per));
}

template <typename T>
void decode(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io) {
  const int64_t D = p.head_dim, Hkv = p.heads_kv, G = io.heads_q / Hkv;
  const int64_t head_groups = sel ? Hkv : 1;  // KV heads split across items
  const int64_t heads_per_item = sel ? 1 : Hkv;
  // The longest output's pages: a selection's largest count, else the longest sequence's.
  int64_t longest = 0;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t g = 0; g < (sel ? Hkv : 1); ++g)
      longest = std::max<int64_t>(longest, sel ? sel->counts[b * sel->counts_stride[0] + g * sel->counts_stride[1]]
                                                : (p.seqlens[b] + p.page_size - 1) / p.page_size);
  const int64_t per_chunk = pages_per_chunk(longest, p.batch * head_groups, at::get_num_threads());
  const int64_t nchunks = std::max<int64_t>(1, (longest + per_chunk - 1) / per_chunk);
  // Partials [B, H_kv, nchunks, G]: state and D outputs; chunks past a sequence stay empty.
  std::vector<SoftmaxRowState> part_state(p.batch * io.heads_q * nchunks, SoftmaxRowState::empty());
  // Outputs of empty chunks are never read (their state stays empty): no zero fill.
  std::unique_ptr<float[]> part_acc(new float[p.batch * io.heads_q * nchunks * D]);
  const int64_t items = p.batch * head_groups * nchunks;
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    SegmentRunner<T> runner(p, sel, io);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (head_groups * nchunks), hg = i / nchunks % head_groups, c = i % nchunks;
      for (int64_t g = hg * heads_per_item; g < (hg + 1) * heads_per_item; ++g) {
        const int64_t j0 = c * per_chunk, j1 = std::min(runner.pages_of(b, g), j0 + per_chunk);
        if (j0 >= j1) continue;
        const int64_t slot = ((b * Hkv + g) * nchunks + c) * G;
        runner.run(b, g, j0, j1, part_state.data() + slot, part_acc.get() + slot * D);
      }
    }
  });
  auto* O = static_cast<T*>(io.out);
  at::parallel_for(0, p.batch * io.heads_q, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp(D);
    for (int64_t r = r0; r < r1; ++r) {  // query head r = (b * H_kv + g) * G + h
      const int64_t bg = r / G, h = r % G, first = bg * nchunks * G + h;
      merge_store(part_state.data() + first, part_acc.get() + first * D, nchunks, G, G * D, D,
                  O + (r / io.heads_q) * io.o_stride[0] + (r % io.heads_q) * io.o_stride[1], io.lse + r, tmp.data());
    }
  });
}

// Stream-K decode (stream_k.h): the outputs (sequence, KV head) in order, each with
// ceil(pages / tile_pages) tiles, on one line split evenly over the plan's workers. A
// worker's segments leave partials in the plan's workspace (slot slot_base[o] + the
// worker's rank among the output's workers); after the barrier each output merges its
// partials in worker order, so results do not depend on thread timing.
template <typename T>
void decode_stream_k(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io, const StreamKPlan& plan) {
  const int64_t D = p.head_dim, Hkv = p.heads_kv, G = io.heads_q / Hkv, outputs = p.batch * Hkv;
  const int64_t total = plan.offsets[outputs];
  auto* states = reinterpret_cast<SoftmaxRowState*>(plan.ws_state);
  // A worker's consecutive segments of one sequence (its KV heads) advance in lockstep,
  // page by page, on a dense walk: the heads' blocks of a page are adjacent in the pool, so
  // the worker reads one stream instead of one per head. With 2 KB blocks (16 x 64 bf16)
  // a head-by-head walk lost a quarter of its speed: the hardware prefetcher also fetches
  // the neighbouring head's half of each 4 KB memory page, wasted unless it is read then.
  // A segment's own pages keep their order, so results do not change.
  constexpr int kLockstep = 4;
  const int group_max = sel ? 1 : kLockstep;  // selected pages of different heads are unrelated
  at::parallel_for(0, plan.workers, 1, [&](int64_t w0, int64_t w1) {
    std::vector<SegmentRunner<T>> runners;
    runners.reserve(group_max);
    for (int k = 0; k < group_max; ++k) runners.emplace_back(p, sel, io);
    struct Pending {
      int64_t b, g, j0, j1;
      SoftmaxRowState* st;
      float* acc;
    } group[kLockstep];
    int n = 0;
    auto walk = [&] {
      int64_t lo = group[0].j0, hi = group[0].j1;
      for (int k = 0; k < n; ++k) {
        runners[k].begin(group[k].b, group[k].g, group[k].j0, group[k].j1, group[k].st, group[k].acc);
        lo = std::min(lo, group[k].j0), hi = std::max(hi, group[k].j1);
      }
      for (int64_t j = lo; j < hi; ++j)
        for (int k = 0; k < n; ++k)
          if (j >= group[k].j0 && j < group[k].j1) runners[k].step(j);
      n = 0;
    };
    for (int64_t w = w0; w < w1; ++w) {
      stream_k_segments(plan.offsets, outputs, plan.workers, w, [&](const StreamKSegment& seg) {
        const int64_t b = seg.output / Hkv, g = seg.output % Hkv, npages = runners[0].pages_of(b, g);
        const int64_t rank = w - stream_k_worker_of(total, plan.workers, plan.offsets[seg.output]);
        const int64_t slot = (plan.slot_base[seg.output] + rank) * G;
        if (n > 0 && (n == group_max || group[0].b != b)) walk();
        group[n++] = {b, g, seg.tile_begin * plan.tile_pages, std::min(npages, seg.tile_end * plan.tile_pages),
                      states + slot, plan.ws_acc + slot * D};
      });
      if (n > 0) walk();
    }
  });
  auto* O = static_cast<T*>(io.out);
  at::parallel_for(0, outputs, 4, [&](int64_t o0, int64_t o1) {
    std::vector<float> tmp(D);
    for (int64_t o = o0; o < o1; ++o) {
      const int64_t nparts = plan.slot_base[o + 1] - plan.slot_base[o];  // 0 for an empty output
      for (int64_t h = 0; h < G; ++h) {
        const int64_t r = o * G + h, first = plan.slot_base[o] * G + h;
        merge_store(states + first, plan.ws_acc + first * D, nparts, G, G * D, D,
                    O + (r / io.heads_q) * io.o_stride[0] + (r % io.heads_q) * io.o_stride[1], io.lse + r, tmp.data());
      }
    }
  });
}

template <typename T> struct StreamKF {
  static void run(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io, const StreamKPlan& plan) {
    decode_stream_k<T>(p, sel, io, plan);
  }
};
template <typename T> struct DecodeF {
  static void run(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io) { decode<T>(p, sel, io); }
};

}  // namespace

void paged_decode(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io) {
  by_dtype<DecodeF>(io.dtype, p, sel, io);
}

void paged_decode_stream_k(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io,
                           const StreamKPlan& plan) {
  by_dtype<StreamKF>(io.dtype, p, sel, io, plan);
}

}  // namespace sparse_attn::cpu::SA_CPU_NS
