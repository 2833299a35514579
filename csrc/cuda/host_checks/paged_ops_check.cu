// Host checks of the CUDA paged-cache kernels' thread work (cuda/paged/paged_ops.cuh,
// write_runs.h) and of the selection keys (select_key, paged.h), run on the CPU:
//   write   for random writes (grouped like PagedKVCache's, or page ids in any order with
//           pages and slots repeated; float32/bf16/fp16; 16-byte and element slices; head
//           dims with one or several slices per lane; strided pages and sources; keys with
//           -0, +0, NaN, +-inf), every (run, KV head, lane) of the kernel's grid runs
//           write_item, and the pages and metadata must equal, bit for bit, the CPU
//           engine's write loop (paged.h write_token_head, head by head, in call order);
//   scores  every lane's bound_partials, summed in the kernel's butterfly order, within
//           float32 rounding of the float64 bound, for groups of 1 to 20 query heads;
//   select  the k smallest select_key values of a row list exactly the pages of the Quest
//           rule (forced first/last pages, then by score, ties to the lower page, NaN lowest,
//           -0 == +0; every page when k covers the row), for random rows with heavy ties.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "../paged/paged_ops.cuh"
#include "../paged/write_runs.h"
#include "check.h"

using namespace sparse_attn;
using namespace sparse_attn::cuda;
using namespace sparse_attn::cuda::paged;

