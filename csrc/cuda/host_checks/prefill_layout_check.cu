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
//   7. the kernel's own row loads (tile_loads.cuh) run on the CPU for every thread with a
//      copy that checks each source address: load_rows fills rows [0, valid) of a chunk
//      (the ragged tail of a sequence too) and zeros the rest, reading no row past the
//      sequence; gather_rows fills row r with key cols[c0 + r] (random lists, ragged last
//      tile) and zeros past the list, records each row's key exactly once, and reads only
//      listed rows;
//   8. TileMask + TileChunks (the kernel's chunk order, full-chunk shortcut and element
//      mask), replayed for every tile of random block-sparse and streaming problems
//      (ragged, Sq != Sk, GQA, broadcast lists, full lists, causal or not), keep exactly the
//      (query, key) pairs of a mask built from first principles, each once;
//   9. vertical-slash problems (random columns and offsets, out-of-range entries, broadcast
//      heads, causal or not, Sq != Sk): the bodies of vs_bits_kernel (every thread's
//      set_bits share, threads in random order) give VSBits::build_head's words (the CPU
//      op's), vs_index_kernel's rows (vs_index_flat_row for every row, in random order) are
//      the blocks and columns of a direct construction with nothing dropped by the
//      capacities the binding allocates, and the replay of 8 -- with the gathered column
//      tiles filled by gather_rows itself and masked by the keys it recorded -- keeps
//      exactly the pairs of the pattern.
#include <cstdio>
#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "check.h"

#include "../prefill/prefill_traits.cuh"
#include "../prefill/tile_loads.cuh"
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

// 7. the kernel's row loads, run on the CPU. Element k of row r of every head holds the
// raw value enc(r, c) (injective for rows < 512, head_dim <= 128); other heads hold 0xffff.
static uint16_t enc(int64_t row, int64_t col, int64_t d) { return uint16_t(row * d + col + 1); }

// One vector of a load: a plain element copy; a source outside rows [0, rows), columns
// [0, d) of the head at `base` (row stride ld) is counted in *bad and not read.
template <class T>
struct CheckedCopy {
  const T* base;
  int64_t ld, rows, d;
  int* bad;
  template <class TiledCopy, class Src, class Dst>
  CUTE_HOST_DEVICE void operator()(const TiledCopy&, const Src& src, Dst&& dst) const {
    for (int i = 0; i < int(size(src)); ++i) {
      const int64_t off = &src(i) - base;
      if (off < 0 || off / ld >= rows || off % ld >= d) {
        ++*bad;
      } else {
        dst(i) = src(i);
      }
    }
  }
};

// The keys' rows of head `base` (row stride ld) gathered into a shared tile by every thread
// of the kernel's gather_rows; checks the tile and the recorded keys. Returns the keys.
template <class Tr>
static std::vector<int32_t> gather_and_check(const typename Tr::Element* base, int64_t ld, int64_t seqlen_k,
                                             const int32_t* cols, int64_t c0, int64_t n, const char* what, int it) {
  using T = typename Tr::Element;
  constexpr int BN = Tr::kBlockN, D = Tr::kHeadDim;
  std::vector<T> sm(BN * D, T::bitcast(0xffff));
  std::vector<int32_t> keys(BN, -5);
  Tensor sK = make_tensor(make_smem_ptr(sm.data()), typename Tr::SmemLayoutKV{});
  int bad = 0;
  const CheckedCopy<T> cp{base, ld, seqlen_k, D, &bad};
  for (int t = 0; t < Tr::kThreads; ++t) pf::gather_rows<Tr>(base, ld, cols, c0, n, sK, keys.data(), t, cp);
  CHECK(bad == 0, "%s case %d: gather_rows read %d elements outside the head's rows", what, it, bad);
  for (int r = 0; r < BN; ++r) {
    const int32_t want = c0 + r < n ? cols[c0 + r] : pf::TileMask::kNoKey;
    CHECK(keys[r] == want, "%s case %d: row %d recorded key %d, want %d", what, it, r, keys[r], want);
    for (int c = 0; c < D; ++c) {
      const uint16_t v = sK(r, c).raw(), w = want == pf::TileMask::kNoKey ? 0 : enc(want, c, D);
      CHECK(v == w, "%s case %d: gathered tile (%d, %d) = %#x, want %#x", what, it, r, c, v, w);
    }
  }
  return keys;
}

