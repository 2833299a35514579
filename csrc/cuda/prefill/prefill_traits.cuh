// Compile-time shape of the CUDA prefill kernel: tile sizes, shared-memory layouts, the
// tensor-core MMA and the copies. No kernel code: host_checks/prefill_layout_check.cu
// compiles these very types on the CPU and checks partitions, swizzles and sizes.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>

namespace sparse_attn::cuda::prefill {

using namespace cute;

// Element: cute::bfloat16_t or cute::half_t. kHeadDim: 64 or 128.
template <class Element_, int kHeadDim_>
struct Traits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 64;  // query rows per CTA: 4 warps x 16 rows
  static constexpr int kBlockN = 64;  // keys per K/V chunk (the CPU engine's chunk size too)
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kStages = 2;  // K/V chunks in flight: chunk i+1 loads while i computes
  static_assert(kHeadDim % 64 == 0, "head_dim must be a multiple of 64 (one swizzle atom wide)");

  // m16n8k16 tensor-core MMA, fp32 accumulators. Warps split the 64 query rows (16 each);
  // every warp covers all columns, N tiled by 16 so one ldmatrix.x4 feeds two MMAs.
  using MmaOp = std::conditional_t<std::is_same_v<Element, bfloat16_t>, SM80_16x8x16_F32BF16BF16F32_TN,
                                   SM80_16x8x16_F32F16F16F32_TN>;
  using TiledMma = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<Int<kWarps>, _1, _1>>, Tile<Int<16 * kWarps>, _16, _16>>;

  // Shared tiles are rows of head_dim elements, stored as 8 x 64 atoms (64 elements = 128 B
  // per row) with a 3-bit XOR swizzle of the 16-byte column groups by the row: the eight
  // rows an ldmatrix phase (or a 16-byte cp.async wavefront) touches fall in distinct banks.
  using SmemAtom = decltype(composition(Swizzle<3, 3, 3>{}, Layout<Shape<_8, _64>, Stride<_64, _1>>{}));
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // V seen as (head_dim, keys), the B operand of O += P V: same memory, transposed coordinates.
  using SmemLayoutVt =
      decltype(composition(SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, GenRowMajor{})));

  // Global -> shared: 16-byte cp.async, 8 threads per 64-element row segment, 16 rows per step.
  using GmemCopy = decltype(make_tiled_copy(Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<uint128_t>, Element>{},
                                            Layout<Shape<Int<kThreads / 8>, _8>, Stride<_8, _1>>{},
                                            Layout<Shape<_1, _8>>{}));
  // Shared -> registers: ldmatrix (Q and K as stored, V transposed).
  using SmemCopyQK = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
  using SmemCopyVt = Copy_Atom<SM75_U16x8_LDSM_T, Element>;

  static constexpr int kSmemQ = kBlockM * kHeadDim;   // elements
  static constexpr int kSmemKV = kBlockN * kHeadDim;  // elements, one of K or V, one stage
  static constexpr int kSmemBytes = (kSmemQ + 2 * kStages * kSmemKV) * int(sizeof(Element));
  static_assert(int(cosize(SmemLayoutQ{})) == kSmemQ && int(cosize(SmemLayoutKV{})) == kSmemKV);
};

// The accumulator layout of an m16n8 MMA, ((2 cols, 2 rows), MMA_M, MMA_N), viewed as
// (rows = (2, MMA_M), cols = (2, MMA_N)): row i of the view holds one tile row, so a row's
// reductions run over the second mode and then across the 4 lanes of a quad.
template <class Layout_>
CUTE_HOST_DEVICE constexpr auto rowcol_view(Layout_ acc) {
  static_assert(rank(Layout_{}) == 3 && decltype(rank<0>(acc))::value == 2);
  return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)), make_layout(get<0, 0>(acc), get<2>(acc)));
}

// The accumulator layout ((2, 2), MMA_M, MMA_N) of S regrouped as the A operand of the next
// MMA, ((2, 2, 2), MMA_M, MMA_N / 2): an m16n8k16 A fragment spans two n8 accumulator tiles,
// so P never leaves registers.
template <class Layout_>
CUTE_HOST_DEVICE constexpr auto acc_as_a_operand(Layout_ acc) {
  static_assert(decltype(size<2>(acc))::value % 2 == 0);
  auto l = logical_divide(acc, Shape<Underscore, Underscore, _2>{});  // ((2,2), M, (2, N/2))
  return make_layout(make_layout(get<0, 0>(l), get<0, 1>(l), get<2, 0>(l)), get<1>(l), get<2, 1>(l));
}

}  // namespace sparse_attn::cuda::prefill
