// Host-side (CPU) checks of the CUDA prefill kernel's CuTe layouts and of the shared key
// walker it uses; see run.sh. Compiles the kernel's own types (../prefill/prefill_traits.cuh)
// for every (dtype, head_dim) instance and checks:
//   1. shared layouts (Q, K/V) are bijections onto [0, cosize); sizes match kSmemBytes;
//   2. the transposed V view (d, k) addresses the same element as V (k, d);
//   3. the cp.async partition covers a (64 x head_dim) tile exactly once, each thread moving
//      8 consecutive elements of one row to 8 consecutive (16-byte aligned) shared offsets;
//   4. the MMA accumulator: every (row, col) of a 64 x 64 tile held by exactly one thread,
//      rowcol_view row i of a thread is one tile row, shared by the 4 lanes of its quad
//      (lane ^ 1, lane ^ 2) which together hold all 64 columns (the softmax's reductions);
//   5. acc_as_a_operand: S's accumulator regrouped as the A operand holds, element by element,
//      the (row, key) the MMA expects there (P never leaves registers);
//   6. KeyChunkWalker (the kernel's key loop) yields exactly the 64-key chunks of
//      block_row_spans (the CPU engine's) for random block rows, and of streaming_spans;
//   7. TileMask (the kernel's chunks, full-chunk shortcut and element mask), replayed for
//      every tile of random block-sparse and streaming problems (ragged, Sq != Sk, GQA,
//      broadcast lists, full lists, causal or not), keeps exactly the (query, key) pairs of
//      a mask built from first principles, each once;
//   8. the same for vertical-slash problems (random columns and offsets, out-of-range entries,
//      broadcast heads, causal or not, Sq != Sk): the index rows made by vs_index_row as
//      vs_index_kernel makes them, the kernel's walker over a row's key blocks with the
//      bitset mask and full-chunk shortcut, then its gathered column tiles (64 keys each,
//      padded with kNoKey) under column_visible.
#include <cstdio>
#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "check.h"

#include "../prefill/prefill_traits.cuh"
#include "../prefill/tile_mask.h"
#include "sparse_attn/key_spans.h"
#include "sparse_attn/vertical_slash.h"

using namespace cute;
namespace pf = sparse_attn::cuda::prefill;


template <class Layout_>
static void check_bijection(Layout_ L, int rows, int cols, const char* what) {
  const int n = rows * cols;
  CHECK(int(cosize(L)) == n, "%s cosize %d != %d", what, int(cosize(L)), n);
  std::vector<int> hit(n, 0);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const int off = L(r, c);
      if (off >= 0 && off < n) ++hit[off];
    }
  for (int o = 0; o < n; ++o) CHECK(hit[o] == 1, "%s: offset %d hit %d times", what, o, hit[o]);
}

