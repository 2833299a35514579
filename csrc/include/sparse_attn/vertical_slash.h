// Vertical-slash patterns (MInference): per query head, a set of key columns ("vertical")
// and a set of diagonals ("slash", offset s = p - j, 0 = main diagonal). The query at key
// position p attends key j iff j <= p and (j is a column or p - j is an offset), and the
// main diagonal is always attended, so no row is ever left without keys.
//
// Both engines walk a query block's keys as (1) whole key blocks, aligned at multiples of
// block_k, that some diagonal crosses inside the block (VSBits::key_blocks), plus (2) the
// columns that fall in no such block (vs_columns). Inside (1) the exact element mask comes
// from two per-(batch, head) bitsets (VSBits), so the blocks may safely over-cover.
// Torch-free; the CUDA engine uses the same functions.
//
// Input lists are per (batch, head), ascending and duplicate free (sparse_attn normalizes
// them in Python). The functions still read only inside [0, n) and skip entries that are
// negative, out of order, repeated or past the sequence, so unnormalized input cannot
// read out of bounds.
#pragma once
#include <cstdint>
#include "sparse_attn/macros.h"
#include "sparse_attn/params.h"

namespace sparse_attn {
SA_ABI_BEGIN

// The column and offset lists of (b, h), counts clamped to [0, capacity].
SA_HOST_DEVICE const int32_t* vs_vertical_row(const VerticalSlashParams& p, int64_t b, int64_t h, int64_t* n) {
  const int64_t c = p.vertical_count[b * p.vertical_count_stride[0] + h * p.vertical_count_stride[1]];
  *n = c < 0 ? 0 : (c > p.max_vertical ? p.max_vertical : c);
  return p.vertical + b * p.vertical_stride[0] + h * p.vertical_stride[1];
}
SA_HOST_DEVICE const int32_t* vs_slash_row(const VerticalSlashParams& p, int64_t b, int64_t h, int64_t* n) {
  const int64_t c = p.slash_count[b * p.slash_count_stride[0] + h * p.slash_count_stride[1]];
  *n = c < 0 ? 0 : (c > p.max_slash ? p.max_slash : c);
  return p.slash + b * p.slash_stride[0] + h * p.slash_stride[1];
}

// Columns of vertical[0, nv) below key_limit (p1 under a causal mask, else seqlen_k) that
// lie in none of the ascending key blocks blocks[0, nb). Written ascending; returns how many.
SA_HOST_DEVICE int64_t vs_columns(const int32_t* vertical, int64_t nv, int64_t key_limit, const int32_t* blocks,
                                  int64_t nb, int64_t block_k, int32_t* out) {
  int64_t n = 0, b = 0, prev = -1;
  for (int64_t i = 0; i < nv; ++i) {
    const int64_t j = vertical[i];
    if (j <= prev) continue;  // negative, repeated or out of order
    if (j >= key_limit) break;
    prev = j;
    while (b < nb && (int64_t(blocks[b]) + 1) * block_k <= j) ++b;
    if (b < nb && int64_t(blocks[b]) * block_k <= j) continue;  // inside a listed block
    out[n++] = static_cast<int32_t>(j);
  }
  return n;
}

// Bitsets of one (batch, head) for the element mask inside key blocks:
//  - cols: bit j set iff key j is a column;
//  - diag: bit (seqlen_k - 1 - s) set iff s is an offset (0 always), so the offsets that
//    row p meets at keys k0 .. k0 + 63 are the 64 bits from seqlen_k - 1 - p + k0 up.
// Each holds words(seqlen_k) 64-bit words; the spare words stay zero so reads near the
// end never leave the buffer.
struct VSBits {
  const uint64_t* cols;
  const uint64_t* diag;
  int64_t seqlen_k;

  SA_HOST_DEVICE static int64_t words(int64_t seqlen_k) { return (seqlen_k + 63) / 64 + 2; }

  // 64 bits of `w` starting at bit `pos` (0 <= pos < 64 * (words - 1)).
  SA_HOST_DEVICE static uint64_t extract(const uint64_t* w, int64_t pos) {
    const int64_t i = pos >> 6, sh = pos & 63;
    return sh == 0 ? w[i] : (w[i] >> sh) | (w[i + 1] << (64 - sh));
  }

  // Bit t set iff key k0 + t is a column or lies on an offset of row p, before the causal
  // and sequence-end mask (0 <= k0 < seqlen_k, 0 <= p < seqlen_k).
  SA_HOST_DEVICE uint64_t row(int64_t p, int64_t k0) const {
    uint64_t bits = extract(cols, k0);
    // Key k0 + t has offset p - k0 - t, stored at diag bit pos + t. Past the buffer all
    // offsets would be negative: no bits.
    const int64_t pos = seqlen_k - 1 - p + k0;
    if (pos < 64 * (words(seqlen_k) - 1)) bits |= extract(diag, pos);
    return bits;
  }

