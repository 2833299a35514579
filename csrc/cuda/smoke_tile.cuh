// CuTe pieces of the smoke kernel (csrc/cuda/smoke.cu), shared with the host check
// csrc/cuda/host_checks/layout_check.cu: both compile these very functions, so the check
// exercises the partition and predication the kernel really uses, on the CPU.
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

namespace sparse_attn::cuda::smoke {

using namespace cute;

constexpr int kTile = 64;          // tile is kTile x kTile floats (16 KiB of shared memory)
constexpr int kThreads = 256;      // threads per block

using TileShape = Shape<Int<kTile>, Int<kTile>>;
// Row-major shared tile, the same layout as the global rows, so the copy is a plain
// element-for-element move.
using SmemLayout = Layout<TileShape, Stride<Int<kTile>, _1>>;

// 256 threads as 8 x 32, row-major: thread t handles row t / 32 and column t % 32 of every
// 8 x 32 sub-block, so a warp moves 32 consecutive floats of one row: coalesced global accesses
// and 32 distinct shared-memory banks (host_checks/layout_check.cu checks both
// the exactly-once coverage and the banks). One float per thread per step: the leading
// dimensions are arbitrary, so no vector alignment is assumed.
CUTE_HOST_DEVICE auto make_smoke_tiled_copy() {
  return make_tiled_copy(Copy_Atom<UniversalCopy<float>, float>{},
                         Layout<Shape<_8, _32>, Stride<_32, _1>>{},  // threads
                         Layout<Shape<_1, _1>>{});                   // values per thread
}

// Row-major rows x cols view of a matrix with leading dimension ld (64-bit strides: no
// overflow of r * ld on large matrices).
template <class Ptr>
CUTE_HOST_DEVICE auto matrix_view(Ptr ptr, int rows, int cols, int ld) {
  return make_tensor(ptr, make_shape(rows, cols), make_stride(int64_t(ld), Int<1>{}));
}

// Phase 1 of tile (tile_m, tile_n), for thread `tid`: global -> shared. Elements outside the
// matrix are zero-filled, so the whole shared tile is defined.
template <class SrcPtr, class SmemPtr>
CUTE_HOST_DEVICE void load_tile(SrcPtr src, SmemPtr smem, int rows, int cols, int ld_src,
                                int tile_m, int tile_n, int tid) {
  Tensor gA = local_tile(matrix_view(src, rows, cols, ld_src), TileShape{}, make_coord(tile_m, tile_n));
  // Identity tensor: element (i, j) of the tile holds its (row, col) in the whole matrix,
  // partitioned exactly like the data, so each thread knows which of its elements exist.
  Tensor cA = local_tile(make_identity_tensor(make_shape(rows, cols)), TileShape{},
                         make_coord(tile_m, tile_n));
  Tensor sA = make_tensor(smem, SmemLayout{});

  auto thr = make_smoke_tiled_copy().get_thread_slice(tid);
  Tensor tg = thr.partition_S(gA);  // (CPY, CPY_M, CPY_N) = (1, 8, 2)
  Tensor tc = thr.partition_S(cA);
  Tensor ts = thr.partition_D(sA);
  CUTE_UNROLL
  for (int i = 0; i < size(ts); ++i) {
    ts(i) = elem_less(tc(i), make_coord(rows, cols)) ? float(tg(i)) : 0.0f;
  }
}

// Phase 2: shared -> global, only the elements inside the matrix.
template <class DstPtr, class SmemPtr>
CUTE_HOST_DEVICE void store_tile(DstPtr dst, SmemPtr smem, int rows, int cols, int ld_dst,
                                 int tile_m, int tile_n, int tid) {
  Tensor gB = local_tile(matrix_view(dst, rows, cols, ld_dst), TileShape{}, make_coord(tile_m, tile_n));
  Tensor cB = local_tile(make_identity_tensor(make_shape(rows, cols)), TileShape{},
                         make_coord(tile_m, tile_n));
  Tensor sB = make_tensor(smem, SmemLayout{});

  auto thr = make_smoke_tiled_copy().get_thread_slice(tid);
  Tensor ts = thr.partition_S(sB);
  Tensor tc = thr.partition_D(cB);
  Tensor tg = thr.partition_D(gB);
  CUTE_UNROLL
  for (int i = 0; i < size(ts); ++i) {
    if (elem_less(tc(i), make_coord(rows, cols))) tg(i) = ts(i);
  }
}

// The kernel stores with the threads in reverse order, so every element goes through shared
// memory from one thread to another: the __syncthreads() between the phases is required and
// compute-sanitizer's racecheck has something real to check.
CUTE_HOST_DEVICE constexpr int store_thread(int tid) { return kThreads - 1 - tid; }

}  // namespace sparse_attn::cuda::smoke
