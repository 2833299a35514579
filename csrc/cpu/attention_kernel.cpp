// CPU engine for prefill attention over key spans (block-sparse and streaming).
//
// Flash-attention style. A work item is (batch, query block, up to 8 query heads of one
// GQA group). Each head's key spans (csrc/include/sparse_attn/key_spans.h) become a list
// of 64-key chunks; tiles of up to four chunks (adjacent or not) go through
// S = Q K^T, an online softmax per row (softmax_state.h, tile_ops.h) and O += P V, the
// products by ATen's cpublas::brgemm (AMX for bf16 where the CPU has it, AVX-512
// otherwise). The heads of an item advance round robin, so K/V chunks are reused from
// cache. K and V are packed once per call into the layout brgemm wants.
//
// This file is compiled once per instruction set; SA_CPU_NS names the namespace.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "attention_kernel.h"
#include "tile_ops.h"
#include "sparse_attn/causal.h"
#include "sparse_attn/key_spans.h"
#include "sparse_attn/softmax_state.h"

namespace sparse_attn::cpu::SA_CPU_NS {
namespace {

constexpr int64_t kChunk = 64;      // keys per packed K chunk (brgemm N for S = Q K^T)
constexpr int64_t kTileChunks = 4;  // chunks per softmax tile
constexpr int64_t kTileKeys = kTileChunks * kChunk;
constexpr int64_t kDimChunk = 128;  // head_dim columns per packed V chunk (brgemm N for P V)

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Where the key sequence for a tile comes from; one per op.
struct BlockSparseSpans {
  const BlockSparseParams& mask;
  int64_t tile_q;  // query rows per work item == mask block_q
  int64_t num_tiles(int64_t) const { return mask.num_q_blocks; }
  int64_t spans(int64_t b, int64_t h, int64_t m, int64_t key_limit, KeySpan* out) const {
    BlockRow row = BlockRow::of(mask, b, h, m);
    // Spans are not capped: the kernel walks them in 64-key chunks.
    return block_row_spans(row, mask.block_k, key_limit, INT64_MAX, out);
  }
  int64_t max_spans() const { return mask.max_count + mask.max_full_count + 1; }
  static constexpr bool kStreaming = false;
};

struct StreamingSpans {
  const StreamingParams& s;
  int64_t offset;  // seqlen_k - seqlen_q
  int64_t seqlen_k;
  int64_t tile_q;
  int64_t num_tiles(int64_t seqlen_q) const { return ceil_div(seqlen_q, tile_q); }
  int64_t spans(int64_t, int64_t, int64_t m, int64_t, KeySpan* out) const {
    int64_t p0 = m * tile_q + offset;
    int64_t p1 = p0 + tile_q;  // clipped to seqlen_k inside
    return streaming_spans(s, p0, p1, seqlen_k, kChunk, out);
  }
  int64_t max_spans() const { return 2; }
  static constexpr bool kStreaming = true;
};

// K and V of every (batch, kv head) in the layout the tile products read.
//  kVnni (bf16/fp16 with AMX): K chunk c as [D/2][64][2] (VNNI of K^T); V per head_dim
//    chunk j of width w_j as [Skpad/2][w_j][2]. Keys past seqlen_k are zero.
//  float: K chunk c as [D][64] (K^T); V read in place for fp32 inputs, else converted to
//    a contiguous float [Skpad][D] per (batch, kv head).
template <typename scalar_t, bool kVnni>
struct PackedKV {
  using pack_t = std::conditional_t<kVnni, scalar_t, float>;
  int64_t nchunks = 0, skpad = 0, D = 0;
  pack_t* k = nullptr;  // packed K of every (batch, kv head), in the thread's scratch
  pack_t* v = nullptr;  // packed or converted V; null when V is read in place
  const float* v_inplace = nullptr;  // fp32 inputs: V itself
  int64_t v_ld = 0;                  // row stride of V as read by P V
  int64_t v_head_stride[2] = {0, 0};  // batch, head strides of the V that is read