  // True if bits [lo, hi) of w are all set (0 <= lo <= hi <= 64 * words).
  SA_HOST_DEVICE static bool all_set(const uint64_t* w, int64_t lo, int64_t hi) {
    for (int64_t pos = lo; pos < hi;) {
      const int64_t i = pos >> 6, sh = pos & 63, n = (hi - pos < 64 - sh) ? hi - pos : 64 - sh;
      const uint64_t want = (n == 64 ? ~uint64_t(0) : ((uint64_t(1) << n) - 1)) << sh;
      if ((w[i] & want) != want) return false;
      pos += n;
    }
    return true;
  }

  // True if any bit of [lo, hi) of w is set (0 <= lo, hi <= 64 * words).
  SA_HOST_DEVICE static bool any_set(const uint64_t* w, int64_t lo, int64_t hi) {
    for (int64_t pos = lo; pos < hi;) {
      const int64_t i = pos >> 6, sh = pos & 63, n = (hi - pos < 64 - sh) ? hi - pos : 64 - sh;
      const uint64_t want = (n == 64 ? ~uint64_t(0) : ((uint64_t(1) << n) - 1)) << sh;
      if (w[i] & want) return true;
      pos += n;
    }
    return false;
  }

  // Key blocks [n * block_k, (n + 1) * block_k) crossed by a diagonal (offset 0 included)
  // at some key position of [p0, p1) (a query block; p1 <= seqlen_k). Block n is crossed
  // iff some offset lies in [p0 - (n + 1) * block_k + 1, p1 - 1 - n * block_k]: a window
  // of (p1 - p0) + block_k - 1 bits of diag, so the cost does not grow with the number of
  // offsets. Writes the ids ascending to `out` (room for min(max_out, ceil(p1 / block_k)));
  // returns how many (at most max_out: the first max_out blocks).
  SA_HOST_DEVICE int64_t key_blocks(int64_t p0, int64_t p1, int64_t block_k, int32_t* out,
                                    int64_t max_out = INT64_MAX) const {
    int64_t n_out = 0;
    for (int64_t n = 0; n * block_k < p1 && n_out < max_out; ++n) {
      const int64_t s_hi = p1 - 1 - n * block_k;
      const int64_t s_lo = p0 - (n + 1) * block_k + 1 > 0 ? p0 - (n + 1) * block_k + 1 : 0;
      if (s_lo > s_hi || s_hi < 0) continue;
      // offset s is at diag bit seqlen_k - 1 - s
      const int64_t lo = seqlen_k - 1 - (s_hi < seqlen_k ? s_hi : seqlen_k - 1), hi = seqlen_k - s_lo;
      if (lo < hi && any_set(diag, lo, hi)) out[n_out++] = static_cast<int32_t>(n);
    }
    return n_out;
  }

  // True if every key of [k0, k0 + 64) is a column or on an offset of every key position
  // p in [p0, p1) (before the causal and sequence-end mask).
  SA_HOST_DEVICE bool chunk_full(int64_t p0, int64_t p1, int64_t k0) const {
    if (k0 + 64 <= seqlen_k && all_set(cols, k0, k0 + 64)) return true;
    const int64_t lo = seqlen_k - 1 - (p1 - 1) + k0, hi = seqlen_k - 1 - p0 + k0 + 64;
    return lo >= 0 && hi <= 64 * words(seqlen_k) && all_set(diag, lo, hi);
  }

  // All (batch, head) bitsets of a call in one buffer: head bh's cols at head_offset(bh),
  // its diag words right after (both engines and both index kernels use this layout).
  SA_HOST_DEVICE static int64_t head_offset(int64_t bh, int64_t seqlen_k) { return bh * 2 * words(seqlen_k); }
  SA_HOST_DEVICE static VSBits of_head(const uint64_t* all, int64_t bh, int64_t seqlen_k) {
    const uint64_t* base = all + head_offset(bh, seqlen_k);
    return VSBits{base, base + words(seqlen_k), seqlen_k};
  }

  // Sets, in zeroed cols/diag, the bits of the list entries first, first + step, ...: the
  // columns vertical[0, nv), then the offsets 0 (always) and slash[0, ns) (entry i of the
  // offsets is 0 for i = 0, else slash[i - 1]); out-of-range entries are skipped. Each bit
  // goes through or_word(word pointer, mask): a plain |= on the host, atomicOr when the
  // threads of a CTA share the words (vs_bits_kernel, first = thread, step = threads).
  template <class OrWord>
  SA_HOST_DEVICE static void set_bits(const int32_t* vertical, int64_t nv, const int32_t* slash, int64_t ns,
                                      int64_t seqlen_k, uint64_t* cols, uint64_t* diag, int64_t first, int64_t step,
                                      OrWord&& or_word) {
    for (int64_t i = first; i < nv; i += step) {
      const int64_t j = vertical[i];
      if (j >= 0 && j < seqlen_k) or_word(cols + (j >> 6), uint64_t(1) << (j & 63));
    }
    for (int64_t i = first; i <= ns; i += step) {
      const int64_t s = i == 0 ? 0 : slash[i - 1];
      if (s < 0 || s >= seqlen_k) continue;
      const int64_t bit = seqlen_k - 1 - s;
      or_word(diag + (bit >> 6), uint64_t(1) << (bit & 63));
    }
  }

