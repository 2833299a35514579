// The CPU prefill tile loop shared by every prefill op (block-sparse, streaming,
// vertical-slash). Flash-attention style:
//  - a work item is (batch, query tile, up to 8 query heads of one GQA group);
//  - each head's keys come from the op's policy as key spans (walked in 64-key chunks of
//    the packed K/V, packing.h) plus, for vertical-slash, gathered single key columns;
//  - tiles of up to four chunks go through S = Q K^T, an online softmax per row
//    (softmax_state.h, tile_ops.h) and O += P V, the products by ATen's cpublas::brgemm
//    (AMX for bf16 where the CPU has it, AVX-512 otherwise);
//  - the heads of an item advance round robin, so a K/V chunk one head loads is still in
//    cache when the others reach it.
//
// A policy describes one op:
//   int64_t tile_q;                               query rows per work item
//   int64_t num_tiles(int64_t seqlen_q) const;
//   int64_t max_spans() const;  int64_t max_columns() const;
//   static constexpr MaskKind kMask;
//   int64_t plan(b, h, m, key_limit, KeySpan* spans, int64_t* nspans, int32_t* cols) const
//       the head's spans (ascending, disjoint) and its gathered columns (ascending, not in
//       any span); returns the number of columns
//   kStreaming: const StreamingParams& s;
//   kBits: uint64_t span_bits(b, h, p, k0) const;  bool chunk_full(b, h, p0, p1, k0) const;
//       the element mask inside spans for row p and keys k0..k0+63 before the causal and
//       sequence-end mask, and whether it is all ones for key positions [p0, p1)
#pragma once
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "packing.h"
#include "sparse_attn/causal.h"
#include "sparse_attn/key_spans.h"
#include "sparse_attn/softmax_state.h"
#include "tile_ops.h"

namespace sparse_attn::cpu::SA_CPU_NS {

enum class MaskKind { kCausal, kStreaming, kBits };

constexpr int64_t kTileChunks = 4;  // chunks per softmax tile
constexpr int64_t kTileKeys = kTileChunks * kChunk;

// Visible keys of one query row inside a chunk for the interval policies: at most two
// intervals (sink + window), relative to the chunk start; empty if x0 >= x1.
struct RowIntervals {
  int64_t a0, a1, b0, b1;
};

template <typename Policy>
RowIntervals row_intervals(const Policy& pol, const CausalGeometry& geo, int64_t q_row, int64_t t0, int64_t t1) {
  const int64_t hi = std::min(t1, geo.key_end(q_row));
  if constexpr (Policy::kMask == MaskKind::kStreaming) {
    const int64_t p = geo.key_pos(q_row);
    const int64_t s_end = std::min(hi, pol.s.sink_tokens);
    int64_t w_start = std::max(t0, p - pol.s.window_tokens + 1);
    if (pol.s.window_tokens <= 0) w_start = hi;
    if (s_end >= w_start) return {0, std::max(hi - t0, int64_t(0)), 0, 0};  // they touch
    return {0, std::max(s_end - t0, int64_t(0)), w_start - t0, hi - t0};
  } else {
    return {0, std::max(hi - t0, int64_t(0)), 0, 0};
  }
}

// True if every key of the chunk at k0 is visible to every row of [q0, q1).
template <typename Policy>
bool chunk_fully_visible(const Policy& pol, const CausalGeometry& geo, int64_t b, int64_t h, int64_t q0,
                         int64_t q1, int64_t k0) {
  const int64_t k1 = k0 + kChunk;
  if (!geo.tile_fully_visible(q0, k1)) return false;
  if constexpr (Policy::kMask == MaskKind::kStreaming) {
    return streaming_chunk_full(pol.s, geo.key_pos(q1 - 1), k0, k1);
  } else if constexpr (Policy::kMask == MaskKind::kBits) {
    return pol.chunk_full(b, h, geo.key_pos(q0), geo.key_pos(q1 - 1) + 1, k0);
  }
  return true;
}

// Where the running max of row r grows, rescale its accumulated output. acc is null while
// the head's output is not written yet (its first P V product overwrites it, see HeadTile).
inline void rescale_row(SoftmaxRowState& st, float tile_max, float* acc, int64_t r, int64_t D) {
  const float factor = st.rescale_to(tile_max);
  if (factor != 1.f && acc != nullptr)
    at::vec::map([factor](Vec x) { return x * Vec(factor); }, acc + r * D, acc + r * D, D);
}

// Online softmax of a tile of rows x (nc * 64) raw scores S (row stride kTileKeys): writes
// P (may be S itself; row r is read before written), rescales acc, updates the states.
// All keys visible: each row is one contiguous run.
template <typename pack_t>
void softmax_tile_full(const float* S, pack_t* P, int64_t rows, int64_t nc, float scale, float* acc, int64_t D,
                       SoftmaxRowState* state) {
  const int64_t width = nc * kChunk;
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = S + r * kTileKeys;
    rescale_row(state[r], row_max(s, 0, width, -INFINITY) * scale, acc, r, D);
    state[r].add_sum(exp_store(s, 0, width, scale, state[r].max, P + r * kTileKeys));
  }
}