namespace {

std::mt19937_64 rng(20261201);

int64_t uniform(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }

// A value drawn mostly from N(0, 1), sometimes a special one (the kernels' comparisons must
// treat them as the CPU engine does).
float draw(bool specials) {
  if (specials) {
    switch (uniform(0, 15)) {
      case 0: return 0.f;
      case 1: return -0.f;
      case 2: return NAN;
      case 3: return INFINITY;
      case 4: return -INFINITY;
      case 5: return 1.f;  // repeated values
      default: break;
    }
  }
  return std::normal_distribution<float>(0.f, 1.f)(rng);
}

template <typename T> T from_f(float x);
template <> float from_f<float>(float x) { return x; }
template <> __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __half from_f<__half>(float x) { return __float2half(x); }

// 16-byte aligned element buffer.
template <typename T>
struct Buf {
  std::vector<uint4> raw;
  int64_t n;
  explicit Buf(int64_t n_) : raw((n_ * sizeof(T) + 15) / 16 + 1), n(n_) {}
  T* p() { return reinterpret_cast<T*>(raw.data()); }
  void fill(bool specials) {
    for (int64_t i = 0; i < n; ++i) p()[i] = from_f<T>(draw(specials));
  }
  bool same(Buf& o) { return std::memcmp(p(), o.p(), n * sizeof(T)) == 0; }
};

// The CPU engine's write loop (paged_cache_kernel.cpp write_tokens): its shared per-token
// step, one head after another, tokens in call order.
template <typename T>
void cpu_write(const PagedKVWrite& w) {
  for (int64_t g = 0; g < w.heads_kv; ++g)
    for (int64_t n = 0; n < w.ntokens; ++n) write_token_head<T>(w, n, g);
}

// ---------------------------------------------------------------- write

template <typename T, int N>
void check_write_case(int trial) {
  const int64_t D = N * uniform(1, 12) * (uniform(0, 4) == 0 ? 8 : 1);  // sometimes > 32 slices
  const int64_t Hkv = uniform(1, 3), ps = int64_t(1) << uniform(0, 4), num_pages = uniform(1, 12);
  const bool head_major = uniform(0, 1), padded_src = uniform(0, 1), specials = uniform(0, 1);
  // tokens: PagedKVCache-like (sequences of ascending positions on their own pages) or any
  std::vector<int32_t> ids, slots;
  if (uniform(0, 1)) {
    std::vector<int32_t> perm(num_pages);
    for (int64_t i = 0; i < num_pages; ++i) perm[i] = int32_t(i);
    std::shuffle(perm.begin(), perm.end(), rng);
    int64_t next = 0;
    while (next < num_pages) {
      const int64_t npg = std::min<int64_t>(uniform(1, 3), num_pages - next);
      const int64_t start = uniform(0, npg * ps - 1), len = uniform(1, npg * ps - start);
      for (int64_t t = start; t < start + len; ++t)
        ids.push_back(perm[next + t / ps]), slots.push_back(int32_t(t % ps));
      next += npg;
    }
  } else {
    const int64_t n = uniform(0, 3 * ps * num_pages);
    for (int64_t t = 0; t < n; ++t) {
      ids.push_back(int32_t(uniform(0, num_pages - 1)));
      slots.push_back(int32_t(uniform(0, ps - 1)));
    }
  }
  const int64_t ntok = int64_t(ids.size());
  const int64_t src_row = Hkv * D + (padded_src ? N : 0);
  Buf<T> k(std::max<int64_t>(ntok, 1) * src_row), v(std::max<int64_t>(ntok, 1) * src_row);
  k.fill(specials), v.fill(specials);
  const int64_t pages_n = num_pages * ps * Hkv * D;
  Buf<T> kp(pages_n), vp(pages_n), mx(num_pages * Hkv * D), mn(num_pages * Hkv * D);
  kp.fill(false), vp.fill(false), mx.fill(specials), mn.fill(specials);  // stale contents
  Buf<T> kp2 = kp, vp2 = vp, mx2 = mx, mn2 = mn;

  PagedKVWrite w;
  w.ntokens = ntok, w.heads_kv = Hkv, w.head_dim = D;
  w.page_ids = ids.data(), w.slots = slots.data();
  w.k = k.p(), w.v = v.p();
  w.src_stride[0] = w.v_src_stride[0] = src_row, w.src_stride[1] = w.v_src_stride[1] = D;
  if (head_major) {  // PagedKVCache's [num_pages, Hkv, ps, D] storage seen as [num_pages, ps, Hkv, D]
    w.page_stride[0] = Hkv * ps * D, w.page_stride[1] = D, w.page_stride[2] = ps * D;
  } else {
    w.page_stride[0] = ps * Hkv * D, w.page_stride[1] = Hkv * D, w.page_stride[2] = D;
  }
  w.meta_stride[0] = Hkv * D, w.meta_stride[1] = D;
  PagedKVWrite wref = w;
  wref.k_pages = kp2.p(), wref.v_pages = vp2.p(), wref.k_max = mx2.p(), wref.k_min = mn2.p();
  cpu_write<T>(wref);

  w.k_pages = kp.p(), w.v_pages = vp.p(), w.k_max = mx.p(), w.k_min = mn.p();
  const HostWriteRuns runs = build_write_runs(ids.data(), ntok);
  // runs: each page in at most one run, tokens of a run on one page, every token once
  std::vector<int> seen(ntok, 0);
  std::set<int32_t> run_pages;
  for (int64_t r = 0; r < runs.runs; ++r) {
    const int64_t t0 = runs.run_start.empty() ? r : runs.run_start[r];
    const int64_t t1 = runs.run_start.empty() ? r + 1 : runs.run_start[r + 1];
    CHECK(t1 > t0, "trial %d: empty run %lld", trial, (long long)r);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = runs.order.empty() ? t : runs.order[t];
      seen[n]++;
      CHECK(ids[n] == ids[runs.order.empty() ? t0 : runs.order[t0]], "trial %d: run %lld mixes pages", trial,
            (long long)r);
      if (t > t0) CHECK(n > (runs.order.empty() ? t - 1 : runs.order[t - 1]), "trial %d: run out of call order", trial);
    }
    CHECK(run_pages.insert(ids[runs.order.empty() ? t0 : runs.order[t0]]).second, "trial %d: page in two runs", trial);
  }
  for (int64_t n = 0; n < ntok; ++n)
    CHECK(seen[n] == 1, "trial %d: token %lld in %d runs", trial, (long long)n, seen[n]);

