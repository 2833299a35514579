// Global -> shared row loads of the prefill kernel: a tile of consecutive rows (Q, K/V
// chunks; rows past the sequence zero-filled) and a tile of gathered rows (the K/V rows of a
// vertical-slash tile's column list; rows past the list zero-filled). Each 16-byte vector
// goes through `copy_vec(tiled_copy, src, dst)`: the kernel passes cp.async (CpAsyncVec),
// host_checks/prefill_layout_check.cu a plain element copy that also checks every source
// address, so the very code the kernel runs is checked on the CPU.
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include "tile_mask.h"

namespace sparse_attn::cuda::prefill {

using namespace cute;

// Rows [0, valid_rows) of a (rows x head_dim) global tile -> shared; the other rows are
// zero-filled (masked keys then have V = 0, so P = 0 never meets garbage) and never read.
template <class Tr, class GTensor, class STensor, class CopyVec>
CUTE_HOST_DEVICE void load_rows(const GTensor& g, const STensor& s, int valid_rows, int tid, CopyVec&& copy_vec) {
  typename Tr::GmemCopy gcopy;
  auto thr = gcopy.get_thread_slice(tid);
  Tensor tg = thr.partition_S(g);  // (CPY, CPY_M, CPY_K)
  Tensor ts = thr.partition_D(s);
  Tensor tc = thr.partition_S(make_identity_tensor(make_shape(size<0>(s), size<1>(s))));
  CUTE_UNROLL
  for (int m = 0; m < size<1>(ts); ++m) {
    if (get<0>(tc(0, m, 0)) < valid_rows) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(ts); ++k) copy_vec(gcopy, tg(_, m, k), ts(_, m, k));
    } else {
      clear(ts(_, m, _));
    }
  }
}

// Gathered rows: row r of the shared tile <- global row cols[c0 + r] of `base` (row stride
// ld), for c0 + r < n; the other rows are zero-filled. The thread that copies a row's first
// vector also records its key in s_keys[r] (TileMask::kNoKey past the list), for the
// element mask.
template <class Tr, class T, class STensor, class CopyVec>
CUTE_HOST_DEVICE void gather_rows(const T* base, int64_t ld, const int32_t* cols, int64_t c0, int64_t n,
                                  const STensor& s, int32_t* s_keys, int tid, CopyVec&& copy_vec) {
  constexpr int BN = Tr::kBlockN, D = Tr::kHeadDim;
  typename Tr::GmemCopy gcopy;
  auto thr = gcopy.get_thread_slice(tid);
  // Row r of this view is global row r: a vector for key `key` is the row-r vector moved by
  // (key - r) rows. (Only addresses are formed from the view; rows past the sequence are
  // never read.)
  Tensor tg = thr.partition_S(make_tensor(make_gmem_ptr(base), make_shape(Int<BN>{}, Int<D>{}), make_stride(ld, _1{})));
  Tensor ts = thr.partition_D(s);
  Tensor tc = thr.partition_S(make_identity_tensor(make_shape(Int<BN>{}, Int<D>{})));
  CUTE_UNROLL
  for (int m = 0; m < size<1>(ts); ++m) {
    const int r = get<0>(tc(0, m, 0));
    const int32_t key = c0 + r < n ? cols[c0 + r] : TileMask::kNoKey;
    if (get<1>(tc(0, m, 0)) == 0) s_keys[r] = key;
    if (key != TileMask::kNoKey) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(ts); ++k)
        copy_vec(gcopy, make_tensor(tg(_, m, k).data() + int64_t(key - r) * ld, tg(_, m, k).layout()), ts(_, m, k));
    } else {
      clear(ts(_, m, _));
    }
  }
}

}  // namespace sparse_attn::cuda::prefill
