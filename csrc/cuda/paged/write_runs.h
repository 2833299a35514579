// Groups the tokens of a paged_kv_write by page, on the host (the glue has the page ids there
// anyway: it validates them). The CUDA write kernel gives each (run, KV head) to one thread
// group that walks the run's tokens in order, which is the CPU engine's per-head token loop
// restricted to one page: the metadata fold and the last write of a repeated slot come out
// the same. Plain C++, no CUDA; checked by host_checks/paged_ops_check.cu.
//
// Runs are the maximal stretches of equal consecutive page ids. If every page has one
// stretch (what PagedKVCache writes: each sequence's positions ascending, pages not shared),
// that is the grouping, in call order (order empty). Otherwise the tokens are stably sorted
// by page (order = the permutation), which keeps each page's tokens in call order.
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace sparse_attn::cuda {

struct HostWriteRuns {
  std::vector<int32_t> order;      // empty: identity
  std::vector<int32_t> run_start;  // runs + 1 entries; empty: one token per run
  int64_t runs = 0;
};

inline std::vector<int32_t> run_starts(const int32_t* page_ids, const int32_t* order, int64_t n) {
  std::vector<int32_t> starts;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t a = order ? order[t] : t;
    if (t == 0 || page_ids[a] != page_ids[order ? order[t - 1] : t - 1]) starts.push_back(static_cast<int32_t>(t));
  }
  starts.push_back(static_cast<int32_t>(n));
  return starts;
}

// n < 2^31 tokens.
inline HostWriteRuns build_write_runs(const int32_t* page_ids, int64_t n) {
  HostWriteRuns r;
  r.run_start = run_starts(page_ids, nullptr, n);
  r.runs = static_cast<int64_t>(r.run_start.size()) - 1;
  std::vector<int32_t> pages(r.runs);
  for (int64_t i = 0; i < r.runs; ++i) pages[i] = page_ids[r.run_start[i]];
  std::sort(pages.begin(), pages.end());
  if (std::adjacent_find(pages.begin(), pages.end()) != pages.end()) {  // a page in two stretches
    r.order.resize(n);
    std::iota(r.order.begin(), r.order.end(), 0);
    std::stable_sort(r.order.begin(), r.order.end(), [&](int32_t a, int32_t b) { return page_ids[a] < page_ids[b]; });
    r.run_start = run_starts(page_ids, r.order.data(), n);
    r.runs = static_cast<int64_t>(r.run_start.size()) - 1;
  }
  if (r.order.empty() && r.runs == n) r.run_start.clear();  // e.g. a decode step: one token per page
  return r;
}

}  // namespace sparse_attn::cuda