template <class Tr>
static void check_instance(const char* name) {
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, D = Tr::kHeadDim, NT = Tr::kThreads;
  std::printf("  %s\n", name);
  // 1. shared layouts and size
  check_bijection(typename Tr::SmemLayoutQ{}, BM, D, "SmemLayoutQ");
  check_bijection(typename Tr::SmemLayoutKV{}, BN, D, "SmemLayoutKV");
  CHECK(Tr::kSmemBytes == (BM * D + 4 * BN * D) * 2, "kSmemBytes %d", Tr::kSmemBytes);
  CHECK(Tr::kSmemBytes <= 227 * 1024, "kSmemBytes %d over the sm90 limit", Tr::kSmemBytes);
  // 2. V^T view
  typename Tr::SmemLayoutKV lv{};
  typename Tr::SmemLayoutVt lvt{};
  for (int d = 0; d < D; ++d)
    for (int k = 0; k < BN; ++k) CHECK(int(lvt(d, k)) == int(lv(k, d)), "Vt(%d,%d) != V(%d,%d)", d, k, k, d);

  // 3. cp.async partition (global (64, D) row-major with a padded row, shared swizzled)
  {
    typename Tr::GmemCopy gcopy;
    CHECK(int(size(gcopy)) == NT, "GmemCopy threads %d", int(size(gcopy)));
    Tensor id = make_identity_tensor(make_shape(Int<BN>{}, Int<D>{}));
    Tensor soff = make_tensor(counting_iterator<int>(0), typename Tr::SmemLayoutKV{});
    std::vector<int> count(BN * D, 0);
    for (int t = 0; t < NT; ++t) {
      auto thr = gcopy.get_thread_slice(t);
      Tensor c = thr.partition_S(id);    // (CPY, CPY_M, CPY_K)
      Tensor s = thr.partition_D(soff);
      CHECK(int(size<0>(c)) == 8, "values per copy %d", int(size<0>(c)));
      for (int m = 0; m < size<1>(c); ++m)
        for (int k = 0; k < size<2>(c); ++k) {
          const int r0 = get<0>(c(0, m, k)), c0 = get<1>(c(0, m, k)), s0 = s(0, m, k);
          CHECK(c0 % 8 == 0 && s0 % 8 == 0, "t%d: copy starts at col %d / smem %d", t, c0, s0);
          for (int v = 0; v < 8; ++v) {
            const int r = get<0>(c(v, m, k)), cc = get<1>(c(v, m, k));
            CHECK(r == r0 && cc == c0 + v && int(s(v, m, k)) == s0 + v, "t%d: copy not a 16-byte vector", t);
            CHECK(int(s(v, m, k)) == int(soff(r, cc)), "t%d: src (%d,%d) lands at the wrong smem offset", t, r, cc);
            if (r >= 0 && r < BN && cc >= 0 && cc < D) ++count[r * D + cc];
          }
        }
    }
    for (int e = 0; e < BN * D; ++e) CHECK(count[e] == 1, "copy covers (%d,%d) %d times", e / D, e % D, count[e]);
  }

  // 4. accumulator ownership and the rowcol view
  typename Tr::TiledMma mma;
  CHECK(int(size(mma)) == NT, "TiledMma threads %d", int(size(mma)));
  {
    Tensor id = make_identity_tensor(Shape<Int<BM>, Int<BN>>{});
    std::vector<int> count(BM * BN, 0);
    std::vector<std::vector<int>> rows_of(NT);
    std::vector<std::vector<std::set<int>>> cols_of(NT);
    for (int t = 0; t < NT; ++t) {
      Tensor c = mma.get_thread_slice(t).partition_C(id);
      Tensor rc = make_tensor(c.data(), pf::rowcol_view(c.layout()));
      CHECK(int(size<0>(rc)) == 2, "rows per thread %d", int(size<0>(rc)));
      cols_of[t].resize(size<0>(rc));
      for (int i = 0; i < size<0>(rc); ++i) {
        const int r = get<0>(rc(i, 0));
        rows_of[t].push_back(r);
        for (int j = 0; j < size<1>(rc); ++j) {
          CHECK(get<0>(rc(i, j)) == r, "t%d: rowcol row %d mixes tile rows %d and %d", t, i, r, int(get<0>(rc(i, j))));
          cols_of[t][i].insert(get<1>(rc(i, j)));
          ++count[get<0>(rc(i, j)) * BN + get<1>(rc(i, j))];
        }
      }
    }
    for (int e = 0; e < BM * BN; ++e) CHECK(count[e] == 1, "S(%d,%d) held %d times", e / BN, e % BN, count[e]);
    for (int t = 0; t < NT; ++t)
      for (size_t i = 0; i < rows_of[t].size(); ++i) {
        std::set<int> cols;
        for (int q = 0; q < 4; ++q) {
          const int u = (t & ~3) | q;  // lanes t ^ 1, t ^ 2, t ^ 3 of the quad
          CHECK(rows_of[u][i] == rows_of[t][i], "t%d and t%d disagree on row %zu", t, u, i);
          cols.insert(cols_of[u][i].begin(), cols_of[u][i].end());
        }
        CHECK(int(cols.size()) == BN, "quad of t%d holds %d columns of row %d", t, int(cols.size()), rows_of[t][i]);
      }
    // The O accumulator (64 x D) follows the same rule (its rows are the ones stored).
    Tensor ido = make_identity_tensor(Shape<Int<BM>, Int<D>>{});
    for (int t = 0; t < NT; ++t) {
      Tensor c = mma.get_thread_slice(t).partition_C(ido);
      Tensor rc = make_tensor(c.data(), pf::rowcol_view(c.layout()));
      for (int i = 0; i < size<0>(rc); ++i)
        for (int j = 0; j < size<1>(rc); ++j)
          CHECK(get<0>(rc(i, j)) == rows_of[t][i], "t%d: O row %d is not S row %d", t, int(get<0>(rc(i, j))),
                rows_of[t][i]);
    }
  }

  // 5. S accumulator as the A operand of P V
  {
    Tensor idS = make_identity_tensor(Shape<Int<BM>, Int<BN>>{});
    for (int t = 0; t < NT; ++t) {
      auto thr = mma.get_thread_slice(t);
      Tensor c = thr.partition_C(idS);
      Tensor a_from_c = make_tensor(c.data(), pf::acc_as_a_operand(c.layout()));
      Tensor a = thr.partition_A(idS);  // what the MMA reads as A = P (rows x keys)
      CHECK(int(size(a)) == int(size(a_from_c)), "t%d: A size %d vs %d", t, int(size(a)), int(size(a_from_c)));
      CHECK(rank(a.layout()) == rank(a_from_c.layout()), "t%d: rank", t);
      for (int i = 0; i < size(a); ++i)
        CHECK(get<0>(a(i)) == get<0>(a_from_c(i)) && get<1>(a(i)) == get<1>(a_from_c(i)),
              "t%d: A element %d is (%d,%d), the accumulator holds (%d,%d) there", t, i, int(get<0>(a(i))),
              int(get<1>(a(i))), int(get<0>(a_from_c(i))), int(get<1>(a_from_c(i))));
      for (int m = 0; m < 3; ++m) {  // mode by mode: the kernel slices rPa(_, _, kk)
        CHECK(int(size<0>(a)) == int(size<0>(a_from_c)) && int(size<1>(a)) == int(size<1>(a_from_c)) &&
                  int(size<2>(a)) == int(size<2>(a_from_c)),
              "t%d: A mode sizes differ", t);
      }
    }
  }
}