// Element mask as intervals per (row, chunk) (causal, sink + window, sequence end).
template <typename Policy, typename pack_t>
void softmax_tile_intervals(const Policy& pol, const CausalGeometry& geo, int64_t q0, int64_t seqlen_k,
                            const int64_t* chunk, const float* S, pack_t* P, int64_t rows, int64_t nc, float scale,
                            float* acc, int64_t D, SoftmaxRowState* state) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = S + r * kTileKeys;
    pack_t* prow = P + r * kTileKeys;
    RowIntervals iv[kTileChunks];
    float raw = -INFINITY;
    for (int64_t c = 0; c < nc; ++c) {
      iv[c] = row_intervals(pol, geo, q0 + r, chunk[c], std::min(chunk[c] + kChunk, seqlen_k));
      const int64_t o = c * kChunk;
      if (iv[c].a1 > iv[c].a0) raw = row_max(s, o + iv[c].a0, o + iv[c].a1, raw);
      if (iv[c].b1 > iv[c].b0) raw = row_max(s, o + iv[c].b0, o + iv[c].b1, raw);
    }
    if (raw == -INFINITY) {  // nothing visible in this tile for this row
      fill_zero(prow, 0, nc * kChunk);
      continue;
    }
    rescale_row(state[r], raw * scale, acc, r, D);
    const float mx = state[r].max;
    float sum = 0.f;
    for (int64_t c = 0; c < nc; ++c) {  // exp on the visible intervals, exact zeros elsewhere
      const int64_t o = c * kChunk;
      const RowIntervals& v = iv[c];
      fill_zero(prow, o, o + v.a0);
      sum += exp_store(s, o + v.a0, o + v.a1, scale, mx, prow);
      if (v.b1 > v.b0) {
        fill_zero(prow, o + v.a1, o + v.b0);
        sum += exp_store(s, o + v.b0, o + v.b1, scale, mx, prow);
        fill_zero(prow, o + v.b1, o + kChunk);
      } else {
        fill_zero(prow, o + v.a1, o + kChunk);
      }
    }
    state[r].add_sum(sum);
  }
}

// Element mask as 64-bit words per (row, chunk): bits_of(r, c).
template <typename pack_t, typename BitsFn>
void softmax_tile_bits(const float* S, pack_t* P, int64_t rows, int64_t nc, float scale, float* acc, int64_t D,
                       SoftmaxRowState* state, const BitsFn& bits_of) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = S + r * kTileKeys;
    pack_t* prow = P + r * kTileKeys;
    uint64_t bits[kTileChunks], any = 0;
    for (int64_t c = 0; c < nc; ++c) any |= bits[c] = bits_of(r, c);
    if (any == 0) {  // nothing visible in this tile for this row
      fill_zero(prow, 0, nc * kChunk);
      continue;
    }
    rescale_row(state[r], row_max_bits(s, bits, nc, -INFINITY) * scale, acc, r, D);
    state[r].add_sum(exp_store_bits(s, bits, nc, scale, state[r].max, prow));
  }
}

