// Host-side (CPU) check of the smoke kernel's CuTe tile logic; see run.sh.
// It compiles the very functions the kernel uses (../smoke_tile.cuh) and checks:
//   1. the tiled copy's per-thread partition covers every element of a 64x64 tile exactly
//      once (load side and store side), with 16 elements per thread;
//   2. the shared tile layout is a bijection onto [0, 64*64);
//   3. each copy step of a warp hits 32 distinct shared-memory banks (no bank conflicts);
//   4. running load_tile / store_tile for every block and thread on the CPU (the kernel's
//      two phases, the store with reversed threads) fills shared memory with exactly the
//      in-matrix elements (zeros elsewhere), copies ragged matrices exactly and writes
//      nothing outside them.
#include <cstdio>
#include <vector>

#include "check.h"

#include "../smoke_tile.cuh"

using namespace cute;
namespace sm = sparse_attn::cuda::smoke;


constexpr int T = sm::kTile;

// 1. Exactly-once coverage: partition an identity tensor (element = its (row, col)) per
// thread and count how often each (row, col) is handed out.
static void check_coverage() {
  Tensor id = make_identity_tensor(sm::TileShape{});
  auto tiled = sm::make_smoke_tiled_copy();
  CHECK(int(size(tiled)) == sm::kThreads, "tiled copy has %d threads", int(size(tiled)));
  for (int side = 0; side < 2; ++side) {
    std::vector<int> count(T * T, 0);
    for (int tid = 0; tid < sm::kThreads; ++tid) {
      auto thr = tiled.get_thread_slice(tid);
      Tensor part = side == 0 ? thr.partition_S(id) : thr.partition_D(id);
      CHECK(int(size(part)) == T * T / sm::kThreads, "thread %d owns %d elements", tid, int(size(part)));
      for (int i = 0; i < size(part); ++i) {
        int r = get<0>(part(i)), c = get<1>(part(i));
        CHECK(0 <= r && r < T && 0 <= c && c < T, "thread %d element %d -> (%d,%d)", tid, i, r, c);
        if (0 <= r && r < T && 0 <= c && c < T) ++count[r * T + c];
      }
    }
    for (int e = 0; e < T * T; ++e)
      CHECK(count[e] == 1, "%s partition covers (%d,%d) %d times", side ? "dst" : "src", e / T,
            e % T, count[e]);
  }
}

// 2. The shared layout maps the 64x64 tile one-to-one onto [0, 4096).
static void check_smem_bijection() {
  sm::SmemLayout L{};
  CHECK(int(cosize(L)) == T * T, "cosize %d", int(cosize(L)));
  std::vector<int> hit(T * T, 0);
  for (int r = 0; r < T; ++r)
    for (int c = 0; c < T; ++c) {
      int off = L(r, c);
      CHECK(0 <= off && off < T * T, "offset %d of (%d,%d)", off, r, c);
      if (0 <= off && off < T * T) ++hit[off];
    }
  for (int o = 0; o < T * T; ++o) CHECK(hit[o] == 1, "smem offset %d hit %d times", o, hit[o]);
}

// 3. For every copy step i, the 32 lanes of each warp address 32 distinct 4-byte banks.
static void check_banks() {
  Tensor offs = make_tensor(counting_iterator<int>(0), sm::SmemLayout{});  // element = its offset
  auto tiled = sm::make_smoke_tiled_copy();
  for (int warp = 0; warp < sm::kThreads / 32; ++warp)
    for (int i = 0; i < T * T / sm::kThreads; ++i) {
      unsigned banks = 0;
      for (int lane = 0; lane < 32; ++lane) {
        Tensor part = tiled.get_thread_slice(warp * 32 + lane).partition_D(offs);
        banks |= 1u << (int(part(i)) % 32);
      }
      CHECK(banks == 0xffffffffu, "warp %d step %d: bank mask %08x", warp, i, banks);
    }
}

// 4. The kernel, simulated: every block runs phase 1 for all threads, then (the barrier)
// phase 2 for all threads, each with its own store_thread(tid), as the kernel does.
static void check_copy(int rows, int cols, int ld_src, int ld_dst) {
  const float kSentinel = -12345.0f;
  std::vector<float> src(size_t(rows) * ld_src), dst(size_t(rows) * ld_dst, kSentinel);
  for (size_t k = 0; k < src.size(); ++k) src[k] = float(k % 100003) + 0.25f;
  std::vector<float> smem(T * T);
  const int tiles_m = (rows + T - 1) / T, tiles_n = (cols + T - 1) / T;
  for (int tm = 0; tm < tiles_m; ++tm)
    for (int tn = 0; tn < tiles_n; ++tn) {
      std::fill(smem.begin(), smem.end(), kSentinel);
      for (int tid = 0; tid < sm::kThreads; ++tid)
        sm::load_tile(make_gmem_ptr(src.data()), make_smem_ptr(smem.data()), rows, cols, ld_src, tm, tn, tid);
      // Phase 1 result: the tile's elements inside the matrix, zeros outside (which also
      // shows that the load never read past the matrix edge into the ld padding).
      for (int i = 0; i < T; ++i)
        for (int j = 0; j < T; ++j) {
          int r = tm * T + i, c = tn * T + j;
          float want = (r < rows && c < cols) ? src[size_t(r) * ld_src + c] : 0.0f;
          CHECK(smem[i * T + j] == want, "tile (%d,%d) smem(%d,%d) = %g, want %g", tm, tn, i, j,
                smem[i * T + j], want);
        }
      for (int tid = 0; tid < sm::kThreads; ++tid)
        sm::store_tile(make_gmem_ptr(dst.data()), make_smem_ptr(smem.data()), rows, cols, ld_dst, tm,
                       tn, sm::store_thread(tid));
    }
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < ld_dst; ++c) {
      float got = dst[size_t(r) * ld_dst + c];
      float want = c < cols ? src[size_t(r) * ld_src + c] : kSentinel;
      CHECK(got == want, "%dx%d ld %d/%d: dst(%d,%d) = %g, want %g", rows, cols, ld_src, ld_dst, r,
            c, got, want);
    }
}

int main() {
  check_coverage();
  check_smem_bijection();
  check_banks();
  const int shapes[][4] = {{1, 1, 1, 1},     {64, 64, 64, 64},   {63, 65, 65, 70},
                           {65, 63, 80, 63}, {130, 200, 257, 203}, {200, 1, 3, 1},
                           {1, 300, 300, 301}, {128, 128, 128, 128}};
  for (auto& s : shapes) check_copy(s[0], s[1], s[2], s[3]);
  if (g_failures) {
    std::printf("layout_check: %d FAILED checks\n", g_failures);
    return 1;
  }
  std::printf("layout_check: OK (coverage, smem bijection, banks, %d ragged copies)\n",
              int(sizeof(shapes) / sizeof(shapes[0])));
  return 0;
}
