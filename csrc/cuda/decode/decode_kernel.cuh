// Persistent stream-K paged decode (one CTA per plan worker) and the separate merge kernel.
//
// A CTA walks its worker's segments (stream_k.h). A segment = one (sequence b, KV head g)
// and a run of its pages (logical ids, or the selection's list), read as 64-token chunks:
// the chunk's rows (page table lookups, fixup.h segment_row) go to shared memory, then K and
// V rows are copied global -> shared by 16-byte cp.async (rows without a token zero-filled),
// two stages, so chunk c+1 loads while chunk c computes. The G query heads of the KV head
// share every loaded chunk (GQA): warp w computes heads w, w + 4, ... (kHPW per warp).
// Within a warp, lane group grp = lane / 8 takes rows grp, grp + 4, ..., and lane l8 = lane % 8
// the 16-byte vectors l8 + 8 v of a row (v < D / 64): a quarter-warp reads 128 contiguous
// bytes, no bank conflicts. Scores reduce over the 8 lanes of a group, the chunk max and
// sum over the 4 groups; the online-softmax state is the shared SoftmaxRowState (natural-log
// units, same as the CPU engine), the partial merge the shared merge_into.
// Fix-up between CTAs: fixup.h.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "fixup.h"
#include "launch.h"
#include "sparse_attn/softmax_state.h"
#include "sparse_attn/stream_k.h"

namespace sparse_attn::cuda::decode {

template <typename T, int kD>
struct Traits {
  using Elem = T;
  static constexpr int kHeadDim = kD;
  static constexpr int kThreads = 128, kWarps = 4;
  static constexpr int kChunk = 64;               // tokens per stage
  static constexpr int kStages = 2;
  static constexpr int kRowVecs = kD / 8;         // 16-byte vectors per row
  static constexpr int kLaneVecs = kD / 64;       // vectors per lane (8 lanes per row)
  static constexpr int kLaneRows = kChunk / 4;    // rows per lane group and chunk
  static constexpr int kLaneElems = kLaneVecs * 8;
  static constexpr int kRowOffBytes = kStages * kChunk * 8;
  static constexpr int kStageElems = kChunk * kD;  // one of K or V
  static constexpr int kSmemBytes = kRowOffBytes + kStages * 2 * kStageElems * int(sizeof(T));
};

// ---------------------------------------------------------------- small device helpers
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: zero-fill
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_1() { asm volatile("cp.async.wait_group 1;\n" ::); }

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release(int* p, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ void to_float8(const uint4& x, float* f) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&x);
  #pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x, f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void to_float8_half(const uint4& x, float* f) {
  const __half2* h = reinterpret_cast<const __half2*>(&x);
  #pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __half22float2(h[i]);
    f[2 * i] = t.x, f[2 * i + 1] = t.y;
  }
}
template <typename T>
__device__ __forceinline__ void load8(const T* p, float* f) {
  const uint4 x = *reinterpret_cast<const uint4*>(p);
  if constexpr (std::is_same_v<T, __half>) to_float8_half(x, f); else to_float8(x, f);
}
template <typename T>
__device__ __forceinline__ void store8(T* p, const float* f) {
  uint4 x;
  if constexpr (std::is_same_v<T, __half>) {
    __half2* h = reinterpret_cast<__half2*>(&x);
    #pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
  } else {
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&x);
    #pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  }
  *reinterpret_cast<uint4*>(p) = x;
}

// The per-head state a warp keeps for one of its heads.
template <class Tr>
struct HeadState {
  float q[Tr::kLaneElems];
  float acc[Tr::kLaneElems];
  SoftmaxRowState st;
};

// Workspace row of (slot, head h): state at ws_state[2 * idx], acc at ws_acc[D * idx].
template <class Tr>
__device__ __forceinline__ void publish(const DecodeArgs& a, const HeadState<Tr>& hs, int64_t idx, int lane) {
  if (lane >= 8) return;
  float* dst = a.plan.ws_acc + idx * Tr::kHeadDim;
  #pragma unroll
  for (int v = 0; v < Tr::kLaneVecs; ++v) {
    float4* d4 = reinterpret_cast<float4*>(dst + lane_column(lane, 8 * v));
    const float* s = hs.acc + 8 * v;
    d4[0] = make_float4(s[0], s[1], s[2], s[3]);
    d4[1] = make_float4(s[4], s[5], s[6], s[7]);
  }
  if (lane == 0) a.plan.ws_state[2 * idx] = hs.st.max, a.plan.ws_state[2 * idx + 1] = hs.st.sum;
}