// 6. the kernel's key loop against the CPU engine's spans
static std::vector<int64_t> chunks_of_spans(const sparse_attn::KeySpan* s, int64_t n, int64_t chunk) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = s[i].start; k < s[i].end; k += chunk) out.push_back(k);
  return out;
}

static void check_walker() {
  using namespace sparse_attn;
  std::mt19937 rng(7);
  int cases = 0;
  for (int it = 0; it < 3000; ++it) {
    const int block_k = 64 * (1 + int(rng() % 3));
    const int nblocks = 1 + int(rng() % 20);
    const int64_t seqlen_k = int64_t(nblocks - 1) * block_k + 1 + int64_t(rng() % block_k);
    std::vector<int32_t> a, f;
    for (int n = 0; n < nblocks; ++n) {
      const unsigned r = rng() % 4;
      if (r == 0) a.push_back(n);
      if (r == 1) f.push_back(n);
      if (r == 2 && rng() % 2) { a.push_back(n); f.push_back(n); }  // in both lists: once
    }
    if (it % 10 == 0 && !a.empty()) a.push_back(a.back());  // unvalidated junk is dropped, not read
    if (it % 13 == 0) a.insert(a.begin(), -3);
    BlockRow row;
    row.idx = a.data(), row.count = int64_t(a.size());
    row.full_idx = f.data(), row.full_count = int64_t(f.size());
    const int64_t key_limit = 1 + int64_t(rng() % seqlen_k);
    std::vector<KeySpan> spans(a.size() + f.size() + 1);
    const int64_t n = block_row_spans(row, block_k, key_limit, INT64_MAX, spans.data());
    const std::vector<int64_t> want = chunks_of_spans(spans.data(), n, 64);
    KeyChunkWalker w = KeyChunkWalker::of_blocks(row, block_k, key_limit, 64);
    std::vector<int64_t> got;
    for (int64_t k = w.next(); k >= 0; k = w.next()) got.push_back(k);
    CHECK(got == want, "block row case %d: %zu chunks, want %zu", it, got.size(), want.size());
    ++cases;
  }
  for (int it = 0; it < 3000; ++it) {
    const int64_t seqlen_k = 1 + rng() % 1000, sq = 1 + rng() % seqlen_k;
    const StreamingParams s{int64_t(rng() % 300), int64_t(rng() % 400)};
    const int64_t q0 = (rng() % ((sq + 63) / 64)) * 64, q_last = std::min(q0 + 63, sq - 1);
    const int64_t off = seqlen_k - sq;
    KeySpan sp[2];
    const int n = streaming_spans(s, q0 + off, q_last + off + 1, seqlen_k, 64, sp);
    const std::vector<int64_t> want = chunks_of_spans(sp, n, 64);
    KeyChunkWalker w = KeyChunkWalker::of_spans(sp, n, 64);
    std::vector<int64_t> got;
    for (int64_t k = w.next(); k >= 0; k = w.next()) got.push_back(k);
    CHECK(got == want, "streaming case %d", it);
    // every visible key of every row lies in a walked chunk
    std::set<int64_t> walked(got.begin(), got.end());
    for (int64_t q = q0; q <= q_last; ++q)
      for (int64_t j = 0; j < seqlen_k; ++j)
        if (streaming_visible(s, q + off, j)) CHECK(walked.count(j / 64 * 64) == 1, "streaming case %d misses key %lld", it, (long long)j);
    ++cases;
  }
  std::printf("  walker: %d cases\n", cases);
}