  void build(const AttentionParams& p) {
    D = p.head_dim;
    nchunks = ceil_div(p.seqlen_k, kChunk);
    skpad = nchunks * kChunk;
    const int64_t BG = p.batch * p.heads_kv;
    k = scratch<pack_t>(0, BG * skpad * D);
    constexpr bool kInplaceV = !kVnni && std::is_same_v<scalar_t, float>;
    if (kInplaceV) {
      v_inplace = static_cast<const float*>(p.v);
      v_ld = p.v_stride[1];
      v_head_stride[0] = p.v_stride[0];
      v_head_stride[1] = p.v_stride[2];
    } else {
      v = scratch<pack_t>(1, BG * skpad * D);
      v_ld = D;
      v_head_stride[0] = p.heads_kv * skpad * D;
      v_head_stride[1] = skpad * D;
    }
    const auto* K = static_cast<const scalar_t*>(p.k);
    const auto* V = static_cast<const scalar_t*>(p.v);
    // KV heads innermost: consecutive steps read neighbouring heads of the same key rows,
    // i.e. contiguous memory of a [B, S, H, D] tensor, which the prefetchers can follow
    // (head-major order read 256-byte pieces 2 KB apart and was latency-bound).
    at::parallel_for(0, BG * nchunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t it = begin; it < end; ++it) {
        const int64_t b = it / (nchunks * p.heads_kv), c = it / p.heads_kv % nchunks, g = it % p.heads_kv;
        const int64_t bg = b * p.heads_kv + g;
        const int64_t t0 = c * kChunk, nt = std::min(kChunk, p.seqlen_k - t0);
        const scalar_t* ksrc = K + b * p.k_stride[0] + g * p.k_stride[2] + t0 * p.k_stride[1];
        const scalar_t* vsrc = V + b * p.v_stride[0] + g * p.v_stride[2] + t0 * p.v_stride[1];
        pack_t* kdst = k + (bg * nchunks + c) * kChunk * D;
        pack_k_chunk(ksrc, p.k_stride[1], nt, kdst);
        if (!kInplaceV) pack_v_chunk(vsrc, p.v_stride[1], t0, nt, v + bg * skpad * D);
      }
    });
  }

  void pack_k_chunk(const scalar_t* src, int64_t ld, int64_t nt, pack_t* dst) const {
    // 16-bit rows at an odd stride or address cannot be read as 32-bit pairs.
    const bool word_aligned = sizeof(scalar_t) == 4 || (ld % 2 == 0 && reinterpret_cast<uintptr_t>(src) % 4 == 0);
    if constexpr (kVnni) {
      if (!word_aligned) {  // dst[d/2][n][d%2] = src[n][d], element by element
        for (int64_t n = 0; n < kChunk; ++n)
          for (int64_t d = 0; d < D; ++d) dst[((d / 2) * kChunk + n) * 2 + d % 2] = n < nt ? src[n * ld + d] : pack_t(0);
        return;
      }
    }
    if constexpr (sizeof(scalar_t) == sizeof(pack_t)) {
      // VNNI K^T, dst[d/2][n][d%2] = src[n][d], is a transpose of 32-bit (d, d+1) pairs;
      // fp32 K^T, dst[d][n] = src[n][d], is a transpose of 32-bit elements.
      constexpr int64_t per_word = 4 / sizeof(scalar_t);
      transpose_u32(reinterpret_cast<const uint32_t*>(src), ld / per_word, nt, D / per_word,
                    reinterpret_cast<uint32_t*>(dst), kChunk);
      for (int64_t c = 0; c < D / per_word; ++c)
        fill_zero(reinterpret_cast<uint32_t*>(dst) + c * kChunk, nt, kChunk);
    } else {  // 16-bit input computed in fp32 (no packed brgemm for it on this CPU)
      for (int64_t n = 0; n < nt; ++n)
        for (int64_t d = 0; d < D; ++d) dst[d * kChunk + n] = static_cast<float>(src[n * ld + d]);
      for (int64_t d = 0; d < D; ++d) fill_zero(dst + d * kChunk, nt, kChunk);
    }
  }