// A [seqlen_k, heads, D] tensor (row stride ld >= heads * D) with head g encoded, the others 0xffff.
template <class T>
static std::vector<T> encoded_keys(int64_t seqlen_k, int64_t ld, int64_t g, int64_t d) {
  std::vector<T> k(std::max<int64_t>(seqlen_k, 1) * ld, T::bitcast(0xffff));
  for (int64_t r = 0; r < seqlen_k; ++r)
    for (int64_t c = 0; c < d; ++c) k[r * ld + g * d + c] = T::bitcast(enc(r, c, d));
  return k;
}

template <class Tr>
static void check_loads(const char* name) {
  using T = typename Tr::Element;
  constexpr int BN = Tr::kBlockN, D = Tr::kHeadDim;
  std::mt19937 rng(31);
  for (int it = 0; it < 60; ++it) {
    const int64_t Sk = 1 + rng() % 450, H = 1 + rng() % 3, g = rng() % H, ld = H * D + 8 * (rng() % 3);
    const std::vector<T> K = encoded_keys<T>(Sk, ld, g, D);
    const T* base = K.data() + g * D;
    // every chunk of the sequence, the last one ragged
    for (int64_t k0 = 0; k0 < Sk; k0 += BN) {
      std::vector<T> sm(BN * D, T::bitcast(0xffff));
      Tensor sK = make_tensor(make_smem_ptr(sm.data()), typename Tr::SmemLayoutKV{});
      const int valid = int(std::min<int64_t>(Sk - k0, BN));
      Tensor gk = make_tensor(make_gmem_ptr(base + k0 * ld), make_shape(Int<BN>{}, Int<D>{}), make_stride(ld, _1{}));
      int bad = 0;
      const CheckedCopy<T> cp{base, ld, Sk, D, &bad};
      for (int t = 0; t < Tr::kThreads; ++t) pf::load_rows<Tr>(gk, sK, valid, t, cp);
      CHECK(bad == 0, "%s load case %d: load_rows read %d elements past the sequence or the head", name, it, bad);
      for (int r = 0; r < BN; ++r)
        for (int c = 0; c < D; ++c) {
          const uint16_t v = sK(r, c).raw(), w = r < valid ? enc(k0 + r, c, D) : 0;
          CHECK(v == w, "%s load case %d: chunk %lld (%d, %d) = %#x, want %#x", name, it, (long long)k0, r, c, v, w);
        }
    }
    // gathered tiles of a random ascending column list (as vs_columns writes them)
    std::vector<int32_t> cols;
    const unsigned every = 1 + rng() % 4;
    for (int64_t j = 0; j < Sk; ++j)
      if (rng() % every == 0) cols.push_back(int32_t(j));
    for (int64_t c0 = 0; c0 < int64_t(cols.size()); c0 += BN)
      gather_and_check<Tr>(base, ld, Sk, cols.data(), c0, int64_t(cols.size()), name, it);
  }
}