// 7. whole problems through TileMask
static void replay(const sparse_attn::cuda::PrefillArgs& a, const std::vector<char>& want_bhqk, int it) {
  const auto& p = a.p;
  const int64_t Sq = p.seqlen_q, Sk = p.seqlen_k;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h) {
      std::vector<char> got(Sq * Sk, 0);
      for (int64_t q0 = 0; q0 < Sq; q0 += 64) {
        const int64_t rows = std::min<int64_t>(64, Sq - q0);
        const pf::TileMask tm = pf::TileMask::of(a, q0, rows);
        sparse_attn::KeyChunkWalker w = tm.walker(a, b, h, 64);
        const bool vs = a.mode == sparse_attn::cuda::PrefillMode::kVerticalSlash;
        const sparse_attn::VSBits vb = vs ? tm.vs_bits(a, b, h) : sparse_attn::VSBits{nullptr, nullptr, 0};
        for (int64_t k0 = w.next(); k0 >= 0; k0 = w.next()) {
          CHECK(k0 % 64 == 0 && k0 < Sk, "case %d: chunk at %lld", it, (long long)k0);
          const bool full = vs ? tm.vs_chunk_full(vb, k0) : tm.chunk_full(k0, k0 + 64);
          for (int64_t r = q0; r < q0 + rows; ++r) {
            const uint64_t bits = vs ? tm.vs_row_bits(vb, r, k0) : 0;
            for (int64_t j = k0; j < k0 + 64; ++j)
              if (full || (vs ? ((bits >> (j - k0)) & 1) != 0 : tm.visible(r, j))) {
                CHECK(j < Sk, "case %d: kept key %lld past the sequence", it, (long long)j);
                if (j < Sk) ++got[r * Sk + j];
              }
          }
        }
        if (vs) {  // the gathered column tiles, as gather_rows fills them
          int64_t nc = 0;
          const int32_t* cols = tm.vs_columns_of(a, b, h, &nc);
          for (int64_t c0 = 0; c0 < nc; c0 += 64)
            for (int64_t t = 0; t < 64; ++t) {
              const int64_t key = c0 + t < nc ? cols[c0 + t] : pf::TileMask::kNoKey;
              for (int64_t r = q0; r < q0 + rows; ++r)
                if (tm.column_visible(r, key)) {
                  CHECK(key >= 0 && key < Sk, "case %d: column %lld out of range", it, (long long)key);
                  if (key >= 0 && key < Sk) ++got[r * Sk + key];
                }
            }
        }
      }
      for (int64_t r = 0; r < Sq; ++r)
        for (int64_t j = 0; j < Sk; ++j)
          CHECK(got[r * Sk + j] == want_bhqk[((b * p.heads_q + h) * Sq + r) * Sk + j],
                "case %d (b %lld, h %lld): pair (%lld, %lld) kept %d times, want %d", it, (long long)b, (long long)h,
                (long long)r, (long long)j, got[r * Sk + j], want_bhqk[((b * p.heads_q + h) * Sq + r) * Sk + j]);
    }
}