  // Keys [t0, t0 + kChunk) of one (batch, kv head); rows past nt are zero.
  void pack_v_chunk(const scalar_t* src, int64_t ld, int64_t t0, int64_t nt, pack_t* head) const {
    if constexpr (kVnni) {
      // Per head_dim chunk of width w: dst[t/2][dd][t%2] = src[t][d0 + dd]; t0 is even.
      for (int64_t d0 = 0; d0 < D; d0 += kDimChunk) {
        const int64_t w = std::min(kDimChunk, D - d0);
        pack_t* base = head + skpad * d0 + t0 * w;
        for (int64_t n = 0; n < kChunk; n += 2) {
          pack_t* o = base + n * w;
          if (n + 1 < nt) {
            interleave_u16(reinterpret_cast<const uint16_t*>(src + n * ld + d0),
                           reinterpret_cast<const uint16_t*>(src + (n + 1) * ld + d0), w,
                           reinterpret_cast<uint16_t*>(o));
          } else {  // past the end: zero rows
            for (int64_t dd = 0; dd < w; ++dd) {
              o[2 * dd] = n < nt ? src[n * ld + d0 + dd] : pack_t(0);
              o[2 * dd + 1] = pack_t(0);
            }
          }
        }
      }
    } else {
      float* out = head + t0 * D;
      for (int64_t n = 0; n < nt; ++n) at::vec::convert(src + n * ld, out + n * D, D);
      std::memset(out + nt * D, 0, sizeof(float) * (kChunk - nt) * D);
    }
  }
};

// True if every key of [k0, k1) is visible to every query row of [q0, q1).
template <typename Spans>
bool chunk_fully_visible(const Spans& spans, const CausalGeometry& geo, int64_t q0, int64_t q1, int64_t k0,
                         int64_t k1) {
  if (!geo.tile_fully_visible(q0, k1)) return false;
  if constexpr (Spans::kStreaming) {
    return k1 <= spans.s.sink_tokens || geo.key_pos(q1 - 1) - k0 < spans.s.window_tokens;
  }
  return true;
}

// Visible keys of one query row inside a tile: at most two intervals (sink + window).
struct RowIntervals {
  int64_t a0, a1, b0, b1;  // [a0, a1) U [b0, b1), relative to the tile start; empty if x0 >= x1
};

template <typename Spans>
RowIntervals row_intervals(const Spans& spans, const CausalGeometry& geo, int64_t q_row,
                           int64_t t0, int64_t t1) {
  int64_t hi = std::min(t1, geo.key_end(q_row));
  if constexpr (Spans::kStreaming) {
    const int64_t p = geo.key_pos(q_row);
    int64_t s_end = std::min(hi, spans.s.sink_tokens);
    int64_t w_start = std::max(t0, p - spans.s.window_tokens + 1);
    if (spans.s.window_tokens <= 0) w_start = hi;
    if (s_end >= w_start) return {0, std::max(hi - t0, int64_t(0)), 0, 0};  // they touch
    return {0, std::max(s_end - t0, int64_t(0)), w_start - t0, hi - t0};
  } else {
    return {0, std::max(hi - t0, int64_t(0)), 0, 0};
  }
}

