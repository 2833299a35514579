// The CUDA prefill kernel (FlashAttention-2 style, sm80+): one CTA = 64 query rows of one
// (batch, query head); 4 warps of 16 rows each. The keys come as 64-key chunks from the
// shared KeyChunkWalker (key_spans.h): a block-sparse row's block list, the streaming
// sink + window spans, or a vertical-slash tile's key blocks (its row of the 64-row index
// that vs_build_index made on the device) followed by its gathered columns, 64 at a time,
// each row fetched by cp.async from its own key into the same shared tile. Per chunk:
//   cp.async K/V of the next chunk into the other shared stage (2 stages, swizzled)
//   S = Q K^T (m16n8k16, fp32), element mask only on chunks that need one (causal
//   diagonal, window edge, sequence end), online softmax in registers (exp2),
//   O += P V with P straight from the S registers.
// Q fragments stay in registers for the whole loop. The softmax state per row is the
// shared SoftmaxRowState (softmax_state.h) with a thread-partial sum, reduced at the end.
// Every index computation that is not tile arithmetic comes from the shared headers the
// CPU engine tests; the layouts are checked on the host (host_checks/prefill_layout_check.cu).
#pragma once

#include <cmath>
#include <cstdint>

#include <cute/tensor.hpp>

#include "instances.cuh"
#include "launch.h"
#include "prefill_traits.cuh"
#include "tile_loads.cuh"
#include "tile_mask.h"
#include "sparse_attn/softmax_state.h"