// Random problem sizes shared by the tile-mask checks: batch 1-2, GQA 1-2, up to 400 rows/keys.
template <class Params>
static void random_sizes(std::mt19937& rng, Params& p) {
  p.batch = 1 + rng() % 2, p.heads_kv = 1 + rng() % 2, p.heads_q = p.heads_kv * (1 + rng() % 2);
  p.seqlen_q = 1 + rng() % 400, p.seqlen_k = 1 + rng() % 400;
}

static void check_tile_mask() {
  using namespace sparse_attn;
  std::mt19937 rng(11);
  int cases = 0;
  for (int it = 0; it < 300; ++it) {
    sparse_attn::cuda::PrefillArgs a;
    auto& p = a.p;
    random_sizes(rng, p);
    const int64_t B = p.batch, H = p.heads_q, Sq = p.seqlen_q, Sk = p.seqlen_k, off = Sk - Sq;
    std::vector<char> want(B * H * Sq * Sk, 0);
    std::vector<int32_t> counts, idx, fcounts, fidx;
    if (it % 3 == 2) {  // streaming (always causal)
      a.mode = sparse_attn::cuda::PrefillMode::kStreaming;
      p.causal = true;
      a.stream = StreamingParams{int64_t(rng() % 150), int64_t(rng() % 250)};
      for (int64_t bh = 0; bh < B * H; ++bh)
        for (int64_t r = 0; r < Sq; ++r)
          for (int64_t j = 0; j < Sk; ++j) {
            const int64_t pos = r + off;
            want[(bh * Sq + r) * Sk + j] = j <= pos && (j < a.stream.sink_tokens || pos - j < a.stream.window_tokens);
          }
    } else {  // block-sparse: random lists per (b, h) or broadcast over heads, maybe full lists
      a.mode = sparse_attn::cuda::PrefillMode::kBlockSparse;
      p.causal = rng() % 2;
      auto& m = a.mask;
      m.block_q = 64 * (1 + rng() % 2), m.block_k = 64 * (1 + rng() % 3);
      m.num_q_blocks = (Sq + m.block_q - 1) / m.block_q, m.num_k_blocks = (Sk + m.block_k - 1) / m.block_k;
      const int64_t MB = m.num_q_blocks, NB = m.num_k_blocks, Hm = rng() % 2 ? H : 1;
      const bool with_full = rng() % 2;
      m.max_count = m.max_full_count = NB;
      counts.assign(B * Hm * MB, 0), idx.assign(B * Hm * MB * NB, -7);  // -7: never read
      fcounts.assign(B * Hm * MB, 0), fidx.assign(B * Hm * MB * NB, -7);
      std::vector<char> attend(B * Hm * MB * NB, 0);
      for (int64_t row = 0; row < B * Hm * MB; ++row)
        for (int64_t n = 0; n < NB; ++n) {
          const unsigned r = rng() % 3;
          if (r == 0) continue;
          attend[row * NB + n] = 1;
          // a "full" block must be fully visible under the causal mask (validate's rule)
          const int64_t mq = row % MB, k_end = std::min<int64_t>((n + 1) * m.block_k, Sk);
          const bool may_be_full = !p.causal || k_end - 1 <= mq * m.block_q + off;
          if (with_full && r == 2 && may_be_full) fidx[row * NB + fcounts[row]++] = int32_t(n);
          else idx[row * NB + counts[row]++] = int32_t(n);
        }
      m.counts = counts.data(), m.indices = idx.data();
      const int64_t cs[3] = {Hm * MB, Hm == 1 ? 0 : MB, 1}, is[4] = {Hm * MB * NB, Hm == 1 ? 0 : MB * NB, NB, 1};
      for (int i = 0; i < 3; ++i) m.counts_stride[i] = m.full_counts_stride[i] = cs[i];
      for (int i = 0; i < 4; ++i) m.indices_stride[i] = m.full_indices_stride[i] = is[i];
      if (with_full) m.full_counts = fcounts.data(), m.full_indices = fidx.data();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t r = 0; r < Sq; ++r)
            for (int64_t j = 0; j < Sk; ++j) {
              const int64_t row = (b * Hm + (Hm == 1 ? 0 : h)) * MB + r / m.block_q;
              want[((b * H + h) * Sq + r) * Sk + j] = attend[row * NB + j / m.block_k] && (!p.causal || j <= r + off);
            }
    }
    replay(a, want, it);
    ++cases;
  }
  std::printf("  tile mask: %d problems\n", cases);
}

