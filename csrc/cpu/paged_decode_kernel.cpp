// CPU engine of the paged KV cache ops: writing tokens (with the page metadata), Quest's
// page bounds, and decode attention over all or selected pages.
//
// Decode reads every selected K/V byte once per KV head: a work item is (sequence, KV
// head), and the query heads of its GQA group share each K/V row as it streams by, so the
// kernel is bound by memory, not arithmetic. Rows are converted to float32 one at a time;
// scores, softmax and accumulation are float32.
// This file is compiled once per instruction set; SA_CPU_NS names the namespace.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "attention_kernel.h"
#include "sparse_attn/paged.h"
#include "sparse_attn/softmax_state.h"

namespace sparse_attn::cpu::SA_CPU_NS {
namespace {

using Vec = at::vec::Vectorized<float>;

template <typename T>
void to_float(const T* src, float* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    at::vec::convert(src, dst, n);
  }
}

float dot(const float* a, const float* b, int64_t n) {
  Vec acc0(0.f), acc1(0.f);
  int64_t d = 0;
  for (; d + 2 * Vec::size() <= n; d += 2 * Vec::size()) {
    acc0 = at::vec::fmadd(Vec::loadu(a + d), Vec::loadu(b + d), acc0);
    acc1 = at::vec::fmadd(Vec::loadu(a + d + Vec::size()), Vec::loadu(b + d + Vec::size()), acc1);
  }
  for (; d + Vec::size() <= n; d += Vec::size()) acc0 = at::vec::fmadd(Vec::loadu(a + d), Vec::loadu(b + d), acc0);
  float s = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, acc0 + acc1);
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

template <typename T>
void write_tokens(const PagedKVWrite& w) {
  auto* kp = static_cast<T*>(w.k_pages);
  auto* vp = static_cast<T*>(w.v_pages);
  auto* kmax = static_cast<T*>(w.k_max);
  auto* kmin = static_cast<T*>(w.k_min);
  const auto* k = static_cast<const T*>(w.k);
  const auto* v = static_cast<const T*>(w.v);
  const int64_t D = w.head_dim;
  // One KV head per task: a page's metadata rows are then touched by one thread, in token
  // order, so "first slot sets, later slots widen" is exact (max/min of stored values).
  at::parallel_for(0, w.heads_kv, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      for (int64_t n = 0; n < w.ntokens; ++n) {
        const int64_t page = w.page_ids[n], slot = w.slots[n];
        const T* ks = k + n * w.src_stride[0] + g * w.src_stride[1];
        const T* vs = v + n * w.v_src_stride[0] + g * w.v_src_stride[1];
        std::memcpy(kp + page * w.page_stride[0] + slot * w.page_stride[1] + g * w.page_stride[2], ks, D * sizeof(T));
        std::memcpy(vp + page * w.page_stride[0] + slot * w.page_stride[1] + g * w.page_stride[2], vs, D * sizeof(T));
        T* mx = kmax + page * w.meta_stride[0] + g * w.meta_stride[1];
        T* mn = kmin + page * w.meta_stride[0] + g * w.meta_stride[1];
        if (slot == 0) {
          std::memcpy(mx, ks, D * sizeof(T));
          std::memcpy(mn, ks, D * sizeof(T));
        } else {
          for (int64_t d = 0; d < D; ++d) {
            const float x = static_cast<float>(ks[d]);  // exact: T -> float -> T round trips
            if (x > static_cast<float>(mx[d])) mx[d] = ks[d];
            if (x < static_cast<float>(mn[d])) mn[d] = ks[d];
          }
        }
      }
    }
  });
}

template <typename T>
void scores(const PagedKVParams& p, const float* q, int64_t heads_q, bool sum_reduce, float* out) {
  const int64_t D = p.head_dim, G = heads_q / p.heads_kv;
  const auto* kmax = static_cast<const T*>(p.k_max);
  const auto* kmin = static_cast<const T*>(p.k_min);
  at::parallel_for(0, p.batch * p.heads_kv, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> mx(D), mn(D);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / p.heads_kv, g = i % p.heads_kv;
      const int64_t npages = (p.seqlens[b] + p.page_size - 1) / p.page_size;
      float* o = out + i * p.max_pages;
      const float* qg = q + (b * heads_q + g * G) * D;
      for (int64_t j = 0; j < npages; ++j) {
        const int64_t page = p.page_table[b * p.table_stride + j];
        to_float(kmax + page * p.meta_stride[0] + g * p.meta_stride[1], mx.data(), D);
        to_float(kmin + page * p.meta_stride[0] + g * p.meta_stride[1], mn.data(), D);
        float r = sum_reduce ? 0.f : -INFINITY;
        for (int64_t h = 0; h < G; ++h) {
          const float s = quest_bound(qg + h * D, mx.data(), mn.data(), D);
          r = sum_reduce ? r + s : std::max(r, s);
        }
        o[j] = r;
      }
      std::fill(o + npages, o + p.max_pages, -INFINITY);
    }
  });
}