namespace sparse_attn::cuda::prefill {

using namespace cute;

constexpr float kLog2e = 1.4426950408889634f;

// One 16-byte global -> shared vector by cp.async (the copy of tile_loads.cuh's loads).
struct CpAsyncVec {
  template <class TiledCopy, class Src, class Dst>
  __device__ __forceinline__ void operator()(const TiledCopy& tiled, const Src& src, Dst&& dst) const {
    copy(tiled, src, static_cast<Dst&&>(dst));
  }
};

// Quad (4 lanes that share accumulator rows) reductions.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// acc += A B^T over the K mode, one 16-wide k-slice at a time: the B slice is loaded
// from shared memory (ldmatrix) right before its MMAs, so only one slice of B is live.
template <class Mma, class TiledCopy, class ThrCopy, class SB, class RA, class RB, class Acc>
__device__ __forceinline__ void load_b_and_gemm(const Mma& mma, const TiledCopy& tiled, const ThrCopy& thr,
                                                const SB& sB, const RA& rA, RB& rB, Acc& acc) {
  Tensor src = thr.partition_S(sB);
  Tensor dst = thr.retile_D(rB);
  CUTE_UNROLL
  for (int kk = 0; kk < size<2>(rA); ++kk) {
    copy(tiled, src(_, _, kk), dst(_, _, kk));
    gemm(mma, rA(_, _, kk), rB(_, _, kk), acc);
  }
}

// Dynamic shared memory: Q, the K/V stages, then the gathered rows' keys of each stage.
template <class Tr>
constexpr int smem_bytes() {
  return Tr::kSmemBytes + Tr::kStages * Tr::kBlockN * int(sizeof(int32_t));
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1) prefill_kernel(const __grid_constant__ PrefillArgs args) {
  using T = typename Tr::Element;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, D = Tr::kHeadDim;
  static_assert(BM == BN, "Q and K/V tiles share the global tile view below");
  static_assert(BN == 64, "TileChunks and the vertical-slash index (64-row tiles) assume 64-key chunks");
  const AttentionParams& p = args.p;
  const int tid = threadIdx.x;
  const int64_t num_tiles = (p.seqlen_q + BM - 1) / BM;
  const int64_t m = num_tiles - 1 - blockIdx.x;  // last tiles first: under a causal mask the longest
  const int64_t h = blockIdx.y, b = blockIdx.z, g = h / (p.heads_q / p.heads_kv);
  const int64_t q0 = m * BM;
  const int rows = int(p.seqlen_q - q0 < BM ? p.seqlen_q - q0 : BM);
  const TileMask tmask = TileMask::of(args, q0, rows);
  // The tile's chunks: its key chunks, then (vertical-slash) its gathered column tiles.
  TileChunks chunks{tmask.walker(args, b, h, BN)};
  const int32_t* cols = tmask.vertical_slash ? tmask.vs_columns_of(args, b, h, &chunks.ncols) : nullptr;
  const VSBits vb = tmask.vertical_slash ? tmask.vs_bits(args, b, h) : VSBits{nullptr, nullptr, 0};

  extern __shared__ __align__(1024) char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  Tensor sQ = make_tensor(make_smem_ptr(smem), typename Tr::SmemLayoutQ{});
  auto sK = [&](int stage) {
    return make_tensor(make_smem_ptr(smem + Tr::kSmemQ + stage * Tr::kSmemKV), typename Tr::SmemLayoutKV{});
  };
  auto sV = [&](int stage) {
    return make_tensor(make_smem_ptr(smem + Tr::kSmemQ + (Tr::kStages + stage) * Tr::kSmemKV),
                       typename Tr::SmemLayoutKV{});
  };
  auto sVt = [&](int stage) {
    return make_tensor(make_smem_ptr(smem + Tr::kSmemQ + (Tr::kStages + stage) * Tr::kSmemKV),
                       typename Tr::SmemLayoutVt{});
  };

  const T* Q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
  const T* K = static_cast<const T*>(p.k) + b * p.k_stride[0] + g * p.k_stride[2];
  const T* V = static_cast<const T*>(p.v) + b * p.v_stride[0] + g * p.v_stride[2];
  auto tile = [](const T* base, int64_t row0, int64_t ld) {
    return make_tensor(make_gmem_ptr(base + row0 * ld), make_shape(Int<BN>{}, Int<D>{}), make_stride(ld, _1{}));
  };
  // Keys of the gathered rows in each stage (after the K/V stages).
  int32_t* s_keys = reinterpret_cast<int32_t*>(smem_raw + Tr::kSmemBytes);
  auto load_kv = [&](int64_t k0, int stage) {
    if (TileChunks::gathered(k0)) {
      const int64_t c0 = TileChunks::first_column(k0);
      gather_rows<Tr>(K, p.k_stride[1], cols, c0, chunks.ncols, sK(stage), s_keys + stage * BN, tid, CpAsyncVec{});
      gather_rows<Tr>(V, p.v_stride[1], cols, c0, chunks.ncols, sV(stage), s_keys + stage * BN, tid, CpAsyncVec{});
      return;
    }
    const int valid = int(p.seqlen_k - k0 < BN ? p.seqlen_k - k0 : BN);
    load_rows<Tr>(tile(K, k0, p.k_stride[1]), sK(stage), valid, tid, CpAsyncVec{});
    load_rows<Tr>(tile(V, k0, p.v_stride[1]), sV(stage), valid, tid, CpAsyncVec{});
  };

  // Prologue: Q (group 0), first K/V chunk (group 1).
  load_rows<Tr>(tile(Q, q0, p.q_stride[1]), sQ, rows, tid, CpAsyncVec{});
  cp_async_fence();
  int64_t k_cur = chunks.next();
  if (k_cur != -1) load_kv(k_cur, 0);
  cp_async_fence();

  typename Tr::TiledMma mma;
  auto thr_mma = mma.get_thread_slice(tid);
  auto q_tiled = make_tiled_copy_A(typename Tr::SmemCopyQK{}, mma);
  auto k_tiled = make_tiled_copy_B(typename Tr::SmemCopyQK{}, mma);
  auto v_tiled = make_tiled_copy_B(typename Tr::SmemCopyVt{}, mma);
  auto q_copy = q_tiled.get_thread_slice(tid);
  auto k_copy = k_tiled.get_thread_slice(tid);
  auto v_copy = v_tiled.get_thread_slice(tid);

  Tensor rQ = thr_mma.partition_fragment_A(sQ);                              // (MMA, 1, D/16)
  Tensor rK = thr_mma.partition_fragment_B(sK(0));                           // (MMA, BN/16.., D/16)
  Tensor rVt = thr_mma.partition_fragment_B(sVt(0));                         // (MMA, D/16.., BN/16)
  Tensor acc_o = partition_fragment_C(mma, Shape<Int<BM>, Int<D>>{});        // fp32 O
  clear(acc_o);
  // (row, col) inside the tile of every accumulator element, as the MMA lays them out.
  Tensor c_s = thr_mma.partition_C(make_identity_tensor(Shape<Int<BM>, Int<BN>>{}));
  Tensor c_s_rc = make_tensor(c_s.data(), rowcol_view(c_s.layout()));
  Tensor o_rc = make_tensor(acc_o.data(), rowcol_view(acc_o.layout()));
  constexpr int kRows = decltype(size<0>(o_rc))::value;  // tile rows this thread holds (2)

  SoftmaxRowState state[kRows];
  CUTE_UNROLL
  for (int i = 0; i < kRows; ++i) state[i] = SoftmaxRowState::empty();
  const float scale_log2 = p.scale * kLog2e;

  cp_async_wait<1>();  // Q has landed
  __syncthreads();
  copy(q_tiled, q_copy.partition_S(sQ), q_copy.retile_D(rQ));

  int stage = 0;
  while (k_cur != -1) {
    const int64_t k_next = chunks.next();
    if (k_next != -1) load_kv(k_next, stage ^ 1);
    cp_async_fence();   // (an empty group when there is no next chunk: the count stays uniform)
    cp_async_wait<1>();  // everything but the newest group: chunk k_cur is in stage
    __syncthreads();

    // S = Q K^T, one 16-wide slice of head_dim at a time.
    Tensor acc_s = partition_fragment_C(mma, Shape<Int<BM>, Int<BN>>{});
    clear(acc_s);
    load_b_and_gemm(mma, k_tiled, k_copy, sK(stage), rQ, rK, acc_s);

    // Element mask where the chunk is not visible to every row of the tile.
    Tensor s_rc = make_tensor(acc_s.data(), rowcol_view(acc_s.layout()));
    if (TileChunks::gathered(k_cur)) {  // gathered columns: the causal mask by each row's recorded key
      const int32_t* keys = s_keys + stage * BN;
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i) {
        const int64_t row = q0 + get<0>(c_s_rc(i, 0));
        CUTE_UNROLL
        for (int j = 0; j < size<1>(s_rc); ++j)
          if (!tmask.column_visible(row, keys[get<1>(c_s_rc(i, j))])) s_rc(i, j) = -INFINITY;
      }
    } else if (tmask.vertical_slash) {  // a listed block: the head's bitsets
      if (!tmask.vs_chunk_full(vb, k_cur)) {
        CUTE_UNROLL
        for (int i = 0; i < kRows; ++i) {
          const uint64_t bits = tmask.vs_row_bits(vb, q0 + get<0>(c_s_rc(i, 0)), k_cur);
          CUTE_UNROLL
          for (int j = 0; j < size<1>(s_rc); ++j)
            if (!((bits >> get<1>(c_s_rc(i, j))) & 1)) s_rc(i, j) = -INFINITY;
        }
      }
    } else if (!tmask.chunk_full(k_cur, k_cur + BN)) {
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i) {
        const int64_t row = q0 + get<0>(c_s_rc(i, 0));
        CUTE_UNROLL
        for (int j = 0; j < size<1>(s_rc); ++j)
          if (!tmask.visible(row, k_cur + get<1>(c_s_rc(i, j)))) s_rc(i, j) = -INFINITY;
      }
    }