// Per-thread state of one query head of a work item. acc is not cleared per item: the
// head's first P V product overwrites it (brgemm without accumulation) and acc_live says
// whether that has happened; clearing 32 KB per head and tile was ~2% of a 10%-dense prefill.
template <typename pack_t>
struct HeadTile {
  AlignedBuffer<float> acc, qf;
  bool acc_live = false;
  std::vector<SoftmaxRowState> state;
  std::vector<int64_t> chunks;  // this head's 64-key chunk starts, ascending
  std::vector<int32_t> cols;    // this head's gathered key columns, ascending
  int64_t nchunks = 0, cursor = 0, ncols = 0, col_cursor = 0, h = 0;
  const pack_t* qa = nullptr;
  int64_t lda = 0;
};

template <typename scalar_t, bool kVnni, typename Policy>
void run_prefill(const AttentionParams& p, const Policy& pol) {
  using KV = PackedKV<scalar_t, kVnni>;
  using pack_t = typename KV::pack_t;
  KV kv;
  kv.build(p);

  const int64_t D = p.head_dim, BQ = pol.tile_q;
  const int64_t group = p.heads_q / p.heads_kv;
  // The query heads of a GQA group share K/V: an item takes up to kMaxHeads of them and
  // advances them together through the keys, so a K/V chunk is read from memory about
  // once and reused from cache by the other heads (with 64-row tiles, streaming K/V once
  // per head would make the tile products bandwidth-bound).
  constexpr int64_t kMaxHeads = 8;
  const int64_t heads_per_item = std::min(group, kMaxHeads);
  const int64_t head_blocks = ceil_div(group, heads_per_item);
  const int64_t mtiles = pol.num_tiles(p.seqlen_q);
  const int64_t per_m = p.batch * p.heads_kv * head_blocks;
  const int64_t total = per_m * mtiles;
  const CausalGeometry geo{p.seqlen_q, p.seqlen_k, p.causal};
  const auto* Q = static_cast<const scalar_t*>(p.q);
  const auto* K = static_cast<const scalar_t*>(p.k);
  const auto* V = static_cast<const scalar_t*>(p.v);
  auto* O = static_cast<scalar_t*>(p.out);
  constexpr bool kInplaceQ = kVnni || std::is_same_v<scalar_t, float>;
  const int64_t max_cols = pol.max_columns();

  // Items are handed out dynamically, last query tiles first: under a causal mask they
  // have the most keys, so the long ones start early and the short ones fill the tail.
  std::atomic<int64_t> next{0};
  const int nthreads = at::get_num_threads();
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    AlignedBuffer<float> S(BQ * kTileKeys);
    AlignedBuffer<pack_t> P(kVnni ? BQ * kTileKeys : 0);
    std::vector<HeadTile<pack_t>> heads(heads_per_item);
    for (auto& ht : heads) {
      ht.acc.reserve(BQ * D);
      if (!kInplaceQ) ht.qf.reserve(BQ * D);
      ht.state.resize(BQ);
      ht.chunks.resize(kv.nchunks + 1);
      ht.cols.resize(max_cols);
    }
    std::vector<KeySpan> span_buf(pol.max_spans());
    // Gathered columns of one column tile: the rows as read, then packed like chunks.
    AlignedBuffer<scalar_t> gathered(max_cols > 0 ? kTileKeys * D : 0);
    AlignedBuffer<pack_t> col_k(max_cols > 0 ? kTileKeys * D : 0), col_v(max_cols > 0 ? kTileKeys * D : 0);

    for (int64_t item = next++; item < total; item = next++) {
      const int64_t m = mtiles - 1 - item / per_m;
      const int64_t rest = item % per_m;
      const int64_t b = rest / (p.heads_kv * head_blocks);
      const int64_t g = rest / head_blocks % p.heads_kv;
      const int64_t h0 = g * group + rest % head_blocks * heads_per_item;
      const int64_t nh = std::min(heads_per_item, g * group + group - h0);
      const int64_t q0 = m * BQ, rows = std::min(BQ, p.seqlen_q - q0);
      if (rows <= 0) continue;
      const int64_t bg = b * p.heads_kv + g;
      const pack_t* kbase = kv.k + bg * kv.nchunks * kChunk * D;
      const pack_t* vhead = nullptr;  // packed V (kVnni)
      const float* vplain = nullptr;   // row-major float V: the caller's or a converted copy
      if constexpr (kVnni) {
        vhead = kv.v + bg * kv.skpad * D;
      } else {
        vplain = kv.v_inplace ? kv.v_inplace + b * kv.v_head_stride[0] + g * kv.v_head_stride[1]
                              : kv.v + bg * kv.skpad * D;
      }
      // Keys past the tile's last visible key are never needed (rounded up to a chunk).
      const int64_t key_end = geo.key_end(q0 + rows - 1);
      const int64_t key_limit = std::min(p.seqlen_k, ceil_div(key_end, kChunk) * kChunk);

      // Per head: query tile, cleared state, its ascending 64-key chunks and columns.
      for (int64_t j = 0; j < nh; ++j) {
        HeadTile<pack_t>& ht = heads[j];
        ht.h = h0 + j;
        const scalar_t* qsrc = Q + b * p.q_stride[0] + ht.h * p.q_stride[2] + q0 * p.q_stride[1];
        if constexpr (kInplaceQ) {  // read in place (lda = seq stride)
          ht.qa = reinterpret_cast<const pack_t*>(qsrc);
          ht.lda = p.q_stride[1];
        } else {
          for (int64_t r = 0; r < rows; ++r) at::vec::convert(qsrc + r * p.q_stride[1], ht.qf.data() + r * D, D);
          ht.qa = reinterpret_cast<const pack_t*>(ht.qf.data());
          ht.lda = D;
        }
        ht.acc_live = false;
        std::fill(ht.state.begin(), ht.state.begin() + rows, SoftmaxRowState::empty());
        int64_t nspans = 0;
        ht.ncols = pol.plan(b, ht.h, m, key_limit, span_buf.data(), &nspans, ht.cols.data());
        ht.nchunks = ht.cursor = ht.col_cursor = 0;
        for (int64_t si = 0; si < nspans; ++si)
          for (int64_t c0 = span_buf[si].start; c0 < span_buf[si].end; c0 += kChunk)
            if (!geo.tile_empty(q0 + rows, c0) && ht.nchunks < kv.nchunks) ht.chunks[ht.nchunks++] = c0;
      }

      // O += P V for keys [0, nkeys) of the P tile, V given as packed (vnni, skpad rows
      // from `vbase`, at key t0) or as float rows (ld).
      auto pv = [&](HeadTile<pack_t>& ht, int64_t pcol, const pack_t* vbase, int64_t skpad, int64_t t0,
                    int64_t nkeys, const float* vrows, int64_t ld) {
        const bool add = ht.acc_live;  // the head's first product overwrites acc
        if constexpr (kVnni) {  // packed V is zero past its end: whole chunks are safe
          for (int64_t d0 = 0; d0 < D; d0 += kDimChunk) {
            const int64_t w = std::min(kDimChunk, D - d0);
            at::native::cpublas::brgemm(rows, w, ceil_div(nkeys, kChunk) * kChunk, kTileKeys, w, D, add,
                                        P.data() + pcol, vbase + skpad * d0 + t0 * w, ht.acc.data() + d0, true);
          }
        } else {  // plain V may be the caller's tensor: never read past its end
          at::native::cpublas::brgemm(rows, D, nkeys, kTileKeys, ld, D, add, S.data() + pcol, vrows, ht.acc.data(),
                                      false);
        }
        ht.acc_live = true;
      };
      auto live_acc = [](HeadTile<pack_t>& ht) { return ht.acc_live ? ht.acc.data() : nullptr; };
      // A range tile: up to kTileChunks chunks of one head, wherever they lie; adjacent
      // chunks share one P V product.
      auto range_tile = [&](HeadTile<pack_t>& ht, const int64_t* chunk, int64_t nc) {
        for (int64_t c = 0; c < nc; ++c)  // S = Q K^T, one brgemm per chunk (N = 64, K = D)
          at::native::cpublas::brgemm(rows, kChunk, D, ht.lda, kChunk, kTileKeys, false, ht.qa,
                                      kbase + chunk[c] * D, S.data() + c * kChunk, kVnni);
        pack_t* Pt = kVnni ? P.data() : reinterpret_cast<pack_t*>(S.data());
        bool full = true;
        for (int64_t c = 0; c < nc; ++c) full = full && chunk_fully_visible(pol, geo, b, ht.h, q0, q0 + rows, chunk[c]);
        if (full) {
          softmax_tile_full(S.data(), Pt, rows, nc, p.scale, live_acc(ht), D, ht.state.data());
        } else if constexpr (Policy::kMask == MaskKind::kBits) {
          softmax_tile_bits(S.data(), Pt, rows, nc, p.scale, live_acc(ht), D, ht.state.data(),
                            [&](int64_t r, int64_t c) {
                              const int64_t k0 = chunk[c], pos = geo.key_pos(q0 + r);
                              return pol.span_bits(b, ht.h, pos, k0) & low_bits(geo.key_end(q0 + r) - k0);
                            });
        } else {
          softmax_tile_intervals(pol, geo, q0, p.seqlen_k, chunk, S.data(), Pt, rows, nc, p.scale, live_acc(ht), D,
                                 ht.state.data());
        }
        for (int64_t c = 0; c < nc;) {
          int64_t e = c + 1;
          while (e < nc && chunk[e] == chunk[e - 1] + kChunk) ++e;
          const int64_t t0 = chunk[c], nkeys = std::min(chunk[e - 1] + kChunk, p.seqlen_k) - t0;
          pv(ht, c * kChunk, vhead, kv.skpad, t0, nkeys, vplain + (kVnni ? 0 : t0 * kv.v_ld), kv.v_ld);
          c = e;
        }
      };
      // A column tile: up to kTileKeys gathered key columns of one head.
      auto column_tile = [&](HeadTile<pack_t>& ht, const int32_t* col, int64_t ncol) {
        using Packer = ChunkPacker<scalar_t, kVnni>;
        const scalar_t* kh = K + b * p.k_stride[0] + g * p.k_stride[2];
        const scalar_t* vh = V + b * p.v_stride[0] + g * p.v_stride[2];
        const int64_t nc = ceil_div(ncol, kChunk);
        for (int64_t t = 0; t < ncol; ++t)
          std::memcpy(gathered.data() + t * D, kh + col[t] * p.k_stride[1], D * sizeof(scalar_t));
        for (int64_t c = 0; c < nc; ++c)
          Packer::k_chunk(gathered.data() + c * kChunk * D, D, std::min(kChunk, ncol - c * kChunk), D,
                          col_k.data() + c * kChunk * D);
        for (int64_t t = 0; t < ncol; ++t)
          std::memcpy(gathered.data() + t * D, vh + col[t] * p.v_stride[1], D * sizeof(scalar_t));
        for (int64_t c = 0; c < nc; ++c)
          Packer::v_chunk(gathered.data() + c * kChunk * D, D, c * kChunk, std::min(kChunk, ncol - c * kChunk), D,
                          kTileKeys, col_v.data());
        for (int64_t c = 0; c < nc; ++c)
          at::native::cpublas::brgemm(rows, kChunk, D, ht.lda, kChunk, kTileKeys, false, ht.qa,
                                      col_k.data() + c * kChunk * D, S.data() + c * kChunk, kVnni);
        pack_t* Pt = kVnni ? P.data() : reinterpret_cast<pack_t*>(S.data());
        // Columns ascending: row r sees those up to its key position (all if not causal).
        int64_t seen = 0;
        auto visible = [&](int64_t r) {
          const int64_t end = geo.key_end(q0 + r);
          while (seen < ncol && col[seen] < end) ++seen;
          return seen;
        };
        if (visible(0) == ncol && ncol == nc * kChunk) {
          softmax_tile_full(S.data(), Pt, rows, nc, p.scale, live_acc(ht), D, ht.state.data());
        } else {
          softmax_tile_bits(S.data(), Pt, rows, nc, p.scale, live_acc(ht), D, ht.state.data(),
                            [&](int64_t r, int64_t c) { return low_bits(visible(r) - c * kChunk); });
        }
        pv(ht, 0, col_v.data(), kTileKeys, 0, ncol, reinterpret_cast<const float*>(col_v.data()), D);
      };

      // Round robin over the heads, a full tile of each head's next chunks at a time: the
      // heads move through the keys at about the same pace, so a K/V chunk one head
      // loads is still in cache when the others reach it. Then the gathered columns.
      for (bool left = true; left;) {
        left = false;
        for (int64_t j = 0; j < nh; ++j) {
          HeadTile<pack_t>& ht = heads[j];
          if (ht.cursor < ht.nchunks) {
            // With interval masks, chunks that need an element mask (causal diagonal,
            // window edge, sequence end) go in tiles of their own, so the other tiles take
            // the unmasked fast path. The bit-mask path costs the same for any mix of
            // chunks (and with vertical-slash most chunks are masked): full tiles.
            int64_t nc = 0;
            while (nc < kTileChunks && ht.cursor + nc < ht.nchunks) {
              const int64_t c0 = ht.chunks[ht.cursor + nc];
              const bool edge = Policy::kMask != MaskKind::kBits &&
                                !chunk_fully_visible(pol, geo, b, ht.h, q0, q0 + rows, c0);
              if (edge && nc > 0) break;
              ++nc;
              if (edge) break;
            }
            range_tile(ht, ht.chunks.data() + ht.cursor, nc);
            ht.cursor += nc;
          } else if (ht.col_cursor < ht.ncols) {
            const int64_t n = std::min(kTileKeys, ht.ncols - ht.col_cursor);
            column_tile(ht, ht.cols.data() + ht.col_cursor, n);
            ht.col_cursor += n;
          }
          left = left || ht.cursor < ht.nchunks || ht.col_cursor < ht.ncols;
        }
      }
      // Normalize and store.
      for (int64_t j = 0; j < nh; ++j) {
        HeadTile<pack_t>& ht = heads[j];
        if (!ht.acc_live) std::fill(ht.acc.data(), ht.acc.data() + rows * D, 0.f);  // no key at all
        for (int64_t r = 0; r < rows; ++r) {
          scalar_t* o = O + b * p.o_stride[0] + ht.h * p.o_stride[2] + (q0 + r) * p.o_stride[1];
          store_row_scaled(ht.acc.data() + r * D, ht.state[r].inv_sum(), o, D);
        }
        store_lse(ht.state.data(), rows, p.lse + (b * p.heads_q + ht.h) * p.seqlen_q + q0);
      }
      store_fence();
    }
    if (kVnni) at::native::cpublas::brgemm_release(true);
  });
}

template <typename Policy>
void run_prefill_dispatch(const AttentionParams& p, const Policy& pol) {
  // bf16/fp16 use the VNNI (AMX) path where oneDNN can pack for it; otherwise tiles are
  // computed in fp32 from converted copies.
  switch (p.dtype) {
    case DType::kFloat32:
      return run_prefill<float, false>(p, pol);
    case DType::kBFloat16:
      if (at::native::cpublas::could_pack(at::kBFloat16)) return run_prefill<c10::BFloat16, true>(p, pol);
      return run_prefill<c10::BFloat16, false>(p, pol);
    case DType::kFloat16:
      if (at::native::cpublas::could_pack(at::kHalf)) return run_prefill<c10::Half, true>(p, pol);
      return run_prefill<c10::Half, false>(p, pol);
  }
}

}  // namespace sparse_attn::cpu::SA_CPU_NS
