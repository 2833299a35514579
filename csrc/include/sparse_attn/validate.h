// Host-side validation of index tensors (torch-free). Returns an empty string when the
// input is valid, else a message naming the argument and the offending position, so the
// bindings can raise a clear ValueError instead of letting a kernel read out of bounds.
#pragma once
#include <cstdint>
#include <sstream>
#include <string>

#include "sparse_attn/causal.h"
#include "sparse_attn/params.h"

namespace sparse_attn {

namespace detail {
inline std::string check_block_list(const char* counts_name, const char* indices_name,
                                    const int32_t* counts, const int64_t* cs, const int32_t* idx,
                                    const int64_t* is, int64_t capacity, int64_t Bm, int64_t Hm,
                                    const BlockSparseParams& p, const CausalGeometry* full_geo) {
  for (int64_t b = 0; b < Bm; ++b)
    for (int64_t h = 0; h < Hm; ++h)
      for (int64_t m = 0; m < p.num_q_blocks; ++m) {
        const int64_t c = counts[b * cs[0] + h * cs[1] + m * cs[2]];
        std::ostringstream where;
        where << "[" << b << ", " << h << ", " << m << "]";
        if (c < 0 || c > capacity) {
          std::ostringstream e;
          e << counts_name << where.str() << " = " << c << " is outside [0, " << capacity
            << "] (the last dimension of " << indices_name << ")";
          return e.str();
        }
        int64_t prev = -1;
        for (int64_t j = 0; j < c; ++j) {
          const int64_t n = idx[b * is[0] + h * is[1] + m * is[2] + j * is[3]];
          std::ostringstream e;
          if (n < 0 || n >= p.num_k_blocks) {
            e << indices_name << where.str() << "[" << j << "] = " << n
              << " is out of range: key blocks are 0.." << p.num_k_blocks - 1;
            return e.str();
          }
          if (n <= prev) {
            e << indices_name << where.str() << " must be strictly ascending within its count, got "
              << prev << " then " << n;
            return e.str();
          }
          if (full_geo != nullptr) {  // a "full" block must need no causal element mask
            const int64_t q_first = m * p.block_q;
            const int64_t k_end = (n + 1) * p.block_k;
            if (!full_geo->tile_fully_visible(q_first, k_end < full_geo->seqlen_k ? k_end : full_geo->seqlen_k)) {
              e << indices_name << where.str() << " lists key block " << n
                << ", which is not fully visible under the causal mask; put it in the partial list";
              return e.str();
            }
          }
          prev = n;
        }
      }
  return {};
}
}  // namespace detail

// Bm, Hm: the (possibly broadcast, size-1) batch and head extents of the mask tensors.
inline std::string validate_block_sparse(const BlockSparseParams& p, int64_t Bm, int64_t Hm,
                                         int64_t full_Bm, int64_t full_Hm, const CausalGeometry& geo) {
  std::string err = detail::check_block_list("counts", "indices", p.counts, p.counts_stride, p.indices,
                                             p.indices_stride, p.max_count, Bm, Hm, p, nullptr);
  if (!err.empty() || p.full_counts == nullptr) return err;
  return detail::check_block_list("full_counts", "full_indices", p.full_counts, p.full_counts_stride,
                                  p.full_indices, p.full_indices_stride, p.max_full_count, full_Bm,
                                  full_Hm, p, geo.causal ? &geo : nullptr);
}

}  // namespace sparse_attn