  WriteView view;
  view.w = w, view.runs = runs.runs;
  view.order = runs.order.empty() ? nullptr : runs.order.data();
  view.run_start = runs.run_start.empty() ? nullptr : runs.run_start.data();
  // The kernel's grid: 128 threads a block, thread -> (item, lane) as in paged_kv_write_kernel.
  const int L = lanes_per_row(D / N);
  const int64_t items = runs.runs * Hkv, blocks = (items + 128 / L - 1) / (128 / L);
  std::vector<int> hits(items * L, 0);
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int tid = 0; tid < 128; ++tid) {
      const int64_t item = blk * (128 / L) + tid / L;
      if (item >= items) continue;
      hits[item * L + tid % L]++;
      write_item<T, N>(view, item, tid % L, L);
    }
  CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }), "trial %d: grid coverage", trial);
  CHECK(kp.same(kp2) && vp.same(vp2), "trial %d: pages differ (D=%lld N=%d ntok=%lld runs=%lld sorted=%d)", trial,
        (long long)D, N, (long long)ntok, (long long)runs.runs, int(!runs.order.empty()));
  CHECK(mx.same(mx2) && mn.same(mn2), "trial %d: metadata differs (D=%lld N=%d ntok=%lld runs=%lld sorted=%d)", trial,
        (long long)D, N, (long long)ntok, (long long)runs.runs, int(!runs.order.empty()));
}

// ---------------------------------------------------------------- scores

template <typename T, int N>
void check_scores_case(int trial) {
  const int64_t D = N * uniform(1, 12) * (uniform(0, 4) == 0 ? 8 : 1);
  const int64_t G = uniform(1, 20);
  Buf<T> mxb(D), mnb(D);
  std::vector<float> q(G * D);
  for (auto& x : q) x = to_f(from_f<T>(draw(false)));  // queries as the dtype holds them
  for (int64_t d = 0; d < D; ++d) {  // kmax >= kmin, sometimes both of one sign
    const float a = to_f(from_f<T>(draw(false) + (uniform(0, 3) == 0 ? 3.f : 0.f)));
    const float b = to_f(from_f<T>(draw(false)));
    mxb.p()[d] = from_f<T>(std::max(a, b)), mnb.p()[d] = from_f<T>(std::min(a, b));
  }
  const int L = lanes_per_row(D / N);
  for (int64_t h0 = 0; h0 < G; h0 += kHeadBlock) {
    std::vector<float> lanes(L * kHeadBlock);
    for (int l = 0; l < L; ++l)
      bound_partials<T, N>(mxb.p(), mnb.p(), q.data(), D, G, h0, l, L, &lanes[l * kHeadBlock]);
    for (int h = 0; h < kHeadBlock && h0 + h < G; ++h) {
      std::vector<float> x(L);
      for (int l = 0; l < L; ++l) x[l] = lanes[l * kHeadBlock + h];
      for (int off = L / 2; off > 0; off /= 2) {  // group_sum's butterfly
        std::vector<float> y(L);
        for (int l = 0; l < L; ++l) y[l] = x[l] + x[l ^ off];
        x = y;
      }
      double want = 0, mag = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double qd = q[(h0 + h) * D + d];
        const double a = qd * to_f(mxb.p()[d]), b = qd * to_f(mnb.p()[d]);
        want += std::max(a, b), mag += std::max(std::fabs(a), std::fabs(b));
      }
      for (int l = 0; l < L; ++l)
        CHECK(std::fabs(x[l] - want) <= 1e-5 * mag + 1e-30, "trial %d: lane %d head %lld bound %g, want %g", trial,
              l, (long long)(h0 + h), x[l], want);
    }
  }
}

// ---------------------------------------------------------------- select