  // Head (b, h) of `all` (head_offset layout, bh = b * heads + h) built from its lists on
  // the host, serially (the CPU engine, and host_checks as the reference).
  static void build_head(const VerticalSlashParams& vs, int64_t b, int64_t h, int64_t heads, int64_t seqlen_k,
                         uint64_t* all) {
    uint64_t* cols = all + head_offset(b * heads + h, seqlen_k);
    const int64_t nw = words(seqlen_k);
    for (int64_t i = 0; i < 2 * nw; ++i) cols[i] = 0;
    int64_t nv = 0, ns = 0;
    const int32_t* vertical = vs_vertical_row(vs, b, h, &nv);
    const int32_t* slash = vs_slash_row(vs, b, h, &ns);
    set_bits(vertical, nv, slash, ns, seqlen_k, cols, cols + nw, 0, 1, [](uint64_t* w, uint64_t m) { *w |= m; });
  }
};

// One row (query block [p0, p1) in key positions, p1 = min(p0 + block_size, seqlen_k)) of
// the index that vertical_slash_index returns, written in place: the first keys of the
// crossed key blocks (at most max_blocks; room for max_blocks in `offs`), the columns below
// col_limit outside them (room for the list's capacity in `cols`), the padding zeroed.
// Both engines run it per row through vs_index_flat_row (the block ids are written to
// `offs` and turned into keys last, so no scratch buffer is needed).
// With max_blocks >= 2 * (distinct offsets + 1) nothing is dropped: a diagonal crosses at
// most two blocks of a query block whose height is at most block_size.
SA_HOST_DEVICE void vs_index_row(const VSBits& vb, const int32_t* vertical, int64_t nv, int64_t p0, int64_t p1,
                                 int64_t col_limit, int64_t block_size, int64_t max_blocks, int64_t max_columns,
                                 int32_t* offs, int32_t* cols, int32_t* block_count, int32_t* column_count) {
  const int64_t nb = vb.key_blocks(p0, p1, block_size, offs, max_blocks);
  const int64_t nc = vs_columns(vertical, nv, col_limit, offs, nb, block_size, cols);
  for (int64_t j = 0; j < nb; ++j) offs[j] = static_cast<int32_t>(offs[j] * block_size);  // ids -> keys
  for (int64_t j = nb; j < max_blocks; ++j) offs[j] = 0;
  for (int64_t j = nc; j < max_columns; ++j) cols[j] = 0;
  *block_count = static_cast<int32_t>(nb);
  *column_count = static_cast<int32_t>(nc);
}

// The shape of a vertical-slash index: per (batch, head), ceil(seqlen_q / block_size) rows
// of block_size queries (bottom-right aligned), numbered flat: row i = (b * heads + h) *
// blocks_q() + m. col_limit_all: a row's columns run up to seqlen_k (non-causal attention)
// instead of up to its last key position (vertical_slash_index, causal attention).
struct VSIndexGeometry {
  int64_t heads, seqlen_q, seqlen_k, block_size;
  bool col_limit_all;

  SA_HOST_DEVICE int64_t blocks_q() const { return (seqlen_q + block_size - 1) / block_size; }
};

// Flat row i of the index from the bitsets of every head (`all`, VSBits::head_offset layout):
// what the CPU op runs for each row and the CUDA index kernel runs as thread i.
SA_HOST_DEVICE void vs_index_flat_row(const VerticalSlashParams& vs, const VSIndexGeometry& g, const uint64_t* all,
                                      int64_t i, const VerticalSlashIndex& out) {
  const int64_t mb = g.blocks_q(), bh = i / mb, m = i % mb;
  int64_t nv = 0;
  const int32_t* vertical = vs_vertical_row(vs, bh / g.heads, bh % g.heads, &nv);
  const int64_t p0 = m * g.block_size + (g.seqlen_k - g.seqlen_q);
  const int64_t p1 = p0 + g.block_size < g.seqlen_k ? p0 + g.block_size : g.seqlen_k;
  vs_index_row(VSBits::of_head(all, bh, g.seqlen_k), vertical, nv, p0, p1, g.col_limit_all ? g.seqlen_k : p1,
               g.block_size, out.max_blocks, out.max_columns, out.block_offset + i * out.max_blocks,
               out.column_index + i * out.max_columns, out.block_count + i, out.column_count + i);
}

SA_ABI_END
}  // namespace sparse_attn