// Merges the published partial of workspace row idx into (st, acc), reading through L2
// (another SM wrote it).
template <class Tr>
__device__ __forceinline__ void merge_partial(const DecodeArgs& a, HeadState<Tr>& hs, int64_t idx, int lane) {
  SoftmaxRowState other;
  other.max = __ldcg(a.plan.ws_state + 2 * idx);
  other.sum = __ldcg(a.plan.ws_state + 2 * idx + 1);
  if (other.sum == 0.f) return;  // an empty partial (as the CPU engine's merge_store)
  const MergeFactors f = merge_into(hs.st, other);
  if (lane >= 8) return;
  const float* src = a.plan.ws_acc + idx * Tr::kHeadDim;
  #pragma unroll
  for (int v = 0; v < Tr::kLaneVecs; ++v) {
    const float4* s4 = reinterpret_cast<const float4*>(src + lane_column(lane, 8 * v));
    const float4 x = __ldcg(s4), y = __ldcg(s4 + 1);
    const float o[8] = {x.x, x.y, x.z, x.w, y.x, y.y, y.z, y.w};
    #pragma unroll
    for (int e = 0; e < 8; ++e) hs.acc[8 * v + e] = hs.acc[8 * v + e] * f.a + o[e] * f.b;
  }
}

// Normalizes and stores query head qh of sequence b (lanes 0..7 hold the row).
template <class Tr>
__device__ __forceinline__ void finish(const DecodeArgs& a, const HeadState<Tr>& hs, int64_t b, int64_t qh, int lane) {
  using T = typename Tr::Elem;
  if (lane >= 8) return;
  const float inv = hs.st.inv_sum();
  T* o = static_cast<T*>(a.io.out) + b * a.io.o_stride[0] + qh * a.io.o_stride[1];
  #pragma unroll
  for (int v = 0; v < Tr::kLaneVecs; ++v) {
    float f[8];
    #pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = hs.acc[8 * v + e] * inv;
    store8(o + lane_column(lane, 8 * v), f);
  }
  if (lane == 0) a.io.lse[b * a.io.heads_q + qh] = hs.st.lse();
}

