// See output_cache.h. One mutex-protected list, newest last: the buffers are few (a model
// has a handful of output shapes) and large, so a linear scan costs nothing next to them.
#include "output_cache.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

namespace sparse_attn::cpu {
namespace {

size_t limit_from_env() {
  const char* s = std::getenv("SPARSE_ATTN_OUTPUT_CACHE_MB");
  if (s == nullptr || *s == '\0') return size_t(512) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(s, &end, 10);
  TORCH_CHECK_VALUE(end != s && *end == '\0' && mb >= 0, "SPARSE_ATTN_OUTPUT_CACHE_MB must be a whole number of "
                    "MiB >= 0, got '", s, "'");
  return static_cast<size_t>(mb) << 20;
}

class OutputCache {
 public:
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = free_.size(); i-- > 0;) {
      if (free_[i].first == bytes) {
        void* p = free_[i].second;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        held_ -= bytes;
        return p;
      }
    }
    return nullptr;
  }
  // Called by a tensor's deleter, on whichever thread drops the last reference.
  void give_back(void* p, size_t bytes) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.emplace_back(bytes, p);
      held_ += bytes;
      while (held_ > limit_ && !free_.empty()) {
        drop.push_back(free_.front().second);
        held_ -= free_.front().first;
        free_.erase(free_.begin());
      }
    }
    for (void* d : drop) std::free(d);  // outside the lock
  }
  void release() {
    std::vector<std::pair<size_t, void*>> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      all.swap(free_);
      held_ = 0;
    }
    for (auto& e : all) std::free(e.second);
  }
  size_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_;
  }
  size_t limit() const { return limit_; }

 private:
  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> free_;  // (bytes, buffer), oldest first
  size_t held_ = 0;
  const size_t limit_ = limit_from_env();
};

// Never destroyed: tensors may still give buffers back while the process exits.
OutputCache& cache() {
  static OutputCache* c = new OutputCache();
  return *c;
}

}  // namespace

at::Tensor cached_empty_like(const at::Tensor& like) {
  const size_t bytes = static_cast<size_t>(like.numel()) * like.element_size();
  OutputCache& oc = cache();
  if (bytes < kOutputCacheMinBytes || oc.limit() < bytes) return at::empty(like.sizes(), like.options());
  void* p = oc.take(bytes);
  if (p == nullptr) {
    p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    TORCH_CHECK(p != nullptr, "sparse_attn: out of memory allocating an output of ", bytes, " bytes");
  }
  return at::from_blob(
      p, like.sizes(), [bytes](void* q) { cache().give_back(q, bytes); },
      at::TensorOptions().dtype(like.dtype()).device(at::kCPU));
}

size_t output_cache_bytes() { return cache().held(); }
void release_output_cache() { cache().release(); }

}  // namespace sparse_attn::cpu