void check_select_case(int trial) {
  const int64_t P = uniform(0, 60), n = uniform(0, P), sink = uniform(0, 4), recent = uniform(0, 4);
  const int64_t bp = uniform(1, 70);
  const int64_t k = std::min(std::max(bp, sink + recent), P);  // as the op computes it
  std::vector<float> sc(P);
  const float pool[] = {0.f, -0.f, 1.f, -1.f, 2.5f, NAN, INFINITY, -INFINITY, 1e-30f, -1e30f};
  for (auto& x : sc) x = uniform(0, 2) ? pool[uniform(0, 9)] : draw(false);
  std::vector<int64_t> keys(P);
  for (int64_t j = 0; j < P; ++j) keys[j] = select_key(sc[j], j, n, sink, recent);
  std::vector<int64_t> sorted_keys = keys;
  std::sort(sorted_keys.begin(), sorted_keys.end());
  std::vector<int64_t> in_seq(keys.begin(), keys.begin() + n);
  std::sort(in_seq.begin(), in_seq.end());
  CHECK(std::adjacent_find(in_seq.begin(), in_seq.end()) == in_seq.end(), "trial %d: equal keys in a row", trial);
  for (int64_t j = n; j < P; ++j) CHECK(keys[j] == kSelectNoPage, "trial %d: page past the sequence keyed", trial);
  std::vector<int32_t> got;  // the op: k smallest keys, pages sorted, the first min(n, k) valid
  for (int64_t t = 0; t < k; ++t) got.push_back(select_key_page(sorted_keys[t]));
  std::sort(got.begin(), got.end());
  const int64_t count = std::min(n, k);
  for (int64_t t = count; t < k; ++t) CHECK(got[t] == 0x7fffffff, "trial %d: entry past the count is a page", trial);
  got.resize(count);

  std::set<int64_t> want;  // the rule, from first principles
  if (n <= k) {
    for (int64_t j = 0; j < n; ++j) want.insert(j);
  } else {
    for (int64_t j = 0; j < std::min(sink, n); ++j) want.insert(j);
    for (int64_t j = std::max<int64_t>(n - recent, 0); j < n; ++j) want.insert(j);
    std::vector<int64_t> rest;
    for (int64_t j = 0; j < n; ++j)
      if (!want.count(j)) rest.push_back(j);
    auto norm = [&](int64_t j) { return std::isnan(sc[j]) ? -INFINITY : (sc[j] == 0.f ? 0.f : sc[j]); };
    std::stable_sort(rest.begin(), rest.end(), [&](int64_t a, int64_t b) { return norm(a) > norm(b); });
    const int64_t take = k - int64_t(want.size());
    CHECK(take >= 0, "trial %d: forced pages exceed k", trial);
    for (int64_t t = 0; t < take; ++t) want.insert(rest[t]);
  }
  CHECK(std::vector<int64_t>(got.begin(), got.end()) == std::vector<int64_t>(want.begin(), want.end()),
        "trial %d: selection differs (P=%lld n=%lld k=%lld sink=%lld recent=%lld)", trial, (long long)P,
        (long long)n, (long long)k, (long long)sink, (long long)recent);
}

}  // namespace

int main() {
  for (int t = 0; t < 150; ++t) {
    check_write_case<float, 4>(t), check_write_case<float, 1>(t);
    check_write_case<__nv_bfloat16, 8>(t), check_write_case<__nv_bfloat16, 1>(t);
    check_write_case<__half, 8>(t), check_write_case<__half, 1>(t);
  }
  for (int t = 0; t < 200; ++t) {
    check_scores_case<float, 4>(t), check_scores_case<float, 1>(t);
    check_scores_case<__nv_bfloat16, 8>(t), check_scores_case<__nv_bfloat16, 1>(t);
    check_scores_case<__half, 8>(t), check_scores_case<__half, 1>(t);
  }
  for (int t = 0; t < 3000; ++t) check_select_case(t);
  if (g_failures) {
    std::printf("paged_ops_check: %d failures\n", g_failures);
    return 1;
  }
  std::printf("paged_ops_check: write (900 writes), scores (1200 pages), select (3000 rows): OK\n");
  return 0;
}