// Online softmax of one tile: S holds rows x (nc * 64) raw scores for the chunks starting
// at chunk[0..nc); writes P (= S itself in the fp32 path; row r is read before written),
// rescales acc where a row's running max grows, and updates the row states.
template <typename Spans, typename pack_t>
void softmax_tile(const Spans& spans, const CausalGeometry& geo, float scale, int64_t q0, int64_t rows,
                  int64_t seqlen_k, const int64_t* chunk, int64_t nc, const float* S, pack_t* P, float* acc,
                  int64_t D, SoftmaxRowState* state) {
  auto rescale = [&](int64_t r, float tile_max) {
    const float factor = state[r].rescale_to(tile_max);
    if (factor != 1.f) {
      float* a = acc + r * D;
      at::vec::map([factor](Vec x) { return x * Vec(factor); }, a, a, D);
    }
  };
  // Fast path: every key of every chunk is visible to every row (no causal edge, no
  // window edge, no sequence end), so each row is one contiguous run of scores.
  bool all_visible = true;
  for (int64_t c = 0; c < nc; ++c)
    all_visible = all_visible && chunk_fully_visible(spans, geo, q0, q0 + rows, chunk[c], chunk[c] + kChunk);
  if (all_visible) {
    const int64_t width = nc * kChunk;
    for (int64_t r = 0; r < rows; ++r) {
      const float* s = S + r * kTileKeys;
      pack_t* prow = P + r * kTileKeys;
      rescale(r, row_max(s, 0, width, -INFINITY) * scale);
      state[r].add_sum(exp_store(s, 0, width, scale, state[r].max, prow));
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = S + r * kTileKeys;
    pack_t* prow = P + r * kTileKeys;
    RowIntervals iv[kTileChunks];
    float raw = -INFINITY;
    for (int64_t c = 0; c < nc; ++c) {
      iv[c] = row_intervals(spans, geo, q0 + r, chunk[c], std::min(chunk[c] + kChunk, seqlen_k));
      const int64_t o = c * kChunk;
      if (iv[c].a1 > iv[c].a0) raw = row_max(s, o + iv[c].a0, o + iv[c].a1, raw);
      if (iv[c].b1 > iv[c].b0) raw = row_max(s, o + iv[c].b0, o + iv[c].b1, raw);
    }
    if (raw == -INFINITY) {  // nothing visible in this tile for this row
      fill_zero(prow, 0, nc * kChunk);
      continue;
    }
    rescale(r, raw * scale);
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

// Per-thread state of the query heads one work item handles together.
template <typename pack_t>
struct HeadTile {
  AlignedBuffer<float> acc, qf;
  std::vector<SoftmaxRowState> state;
  std::vector<int64_t> chunks;  // this head's 64-key chunk starts, ascending
  int64_t nchunks = 0, cursor = 0, h = 0;
  const pack_t* qa = nullptr;
  int64_t lda = 0;
};

template <typename scalar_t, bool kVnni, typename Spans>
void run_attention(const AttentionParams& p, const Spans& spans) {
  using pack_t = typename PackedKV<scalar_t, kVnni>::pack_t;
  PackedKV<scalar_t, kVnni> kv;
  kv.build(p);

  const int64_t D = p.head_dim, BQ = spans.tile_q;
  const int64_t group = p.heads_q / p.heads_kv;
  // The query heads of a GQA group share K/V: an item takes up to kMaxHeads of them and
  // advances them together through the keys, so a K/V chunk is read from memory about
  // once and reused from cache by the other heads (with 64-row tiles, streaming K/V once
  // per head would make the tile products bandwidth-bound).
  constexpr int64_t kMaxHeads = 8;
  const int64_t heads_per_item = std::min(group, kMaxHeads);
  const int64_t head_blocks = ceil_div(group, heads_per_item);
  const int64_t mtiles = spans.num_tiles(p.seqlen_q);
  const int64_t per_m = p.batch * p.heads_kv * head_blocks;
  const int64_t total = per_m * mtiles;
  const CausalGeometry geo{p.seqlen_q, p.seqlen_k, p.causal};
  const auto* Q = static_cast<const scalar_t*>(p.q);
  auto* O = static_cast<scalar_t*>(p.out);
  constexpr bool kInplaceQ = kVnni || std::is_same_v<scalar_t, float>;

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
    }
    std::vector<KeySpan> span_buf(spans.max_spans());

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
      const int64_t key_limit = std::min(p.seqlen_k, ceil_div(geo.key_end(q0 + rows - 1), kChunk) * kChunk);

      // Per head: query tile, cleared state, and its ascending list of 64-key chunks.
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
        std::fill(ht.acc.data(), ht.acc.data() + rows * D, 0.f);
        std::fill(ht.state.begin(), ht.state.begin() + rows, SoftmaxRowState::empty());
        const int64_t nspans = spans.spans(b, ht.h, m, key_limit, span_buf.data());
        ht.nchunks = 0;
        ht.cursor = 0;
        for (int64_t si = 0; si < nspans; ++si)
          for (int64_t c0 = span_buf[si].start; c0 < span_buf[si].end; c0 += kChunk)
            if (!geo.tile_empty(q0 + rows, c0) && ht.nchunks < kv.nchunks) ht.chunks[ht.nchunks++] = c0;
      }
      // A softmax tile: up to kTileChunks chunks of one head, wherever they lie, so
      // scattered 64-key blocks still share the per-tile bookkeeping; adjacent chunks
      // share one P V product.
      auto tile = [&](HeadTile<pack_t>& ht, const int64_t* chunk, int64_t nc) {
        // S = Q K^T, one brgemm per 64-key chunk (N = 64, K = D).
        for (int64_t c = 0; c < nc; ++c)
          at::native::cpublas::brgemm(rows, kChunk, D, ht.lda, kChunk, kTileKeys, false, ht.qa,
                                      kbase + chunk[c] * D, S.data() + c * kChunk, kVnni);
        softmax_tile(spans, geo, p.scale, q0, rows, p.seqlen_k, chunk, nc, S.data(),
                     kVnni ? P.data() : reinterpret_cast<pack_t*>(S.data()), ht.acc.data(), D, ht.state.data());
        // O += P V, one product per run of adjacent chunks.
        for (int64_t c = 0; c < nc;) {
          int64_t e = c + 1;
          while (e < nc && chunk[e] == chunk[e - 1] + kChunk) ++e;
          const int64_t t0 = chunk[c];
          if constexpr (kVnni) {  // packed V is zero past seqlen_k: whole chunks are safe
            for (int64_t d0 = 0; d0 < D; d0 += kDimChunk) {
              const int64_t w = std::min(kDimChunk, D - d0);
              at::native::cpublas::brgemm(rows, w, (e - c) * kChunk, kTileKeys, w, D, true,
                                          P.data() + c * kChunk, vhead + kv.skpad * d0 + t0 * w,
                                          ht.acc.data() + d0, true);
            }
          } else {  // plain V may be the caller's tensor: never read past seqlen_k
            const int64_t keys = std::min(chunk[e - 1] + kChunk, p.seqlen_k) - t0;
            at::native::cpublas::brgemm(rows, D, keys, kTileKeys, kv.v_ld, D, true, S.data() + c * kChunk,
                                        vplain + t0 * kv.v_ld, ht.acc.data(), false);
          }
          c = e;
        }
      };

      // Round robin over the heads, a full tile of each head's next chunks at a time: the
      // heads move through the keys at about the same pace, so a K/V chunk one head
      // loads is still in cache when the others reach it.
      for (bool left = true; left;) {
        left = false;
        for (int64_t j = 0; j < nh; ++j) {
          HeadTile<pack_t>& ht = heads[j];
          // Chunks that need an element mask (causal diagonal, window edge, sequence end)
          // go in tiles of their own, so the other tiles take the unmasked fast path.
          int64_t nc = 0;
          while (nc < kTileChunks && ht.cursor + nc < ht.nchunks) {
            const int64_t c0 = ht.chunks[ht.cursor + nc];
            const bool edge = !chunk_fully_visible(spans, geo, q0, q0 + rows, c0, c0 + kChunk);
            if (edge && nc > 0) break;
            ++nc;
            if (edge) break;
          }
          if (nc == 0) continue;
          tile(ht, ht.chunks.data() + ht.cursor, nc);
          ht.cursor += nc;
          left = left || ht.cursor < ht.nchunks;
        }
      }
      // Normalize and store.
      for (int64_t j = 0; j < nh; ++j) {
        HeadTile<pack_t>& ht = heads[j];
        for (int64_t r = 0; r < rows; ++r) {
          const float inv = ht.state[r].inv_sum();
          scalar_t* o = O + b * p.o_stride[0] + ht.h * p.o_stride[2] + (q0 + r) * p.o_stride[1];
          float* a = ht.acc.data() + r * D;
          at::vec::map([inv](Vec x) { return x * Vec(inv); }, a, a, D);
          at::vec::convert(a, o, D);
          p.lse[(b * p.heads_q + ht.h) * p.seqlen_q + q0 + r] = ht.state[r].lse();
        }
      }
    }
    if (kVnni) at::native::cpublas::brgemm_release(true);
  });
}