template <typename T>
void decode(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io) {
  const int64_t D = p.head_dim, G = io.heads_q / p.heads_kv, ps = p.page_size;
  const auto* K = static_cast<const T*>(p.k_pages);
  const auto* V = static_cast<const T*>(p.v_pages);
  const auto* Q = static_cast<const T*>(io.q);
  auto* O = static_cast<T*>(io.out);
  at::parallel_for(0, p.batch * p.heads_kv, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> qf(G * D), acc(G * D), row(D), s(G * ps);
    std::vector<SoftmaxRowState> st(G);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / p.heads_kv, g = i % p.heads_kv;
      const int64_t len = p.seqlens[b], npages = (len + ps - 1) / ps;
      for (int64_t h = 0; h < G; ++h) {
        to_float(Q + b * io.q_stride[0] + (g * G + h) * io.q_stride[1], qf.data() + h * D, D);
        at::vec::map([sc = io.scale](Vec x) { return x * Vec(sc); }, qf.data() + h * D, qf.data() + h * D, D);
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(st.begin(), st.end(), SoftmaxRowState::empty());
      const int64_t n = sel ? sel->counts[b * sel->counts_stride[0] + g * sel->counts_stride[1]] : npages;
      const int32_t* list = sel ? sel->pages + b * sel->pages_stride[0] + g * sel->pages_stride[1] : nullptr;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t lp = list ? list[j * sel->pages_stride[2]] : j;  // logical page
        const int64_t page = p.page_table[b * p.table_stride + lp];
        const int64_t ntok = std::min(ps, len - lp * ps);
        const T* kp = K + page * p.page_stride[0] + g * p.page_stride[2];
        const T* vp = V + page * p.page_stride[0] + g * p.page_stride[2];
        if (j + 1 < n) {  // the next page's rows are scattered: ask for them early
          const int64_t nlp = list ? list[(j + 1) * sel->pages_stride[2]] : j + 1;
          const int64_t npage = p.page_table[b * p.table_stride + nlp];
          for (int64_t t = 0; t < ps; ++t) {
            __builtin_prefetch(K + npage * p.page_stride[0] + t * p.page_stride[1] + g * p.page_stride[2]);
            __builtin_prefetch(V + npage * p.page_stride[0] + t * p.page_stride[1] + g * p.page_stride[2]);
          }
        }
        // Scores of the group's query heads against the page's keys (each row read once).
        for (int64_t t = 0; t < ntok; ++t) {
          to_float(kp + t * p.page_stride[1], row.data(), D);
          for (int64_t h = 0; h < G; ++h) s[h * ps + t] = dot(qf.data() + h * D, row.data(), D);
        }
        for (int64_t h = 0; h < G; ++h) {
          float* sh = s.data() + h * ps;
          float mx = -INFINITY;
          for (int64_t t = 0; t < ntok; ++t) mx = std::max(mx, sh[t]);
          const float factor = st[h].rescale_to(mx);
          if (factor != 1.f) {
            float* a = acc.data() + h * D;
            at::vec::map([factor](Vec x) { return x * Vec(factor); }, a, a, D);
          }
          float sum = 0.f;
          for (int64_t t = 0; t < ntok; ++t) sum += (sh[t] = std::exp(sh[t] - st[h].max));
          st[h].add_sum(sum);
        }
        for (int64_t t = 0; t < ntok; ++t) {
          to_float(vp + t * p.page_stride[1], row.data(), D);
          for (int64_t h = 0; h < G; ++h) {
            const Vec w(s[h * ps + t]);
            float* a = acc.data() + h * D;
            int64_t d = 0;
            for (; d + Vec::size() <= D; d += Vec::size())
              at::vec::fmadd(w, Vec::loadu(row.data() + d), Vec::loadu(a + d)).store(a + d);
            for (; d < D; ++d) a[d] += s[h * ps + t] * row[d];
          }
        }
      }
      for (int64_t h = 0; h < G; ++h) {
        const float inv = st[h].inv_sum();
        float* a = acc.data() + h * D;
        at::vec::map([inv](Vec x) { return x * Vec(inv); }, a, a, D);
        T* o = O + b * io.o_stride[0] + (g * G + h) * io.o_stride[1];
        if constexpr (std::is_same_v<T, float>) {
          std::memcpy(o, a, D * sizeof(float));
        } else {
          at::vec::convert(a, o, D);
        }
        io.lse[b * io.heads_q + g * G + h] = st[h].lse();
      }
    }
  });
}

template <template <typename> class F, typename... Args>
void by_dtype(DType dt, Args&&... args) {
  switch (dt) {
    case DType::kFloat32: return F<float>::run(args...);
    case DType::kBFloat16: return F<c10::BFloat16>::run(args...);
    case DType::kFloat16: return F<c10::Half>::run(args...);
  }
}
template <typename T> struct WriteF { static void run(const PagedKVWrite& w) { write_tokens<T>(w); } };
template <typename T> struct ScoresF {
  static void run(const PagedKVParams& p, const float* q, int64_t hq, bool sum, float* out) { scores<T>(p, q, hq, sum, out); }
};
template <typename T> struct DecodeF {
  static void run(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io) { decode<T>(p, sel, io); }
};

}  // namespace

void paged_kv_write(const PagedKVWrite& w) { by_dtype<WriteF>(w.dtype, w); }

void quest_scores(const PagedKVParams& p, DType dtype, const float* q, int64_t heads_q, bool sum_reduce,
                  float* out) {
  by_dtype<ScoresF>(dtype, p, q, heads_q, sum_reduce, out);
}

void paged_decode(const PagedKVParams& p, const PageSelection* sel, const PagedDecodeIO& io) {
  by_dtype<DecodeF>(io.dtype, p, sel, io);
}

}  // namespace sparse_attn::cpu::SA_CPU_NS