// 8. vertical-slash problems: the device index built on the host with the kernel's row code
static void check_vertical_slash() {
  using namespace sparse_attn;
  std::mt19937 rng(23);
  int cases = 0;
  for (int it = 0; it < 300; ++it) {
    sparse_attn::cuda::PrefillArgs a;
    auto& p = a.p;
    a.mode = sparse_attn::cuda::PrefillMode::kVerticalSlash;
    random_sizes(rng, p);
    p.causal = it % 4 != 3;
    const int64_t B = p.batch, H = p.heads_q, Sq = p.seqlen_q, Sk = p.seqlen_k, off = Sk - Sq;
    // lists per (b, h) or broadcast over heads; ascending, unique, some entries >= Sk
    const int64_t Hl = rng() % 2 ? H : 1, NV = rng() % 40, NS = rng() % 12;
    std::vector<int32_t> vert(B * Hl * std::max<int64_t>(NV, 1), -1), slash(B * Hl * std::max<int64_t>(NS, 1), -1);
    std::vector<int32_t> vcount(B * Hl), scount(B * Hl);
    for (int64_t l = 0; l < B * Hl; ++l) {
      std::set<int32_t> vs_, ss_;
      const int64_t span = Sk + 20, dens = 1 + rng() % 4;
      for (int64_t i = 0; i < NV; ++i) if (rng() % 4 < dens) vs_.insert(int32_t(rng() % span));
      for (int64_t i = 0; i < NS; ++i) if (rng() % 4 < dens) ss_.insert(int32_t(rng() % span));
      vcount[l] = int32_t(vs_.size()), scount[l] = int32_t(ss_.size());
      std::copy(vs_.begin(), vs_.end(), vert.begin() + l * std::max<int64_t>(NV, 1));
      std::copy(ss_.begin(), ss_.end(), slash.begin() + l * std::max<int64_t>(NS, 1));
    }
    VerticalSlashParams v;
    v.vertical = vert.data(), v.vertical_count = vcount.data(), v.slash = slash.data(), v.slash_count = scount.data();
    v.max_vertical = std::max<int64_t>(NV, 1), v.max_slash = std::max<int64_t>(NS, 1);
    const int64_t hs = Hl == 1 ? 0 : 1;
    v.vertical_stride[0] = Hl * v.max_vertical, v.vertical_stride[1] = hs * v.max_vertical;
    v.slash_stride[0] = Hl * v.max_slash, v.slash_stride[1] = hs * v.max_slash;
    v.vertical_count_stride[0] = v.slash_count_stride[0] = Hl;
    v.vertical_count_stride[1] = v.slash_count_stride[1] = hs;
    // what vs_build_index writes (bits per (b, h), index rows of 64 query rows) and what the
    // binding sizes (capacities at least 1)
    const int64_t words = VSBits::words(Sk), mb = (Sq + 63) / 64;
    std::vector<uint64_t> bits(B * H * 2 * words, ~uint64_t(0));
    VerticalSlashIndex idx;
    idx.max_blocks = std::max<int64_t>(1, std::min<int64_t>(2 * (v.max_slash + 1), (Sk + 63) / 64));
    idx.max_columns = std::max<int64_t>(1, v.max_vertical);
    std::vector<int32_t> bc(B * H * mb, -9), cc(B * H * mb, -9), bo(B * H * mb * idx.max_blocks, -9),
        ci(B * H * mb * idx.max_columns, -9);
    idx.block_count = bc.data(), idx.column_count = cc.data(), idx.block_offset = bo.data(),
    idx.column_index = ci.data();
    for (int64_t bh = 0; bh < B * H; ++bh) {
      int64_t nv = 0, ns = 0;
      const int32_t* vl = vs_vertical_row(v, bh / H, bh % H, &nv);
      const int32_t* sl = vs_slash_row(v, bh / H, bh % H, &ns);
      VSBits::build_head(v, bh / H, bh % H, H, Sk, bits.data());
      const VSBits vb{bits.data() + bh * 2 * words, bits.data() + bh * 2 * words + words, Sk};
      for (int64_t m = 0; m < mb; ++m) {
        const int64_t i = bh * mb + m, p0 = m * 64 + off, p1 = std::min<int64_t>(p0 + 64, Sk);
        vs_index_row(vb, vl, nv, p0, p1, p.causal ? p1 : Sk, 64, idx.max_blocks, idx.max_columns,
                     idx.block_offset + i * idx.max_blocks, idx.column_index + i * idx.max_columns,
                     idx.block_count + i, idx.column_count + i);
        // the capacity bound: nothing dropped
        std::vector<int32_t> all((Sk + 63) / 64 + 1);
        CHECK(vb.key_blocks(p0, p1, 64, all.data()) == idx.block_count[i], "case %d: blocks dropped", it);
      }
    }
    a.vs.bits = bits.data(), a.vs.words = words, a.vs.index = idx;
    // first principles
    std::vector<char> want(B * H * Sq * Sk, 0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t l = b * Hl + (Hl == 1 ? 0 : h);
        const std::set<int64_t> cs(vert.begin() + l * v.max_vertical, vert.begin() + l * v.max_vertical + vcount[l]);
        std::set<int64_t> ds(slash.begin() + l * v.max_slash, slash.begin() + l * v.max_slash + scount[l]);
        ds.insert(0);
        for (int64_t r = 0; r < Sq; ++r)
          for (int64_t j = 0; j < Sk; ++j) {
            const int64_t pos = r + off;
            want[((b * H + h) * Sq + r) * Sk + j] =
                (!p.causal || j <= pos) && (cs.count(j) || (pos >= j && ds.count(pos - j)));
          }
      }
    replay(a, want, 1000 + it);
    ++cases;
  }
  std::printf("  vertical-slash tile mask: %d problems\n", cases);
}

int main() {
  check_instance<pf::Traits<bfloat16_t, 64>>("bf16, head_dim 64");
  check_instance<pf::Traits<bfloat16_t, 128>>("bf16, head_dim 128");
  check_instance<pf::Traits<half_t, 64>>("fp16, head_dim 64");
  check_instance<pf::Traits<half_t, 128>>("fp16, head_dim 128");
  check_walker();
  check_tile_mask();
  check_vertical_slash();
  if (g_failures) {
    std::printf("prefill_layout_check: %d FAILED checks\n", g_failures);
    return 1;
  }
  std::printf("prefill_layout_check: OK\n");
  return 0;
}