template <typename Spans>
void dispatch_dtype(const AttentionParams& p, const Spans& spans) {
  // bf16/fp16 use the VNNI (AMX) path where oneDNN can pack for it; otherwise tiles are
  // computed in fp32 from converted copies.
  switch (p.dtype) {
    case DType::kFloat32:
      return run_attention<float, false>(p, spans);
    case DType::kBFloat16:
      if (at::native::cpublas::could_pack(at::kBFloat16)) return run_attention<c10::BFloat16, true>(p, spans);
      return run_attention<c10::BFloat16, false>(p, spans);
    case DType::kFloat16:
      if (at::native::cpublas::could_pack(at::kHalf)) return run_attention<c10::Half, true>(p, spans);
      return run_attention<c10::Half, false>(p, spans);
  }
}

}  // namespace

void block_sparse_forward(const AttentionParams& p, const BlockSparseParams& mask) {
  dispatch_dtype(p, BlockSparseSpans{mask, mask.block_q});
}

void release_workspace() {
  for (int i = 0; i < 2; ++i) scratch_buffers()[i] = AlignedBuffer<char>();
}

void streaming_forward(const AttentionParams& p, const StreamingParams& s) {
  dispatch_dtype(p, StreamingSpans{s, p.seqlen_k - p.seqlen_q, p.seqlen_k, /*tile_q=*/64});
}

}  // namespace sparse_attn::cpu::SA_CPU_NS