    // Online softmax per row: new max over the quad, rescale O, P = exp2(S * scale_log2 - max).
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      float mx = -INFINITY;
      CUTE_UNROLL
      for (int j = 0; j < size<1>(s_rc); ++j) mx = fmaxf(mx, s_rc(i, j));
      mx = quad_max(mx);
      const float factor = state[i].rescale_to(mx * p.scale);  // -inf stays -inf (scale > 0)
      if (factor != 1.f) {
        CUTE_UNROLL
        for (int j = 0; j < size<1>(o_rc); ++j) o_rc(i, j) *= factor;
      }
      // A row that has seen nothing visible yet has max -inf and only masked scores: 0.
      const float base = state[i].max == -INFINITY ? 0.f : state[i].max * kLog2e;
      float sum = 0.f;
      CUTE_UNROLL
      for (int j = 0; j < size<1>(s_rc); ++j) {
        const float e = exp2f(s_rc(i, j) * scale_log2 - base);
        s_rc(i, j) = e;
        sum += e;
      }
      state[i].add_sum(sum);  // this thread's columns; the quad's sums are added at the end
    }

    // O += P V: P converted to the input type, reinterpreted as the A operand.
    Tensor rP = make_tensor_like<T>(acc_s);
    CUTE_UNROLL
    for (int i = 0; i < size(acc_s); ++i) rP(i) = static_cast<T>(acc_s(i));
    Tensor rPa = make_tensor(rP.data(), acc_as_a_operand(rP.layout()));
    load_b_and_gemm(mma, v_tiled, v_copy, sVt(stage), rPa, rVt, acc_o);

    __syncthreads();  // all warps are done with `stage` before the next loads overwrite it
    k_cur = k_next;
    stage ^= 1;
  }
  cp_async_wait<0>();  // nothing may still be writing shared memory when the CTA exits

  // Epilogue: normalize, store the valid rows, lse by one lane per row.
  T* O = static_cast<T*>(p.out) + b * p.o_stride[0] + h * p.o_stride[2];
  Tensor c_o = thr_mma.partition_C(make_identity_tensor(Shape<Int<BM>, Int<D>>{}));
  Tensor c_o_rc = make_tensor(c_o.data(), rowcol_view(c_o.layout()));
  CUTE_UNROLL
  for (int i = 0; i < kRows; ++i) {
    SoftmaxRowState total = state[i];
    total.sum = quad_sum(state[i].sum);
    const float inv = total.inv_sum();
    const int r = get<0>(c_o_rc(i, 0));
    if (r < rows) {
      T* orow = O + (q0 + r) * p.o_stride[1];
      CUTE_UNROLL
      for (int j = 0; j < size<1>(o_rc); ++j) orow[get<1>(c_o_rc(i, j))] = static_cast<T>(o_rc(i, j) * inv);
      if ((tid & 3) == 0) p.lse[(b * p.heads_q + h) * p.seqlen_q + q0 + r] = total.lse();
    }
  }
}

template <class Tr>
cudaError_t launch(const PrefillArgs& args, cudaStream_t stream) {
  const AttentionParams& p = args.p;
  const int64_t tiles = (p.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM;
  if (tiles == 0 || p.batch == 0 || p.heads_q == 0) return cudaSuccess;
  auto kernel = prefill_kernel<Tr>;
  constexpr int kSmem = smem_bytes<Tr>();
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  kernel<<<dim3(unsigned(tiles), unsigned(p.heads_q), unsigned(p.batch)), Tr::kThreads, kSmem, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace sparse_attn::cuda::prefill
