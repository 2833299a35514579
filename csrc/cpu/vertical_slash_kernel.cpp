// CPU engine of vertical-slash prefill attention and of its index conversion.
//
// The attention runs the shared tile loop (prefill_loop.h) with 64-row query tiles. Per
// (tile, head) the keys are the 64-key blocks that some diagonal crosses inside the tile
// (VSBits::key_blocks), walked as spans with the exact element mask from the head's bitsets,
// plus the columns outside those blocks (vs_columns), gathered and masked causally. Any
// tiling gives the same result, so the kernel uses the finest one whatever block size the
// caller uses for vertical_slash_index.
// This file is compiled once per instruction set; SA_CPU_NS names the namespace.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "attention_kernel.h"
#include "prefill_loop.h"
#include "sparse_attn/vertical_slash.h"

namespace sparse_attn::cpu::SA_CPU_NS {
namespace {

struct VerticalSlashPolicy {
  const VerticalSlashParams& vs;
  const uint64_t* bits;  // per (b, h): cols words, then diag words (VSBits::head_offset)
  int64_t heads, seqlen_k, offset;
  bool causal;
  static constexpr int64_t tile_q = 64;
  static constexpr MaskKind kMask = MaskKind::kBits;

  int64_t num_tiles(int64_t seqlen_q) const { return ceil_div(seqlen_q, tile_q); }
  int64_t max_spans() const { return max_blocks(); }
  int64_t max_columns() const { return vs.max_vertical; }
  int64_t max_blocks() const { return ceil_div(seqlen_k, kChunk); }

  VSBits head_bits(int64_t b, int64_t h) const { return VSBits::of_head(bits, b * heads + h, seqlen_k); }
  uint64_t span_bits(int64_t b, int64_t h, int64_t p, int64_t k0) const { return head_bits(b, h).row(p, k0); }
  bool chunk_full(int64_t b, int64_t h, int64_t p0, int64_t p1, int64_t k0) const {
    return head_bits(b, h).chunk_full(p0, p1, k0);
  }

  int64_t plan(int64_t b, int64_t h, int64_t m, int64_t key_limit, KeySpan* spans, int64_t* nspans,
               int32_t* cols) const {
    thread_local std::vector<int32_t> blocks;
    blocks.resize(max_blocks());
    const int64_t p0 = m * tile_q + offset, p1 = std::min(p0 + tile_q, seqlen_k);
    int64_t nv = 0;
    const int32_t* vertical = vs_vertical_row(vs, b, h, &nv);
    const int64_t nb = head_bits(b, h).key_blocks(p0, p1, kChunk, blocks.data());
    int64_t n = 0;
    for (int64_t i = 0; i < nb; ++i) {  // runs of adjacent blocks -> spans
      const int64_t k0 = int64_t(blocks[i]) * kChunk;
      if (k0 >= key_limit) break;
      const int64_t k1 = std::min(k0 + kChunk, key_limit);
      if (n > 0 && spans[n - 1].end == k0) {
        spans[n - 1].end = k1;
      } else {
        spans[n++] = {k0, k1};
      }
    }
    *nspans = n;
    return vs_columns(vertical, nv, causal ? p1 : seqlen_k, blocks.data(), nb, kChunk, cols);
  }
};

// The element-mask bitsets of every (batch, head), built once per call (VSBits::head_offset
// layout, the one the CUDA engine's vs_bits_kernel writes).
std::vector<uint64_t> build_all_bits(const VerticalSlashParams& vs, int64_t batch, int64_t heads, int64_t seqlen_k) {
  std::vector<uint64_t> bits(batch * heads * 2 * VSBits::words(seqlen_k));
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) VSBits::build_head(vs, bh / heads, bh % heads, heads, seqlen_k, bits.data());
  });
  return bits;
}

}  // namespace

void vertical_slash_forward(const AttentionParams& p, const VerticalSlashParams& vs) {
  const std::vector<uint64_t> bits = build_all_bits(vs, p.batch, p.heads_q, p.seqlen_k);
  const VerticalSlashPolicy pol{vs, bits.data(), p.heads_q, p.seqlen_k, p.seqlen_k - p.seqlen_q, p.causal};
  run_prefill_dispatch(p, pol);
}

void vertical_slash_index(const VerticalSlashParams& vs, int64_t batch, int64_t heads, int64_t seqlen_q,
                          int64_t seqlen_k, int64_t block_size, const VerticalSlashIndex& out) {
  const std::vector<uint64_t> bits = build_all_bits(vs, batch, heads, seqlen_k);
  const VSIndexGeometry g{heads, seqlen_q, seqlen_k, block_size, /*col_limit_all=*/false};
  // Row by row, as the CUDA engine's vs_index_kernel does (one thread per row).
  at::parallel_for(0, batch * heads * g.blocks_q(), 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) vs_index_flat_row(vs, g, bits.data(), i, out);
  });
}

}  // namespace sparse_attn::cpu::SA_CPU_NS