// ---------------------------------------------------------------- one segment
template <class Tr, int kHPW>
__device__ void run_segment(const DecodeArgs& a, const StreamKSegment& seg, int64_t w, unsigned char* smem) {
  using T = typename Tr::Elem;
  constexpr int kD = Tr::kHeadDim, kChunk = Tr::kChunk;
  int64_t* row_off = reinterpret_cast<int64_t*>(smem);
  T* kv = reinterpret_cast<T*>(smem + Tr::kRowOffBytes);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, grp = lane / 8, l8 = lane % 8;
  const PagedKVParams& p = a.p;
  const int64_t Hkv = p.heads_kv, G = a.io.heads_q / Hkv, ps = p.page_size;
  const int64_t b = seg.output / Hkv, g = seg.output % Hkv, len = p.seqlens[b];
  const int32_t* list = a.sel.pages ? a.sel.pages + b * a.sel.pages_stride[0] + g * a.sel.pages_stride[1] : nullptr;
  const int64_t npages = a.sel.pages ? a.sel.counts[b * a.sel.counts_stride[0] + g * a.sel.counts_stride[1]]
                                     : (len + ps - 1) / ps;
  const int64_t j0 = seg.tile_begin * a.plan.tile_pages;
  const int64_t j1 = min(npages, seg.tile_end * a.plan.tile_pages);
  const int64_t rows = (j1 - j0) * ps, nchunks = (rows + kChunk - 1) / kChunk;
  const T* K = static_cast<const T*>(p.k_pages);
  const T* V = static_cast<const T*>(p.v_pages);

  HeadState<Tr> hs[kHPW];
  #pragma unroll
  for (int hi = 0; hi < kHPW; ++hi) {
    const int64_t h = warp + 4 * hi;
    hs[hi].st = SoftmaxRowState::empty();
    #pragma unroll
    for (int e = 0; e < Tr::kLaneElems; ++e) hs[hi].acc[e] = 0.f;
    if (h < G) {
      const T* q = static_cast<const T*>(a.io.q) + b * a.io.q_stride[0] + (g * G + h) * a.io.q_stride[1];
      #pragma unroll
      for (int v = 0; v < Tr::kLaneVecs; ++v) load8(q + lane_column(l8, 8 * v), hs[hi].q + 8 * v);
      #pragma unroll
      for (int e = 0; e < Tr::kLaneElems; ++e) hs[hi].q[e] *= a.io.scale;
    }
  }

  // Chunk c -> stage c % 2: its rows' element offsets (-1: no token), then the copies.
  auto issue = [&](int64_t c) {
    const int stage = int(c % Tr::kStages);
    if (c < nchunks) {
      if (tid < kChunk) {
        const int64_t u = c * kChunk + tid;
        int64_t off = -1;
        if (u < rows) {
          const SegmentRow r = segment_row(j0, ps, u);
          const int64_t lp = list ? list[r.list_index * a.sel.pages_stride[2]] : r.list_index;
          if (r.slot < len - lp * ps)
            off = int64_t(p.page_table[b * p.table_stride + lp]) * p.page_stride[0] + r.slot * p.page_stride[1] +
                  g * p.page_stride[2];
        }
        row_off[stage * kChunk + tid] = off;
      }
      __syncthreads();
      T* sk = kv + stage * 2 * Tr::kStageElems;
      T* sv = sk + Tr::kStageElems;
      for (int i = tid; i < kChunk * Tr::kRowVecs; i += Tr::kThreads) {
        const int row = i / Tr::kRowVecs, col = i % Tr::kRowVecs * 8;
        const int64_t off = row_off[stage * kChunk + row];
        const int64_t src = off < 0 ? 0 : off + col;
        cp_async16(sk + row * kD + col, K + src, off >= 0);
        cp_async16(sv + row * kD + col, V + src, off >= 0);
      }
    }
    cp_async_commit();  // an empty group past the end keeps the wait count uniform
  };

  issue(0);
  issue(1);
  for (int64_t c = 0; c < nchunks; ++c) {
    const int stage = int(c % Tr::kStages);
    cp_async_wait_1();  // chunk c has landed (at most chunk c + 1 in flight)
    __syncthreads();
    const T* sk = kv + stage * 2 * Tr::kStageElems;
    const T* sv = sk + Tr::kStageElems;
    const int64_t* roff = row_off + stage * kChunk;
    #pragma unroll
    for (int hi = 0; hi < kHPW; ++hi) {
      if (warp + 4 * hi >= G) continue;  // warp-uniform
      HeadState<Tr>& H = hs[hi];
      float s[Tr::kLaneRows];
      float mx = -INFINITY;
      #pragma unroll
      for (int i = 0; i < Tr::kLaneRows; ++i) {
        const int row = grp + 4 * i;
        float dot = 0.f;
        #pragma unroll
        for (int v = 0; v < Tr::kLaneVecs; ++v) {
          float k8[8];
          load8(sk + row * kD + lane_column(l8, 8 * v), k8);
          #pragma unroll
          for (int e = 0; e < 8; ++e) dot = fmaf(H.q[8 * v + e], k8[e], dot);
        }
        dot += __shfl_xor_sync(0xffffffffu, dot, 1);
        dot += __shfl_xor_sync(0xffffffffu, dot, 2);
        dot += __shfl_xor_sync(0xffffffffu, dot, 4);
        s[i] = roff[row] >= 0 ? dot : -INFINITY;
        mx = fmaxf(mx, s[i]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
      const float factor = H.st.rescale_to(mx);
      if (factor != 1.f)
        #pragma unroll
        for (int e = 0; e < Tr::kLaneElems; ++e) H.acc[e] *= factor;
      const float m = H.st.max;
      float sum = 0.f;
      #pragma unroll
      for (int i = 0; i < Tr::kLaneRows; ++i) {
        s[i] = s[i] == -INFINITY ? 0.f : __expf(s[i] - m);
        sum += s[i];
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 8);
      sum += __shfl_xor_sync(0xffffffffu, sum, 16);
      H.st.add_sum(sum);
      #pragma unroll
      for (int i = 0; i < Tr::kLaneRows; ++i) {
        const int row = grp + 4 * i;
        #pragma unroll
        for (int v = 0; v < Tr::kLaneVecs; ++v) {
          float v8[8];
          load8(sv + row * kD + lane_column(l8, 8 * v), v8);
          #pragma unroll
          for (int e = 0; e < 8; ++e) H.acc[8 * v + e] = fmaf(s[i], v8[e], H.acc[8 * v + e]);
        }
      }
    }
    __syncthreads();  // stage free for chunk c + 2
    issue(c + 2);
  }
  // The 4 lane groups hold partial sums over their rows: add them up (every lane gets the row).
  #pragma unroll
  for (int hi = 0; hi < kHPW; ++hi)
    #pragma unroll
    for (int e = 0; e < Tr::kLaneElems; ++e) {
      hs[hi].acc[e] += __shfl_xor_sync(0xffffffffu, hs[hi].acc[e], 8);
      hs[hi].acc[e] += __shfl_xor_sync(0xffffffffu, hs[hi].acc[e], 16);
    }

  const int64_t outputs = p.batch * Hkv;
  const FixupRole role = fixup_role(a.plan.offsets, a.plan.slot_base, outputs, a.plan.workers, w, seg, a.separate_merge);
  int* flags = reinterpret_cast<int*>(a.plan.ws_state + flags_offset(a.slots, G));
  if (role.kind == FixupKind::kPublish) {
    #pragma unroll
    for (int hi = 0; hi < kHPW; ++hi)
      if (warp + 4 * hi < G) publish<Tr>(a, hs[hi], role.slot * G + warp + 4 * hi, lane);
    if (!a.separate_merge) {
      __threadfence();  // the partial is visible device-wide before the flag
      __syncthreads();
      if (tid == 0) st_release(flags + role.slot, 1);
    }
    return;
  }
  if (role.kind == FixupKind::kMerge) {
    if (tid == 0) {
      for (int64_t r = 1; r < role.nparts; ++r) {
        while (ld_acquire(flags + role.first_slot + r) == 0) __nanosleep(100);
        flags[role.first_slot + r] = 0;  // reset for the next launch (nobody else reads it)
      }
      __threadfence();
    }
    __syncthreads();
    #pragma unroll
    for (int hi = 0; hi < kHPW; ++hi)
      if (warp + 4 * hi < G)
        for (int64_t r = 1; r < role.nparts; ++r)
          merge_partial<Tr>(a, hs[hi], (role.first_slot + r) * G + warp + 4 * hi, lane);
  }
  #pragma unroll
  for (int hi = 0; hi < kHPW; ++hi)
    if (warp + 4 * hi < G) finish<Tr>(a, hs[hi], b, g * G + warp + 4 * hi, lane);
}

// Zeros and lse -inf for the query heads of output o (no pages to attend).
template <class Tr>
__device__ void write_empty(const DecodeArgs& a, int64_t o) {
  using T = typename Tr::Elem;
  const int64_t Hkv = a.p.heads_kv, G = a.io.heads_q / Hkv, b = o / Hkv, g = o % Hkv;
  for (int64_t i = threadIdx.x; i < G * Tr::kHeadDim; i += Tr::kThreads) {
    const int64_t qh = g * G + i / Tr::kHeadDim;
    static_cast<T*>(a.io.out)[b * a.io.o_stride[0] + qh * a.io.o_stride[1] + i % Tr::kHeadDim] = T(0.f);
    if (i % Tr::kHeadDim == 0) a.io.lse[b * a.io.heads_q + qh] = -INFINITY;
  }
}

template <class Tr, int kHPW>
__global__ void __launch_bounds__(Tr::kThreads, 1) decode_kernel(const DecodeArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t outputs = a.p.batch * a.p.heads_kv, W = a.plan.workers;
  const int64_t w = worker_of_block(blockIdx.x, gridDim.x);
  if (!a.separate_merge)  // outputs without pages have no segment: spread them over the workers
    for (int64_t o = w; o < outputs; o += W)
      if (a.plan.offsets[o] == a.plan.offsets[o + 1]) write_empty<Tr>(a, o);
  stream_k_segments(a.plan.offsets, outputs, W, w,
                    [&](const StreamKSegment& seg) { run_segment<Tr, kHPW>(a, seg, w, smem); });
}

// Fallback: one CTA per output merges its partials in worker order (or writes an empty row).
template <class Tr, int kHPW>
__global__ void __launch_bounds__(Tr::kThreads) merge_kernel(const DecodeArgs a) {
  const int64_t o = blockIdx.x, Hkv = a.p.heads_kv, G = a.io.heads_q / Hkv;
  const int64_t first = a.plan.slot_base[o], nparts = a.plan.slot_base[o + 1] - first;
  if (nparts == 0) {
    write_empty<Tr>(a, o);
    return;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  #pragma unroll
  for (int hi = 0; hi < kHPW; ++hi) {
    const int64_t h = warp + 4 * hi;
    if (h >= G) continue;
    HeadState<Tr> hs;
    hs.st = SoftmaxRowState::empty();
    #pragma unroll
    for (int e = 0; e < Tr::kLaneElems; ++e) hs.acc[e] = 0.f;
    for (int64_t r = 0; r < nparts; ++r) merge_partial<Tr>(a, hs, (first + r) * G + h, lane);
    finish<Tr>(a, hs, o / Hkv, (o % Hkv) * G + h, lane);
  }
}

template <class Tr, int kHPW>
cudaError_t max_workers(int device, int64_t* workers) {
  int sms = 0, per_sm = 0;
  cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(decode_kernel<Tr, kHPW>, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
  if (e != cudaSuccess) return e;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_kernel<Tr, kHPW>, Tr::kThreads, Tr::kSmemBytes);
  if (e != cudaSuccess) return e;
  *workers = int64_t(sms) * per_sm;
  return cudaSuccess;
}

template <class Tr, int kHPW>
cudaError_t launch(const DecodeArgs& a, cudaStream_t stream) {
  if (!a.separate_merge) {
    int device = 0;
    int64_t cap = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e == cudaSuccess) e = max_workers<Tr, kHPW>(device, &cap);
    if (e != cudaSuccess) return e;
    if (a.plan.workers > cap) return cudaErrorCooperativeLaunchTooLarge;
  } else {
    const cudaError_t e = cudaFuncSetAttribute(decode_kernel<Tr, kHPW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               Tr::kSmemBytes);
    if (e != cudaSuccess) return e;
  }
  decode_kernel<Tr, kHPW><<<unsigned(a.plan.workers), Tr::kThreads, Tr::kSmemBytes, stream>>>(a);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || !a.separate_merge) return e;
  const int64_t outputs = a.p.batch * a.p.heads_kv;
  if (outputs == 0) return cudaSuccess;
  merge_kernel<Tr, kHPW><<<unsigned(outputs), Tr::kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

// Heads per warp by group size: G <= 8 two, G <= 16 four.
template <class Tr>
cudaError_t launch_by_group(const DecodeArgs& a, cudaStream_t stream) {
  return a.io.heads_q / a.p.heads_kv <= 8 ? launch<Tr, 2>(a, stream) : launch<Tr, 4>(a, stream);
}
template <class Tr>
cudaError_t max_workers_by_group(int64_t group, int device, int64_t* workers) {
  return group <= 8 ? max_workers<Tr, 2>(device, workers) : max_workers<Tr, 4>(device, workers);
}

// One (dtype, head_dim) instance per generated file (tools/gen_decode_instances.py).
template <typename T, int kD>
cudaError_t launch_instance(const DecodeArgs& a, cudaStream_t stream);
template <typename T, int kD>
cudaError_t max_workers_instance(int64_t group, int device, int64_t* workers);

}  // namespace sparse_attn::cuda::decode