// 8. whole problems through TileMask and TileChunks, as the kernel walks them
static void replay(const sparse_attn::cuda::PrefillArgs& a, const std::vector<char>& want_bhqk, int it) {
  using Tr = pf::Traits<half_t, 64>;  // the gathered tiles: any instance (the loads are checked per instance)
  const auto& p = a.p;
  const int64_t Sq = p.seqlen_q, Sk = p.seqlen_k;
  const bool vs = a.mode == sparse_attn::cuda::PrefillMode::kVerticalSlash;
  const std::vector<half_t> K = encoded_keys<half_t>(Sk, 64, 0, 64);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h) {
      std::vector<char> got(Sq * Sk, 0);
      for (int64_t q0 = 0; q0 < Sq; q0 += 64) {
        const int64_t rows = std::min<int64_t>(64, Sq - q0);
        const pf::TileMask tm = pf::TileMask::of(a, q0, rows);
        pf::TileChunks chunks{tm.walker(a, b, h, 64)};
        const int32_t* cols = vs ? tm.vs_columns_of(a, b, h, &chunks.ncols) : nullptr;
        const sparse_attn::VSBits vb = vs ? tm.vs_bits(a, b, h) : sparse_attn::VSBits{nullptr, nullptr, 0};
        for (int64_t k0 = chunks.next(); k0 != -1; k0 = chunks.next()) {
          if (pf::TileChunks::gathered(k0)) {  // the keys gather_rows recorded, under column_visible
            CHECK(vs, "case %d: a gathered chunk outside vertical-slash", it);
            const std::vector<int32_t> keys =
                gather_and_check<Tr>(K.data(), 64, Sk, cols, pf::TileChunks::first_column(k0), chunks.ncols,
                                     "replay", it);
            for (int64_t r = q0; r < q0 + rows; ++r)
              for (const int32_t key : keys)
                if (tm.column_visible(r, key)) {
                  CHECK(key >= 0 && key < Sk, "case %d: column %d out of range", it, key);
                  if (key >= 0 && key < Sk) ++got[r * Sk + key];
                }
            continue;
          }
          CHECK(k0 % 64 == 0 && k0 >= 0 && k0 < Sk, "case %d: chunk at %lld", it, (long long)k0);
          const bool full = vs ? tm.vs_chunk_full(vb, k0) : tm.chunk_full(k0, k0 + 64);
          for (int64_t r = q0; r < q0 + 64; ++r) {  // the padding rows of a ragged tile too
            const uint64_t bits = vs ? tm.vs_row_bits(vb, r, k0) : 0;
            for (int64_t j = k0; j < k0 + 64; ++j) {
              const bool kept = full || (vs ? ((bits >> (j - k0)) & 1) != 0 : tm.visible(r, j));
              if (!kept || r >= q0 + rows) continue;  // a padding row's scores are never stored
              CHECK(j < Sk, "case %d: kept key %lld past the sequence", it, (long long)j);
              if (j < Sk) ++got[r * Sk + j];
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

// 9. vertical-slash problems: the device index built on the host by the index kernels' code
// The index rows of a direct construction: for row m of (b, h), the key blocks crossed by a
// diagonal (offsets ds, 0 included) at the row's key positions and the columns (cs) below
// col_limit outside them.
static void check_index_rows(const sparse_attn::VerticalSlashIndex& idx, const sparse_attn::VSIndexGeometry& g,
                             int64_t bh, const std::set<int64_t>& cs, const std::set<int64_t>& ds, int it) {
  const int64_t bs = g.block_size, off = g.seqlen_k - g.seqlen_q;
  for (int64_t m = 0; m < g.blocks_q(); ++m) {
    const int64_t i = bh * g.blocks_q() + m, p0 = m * bs + off, p1 = std::min(p0 + bs, g.seqlen_k);
    std::set<int64_t> blocks;
    for (int64_t pos = std::max<int64_t>(p0, 0); pos < p1; ++pos)
      for (const int64_t d : ds)
        if (d <= pos) blocks.insert((pos - d) / bs);
    std::vector<int32_t> want_offs, want_cols;
    for (const int64_t n : blocks) want_offs.push_back(int32_t(n * bs));
    for (const int64_t j : cs)
      if (j < (g.col_limit_all ? g.seqlen_k : p1) && !blocks.count(j / bs)) want_cols.push_back(int32_t(j));
    const int32_t nb = idx.block_count[i], nc = idx.column_count[i];
    CHECK(nb == int32_t(want_offs.size()) && nc == int32_t(want_cols.size()),
          "index case %d row %lld (block %lld): %d blocks and %d columns, want %zu and %zu", it, (long long)i,
          (long long)bs, nb, nc, want_offs.size(), want_cols.size());
    if (nb != int32_t(want_offs.size()) || nc != int32_t(want_cols.size())) continue;
    for (int32_t k = 0; k < idx.max_blocks; ++k)
      CHECK(idx.block_offset[i * idx.max_blocks + k] == (k < nb ? want_offs[k] : 0), "index case %d row %lld: block %d",
            it, (long long)i, k);
    for (int32_t k = 0; k < idx.max_columns; ++k)
      CHECK(idx.column_index[i * idx.max_columns + k] == (k < nc ? want_cols[k] : 0),
            "index case %d row %lld: column %d", it, (long long)i, k);
  }
}

// What vs_build_index does, on the host with the kernels' own code: vs_bits_kernel (zeroed
// words, then each thread's VSBits::set_bits share, threads in random order; `step` stands
// for the thread count) and vs_index_kernel (vs_index_flat_row, rows in random order).
// Checks the bits against the CPU op's (VSBits::build_head). Returns the bits.
static std::vector<uint64_t> build_index_as_device(const sparse_attn::VerticalSlashParams& v, int64_t batch,
                                                   const sparse_attn::VSIndexGeometry& g, int64_t step,
                                                   const sparse_attn::VerticalSlashIndex& idx, std::mt19937& rng,
                                                   int it) {
  using namespace sparse_attn;
  const int64_t H = g.heads, Sk = g.seqlen_k, words = VSBits::words(Sk);
  std::vector<uint64_t> bits(batch * H * 2 * words, ~uint64_t(0)), cpu(bits.size(), ~uint64_t(0));
  std::vector<int64_t> threads(step);
  for (int64_t t = 0; t < step; ++t) threads[t] = t;
  for (int64_t bh = 0; bh < batch * H; ++bh) {
    uint64_t* cols = bits.data() + VSBits::head_offset(bh, Sk);
    std::fill(cols, cols + 2 * words, 0);
    int64_t nv = 0, ns = 0;
    const int32_t* vl = vs_vertical_row(v, bh / H, bh % H, &nv);
    const int32_t* sl = vs_slash_row(v, bh / H, bh % H, &ns);
    std::shuffle(threads.begin(), threads.end(), rng);
    for (const int64_t t : threads)
      VSBits::set_bits(vl, nv, sl, ns, Sk, cols, cols + words, t, step, [](uint64_t* w, uint64_t m) { *w |= m; });
    VSBits::build_head(v, bh / H, bh % H, H, Sk, cpu.data());
  }
  CHECK(bits == cpu, "case %d: the device bitsets differ from the CPU op's (step %lld)", it, (long long)step);
  std::vector<int64_t> rows(batch * H * g.blocks_q());
  for (int64_t i = 0; i < int64_t(rows.size()); ++i) rows[i] = i;
  std::shuffle(rows.begin(), rows.end(), rng);
  for (const int64_t i : rows) vs_index_flat_row(v, g, bits.data(), i, idx);
  return bits;
}

// Index buffers as the bindings allocate them (capacities at least 1), poisoned.
struct IndexBuffers {
  std::vector<int32_t> bc, cc, bo, ci;
  sparse_attn::VerticalSlashIndex idx;
  IndexBuffers(int64_t rows, int64_t max_blocks, int64_t max_columns)
      : bc(rows, -9), cc(rows, -9), bo(rows * max_blocks, -9), ci(rows * max_columns, -9) {
    idx.max_blocks = max_blocks, idx.max_columns = max_columns;
    idx.block_count = bc.data(), idx.column_count = cc.data(), idx.block_offset = bo.data(),
    idx.column_index = ci.data();
  }
};

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
    const int64_t Hl = rng() % 2 ? H : 1, NV = rng() % (it % 3 ? 40 : 200), NS = rng() % 12;  // some 2-3 column tiles
    std::vector<int32_t> vert(B * Hl * std::max<int64_t>(NV, 1), -1), slash(B * Hl * std::max<int64_t>(NS, 1), -1);
    std::vector<int32_t> vcount(B * Hl), scount(B * Hl);
    for (int64_t l = 0; l < B * Hl; ++l) {
      std::set<int32_t> vs_, ss_;
      const int64_t span = Sk + 20, dens = 1 + rng() % 4;
      for (int64_t i = 0; i < NV; ++i) if (int64_t(rng() % 4) < dens) vs_.insert(int32_t(rng() % span));
      for (int64_t i = 0; i < NS; ++i) if (int64_t(rng() % 4) < dens) ss_.insert(int32_t(rng() % span));
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
    auto lists_of = [&](int64_t b, int64_t h, std::set<int64_t>& cs, std::set<int64_t>& ds) {
      const int64_t l = b * Hl + (Hl == 1 ? 0 : h);
      cs = std::set<int64_t>(vert.begin() + l * v.max_vertical, vert.begin() + l * v.max_vertical + vcount[l]);
      ds = std::set<int64_t>(slash.begin() + l * v.max_slash, slash.begin() + l * v.max_slash + scount[l]);
      ds.insert(0);
    };
    // The attention's index (64-row tiles, columns to seqlen_k when not causal), sized as
    // vertical_slash_attention_cuda sizes it: nothing may be dropped.
    const VSIndexGeometry g{H, Sq, Sk, 64, !p.causal};
    IndexBuffers ib(B * H * g.blocks_q(), std::max<int64_t>(1, std::min<int64_t>(2 * (v.max_slash + 1), (Sk + 63) / 64)),
                    std::max<int64_t>(1, v.max_vertical));
    const std::vector<uint64_t> bits = build_index_as_device(v, B, g, 1 + rng() % 128, ib.idx, rng, it);
    // The index op's (any block size, columns to the block's end), sized as prepare_vs_index does.
    const int64_t bs = std::vector<int64_t>{1, 16, 64, 100, 128}[rng() % 5];
    const VSIndexGeometry gi{H, Sq, Sk, bs, false};
    IndexBuffers ibi(B * H * gi.blocks_q(), std::min<int64_t>(2 * (v.max_slash + 1), (Sk + bs - 1) / bs),
                     v.max_vertical);
    build_index_as_device(v, B, gi, 128, ibi.idx, rng, it);
    for (int64_t bh = 0; bh < B * H; ++bh) {
      std::set<int64_t> cs, ds;
      lists_of(bh / H, bh % H, cs, ds);
      check_index_rows(ib.idx, g, bh, cs, ds, it);
      check_index_rows(ibi.idx, gi, bh, cs, ds, 1000 + it);
    }
    a.vs.bits = bits.data(), a.vs.words = VSBits::words(Sk), a.vs.index = ib.idx;
    // first principles
    std::vector<char> want(B * H * Sq * Sk, 0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        std::set<int64_t> cs, ds;
        lists_of(b, h, cs, ds);
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
  std::printf("  vertical-slash index and tile mask: %d problems\n", cases);
}

int main() {
  check_instance<pf::Traits<bfloat16_t, 64>>("bf16, head_dim 64");
  check_instance<pf::Traits<bfloat16_t, 128>>("bf16, head_dim 128");
  check_instance<pf::Traits<half_t, 64>>("fp16, head_dim 64");
  check_instance<pf::Traits<half_t, 128>>("fp16, head_dim 128");
  check_walker();
  check_loads<pf::Traits<bfloat16_t, 64>>("bf16, head_dim 64");
  check_loads<pf::Traits<bfloat16_t, 128>>("bf16, head_dim 128");
  check_loads<pf::Traits<half_t, 64>>("fp16, head_dim 64");
  check_loads<pf::Traits<half_t, 128>>("fp16, head_dim 128");
  std::printf("  row loads: 4 instances x 60 sequences\n");
  check_tile_mask();
  check_vertical_slash();
  if (g_failures) {
    std::printf("prefill_layout_check: %d FAILED checks\n", g_failures);
    return 1;
  }
  std::printf("prefill_layout_check: OK\n");
  return 0;
}
