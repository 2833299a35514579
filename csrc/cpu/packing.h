// K and V in the layout the CPU tile products read, for the whole sequence (PackedKV) or
// for gathered key columns (the same chunk packers on a gathered copy).
//  kVnni (bf16/fp16 with AMX): K chunk of 64 keys as [D/2][64][2] (VNNI of K^T); V per
//    head_dim chunk of width w as [skpad/2][w][2]. Keys past the end are zero.
//  float: K chunk as [D][64] (K^T); V as float rows [skpad][D] (or read in place for fp32).
// Compiled once per instruction set (included by the kernel files only).
#pragma once
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "sparse_attn/params.h"
#include "tile_ops.h"

namespace sparse_attn::cpu::SA_CPU_NS {

constexpr int64_t kChunk = 64;      // keys per packed K chunk (brgemm N for S = Q K^T)
constexpr int64_t kDimChunk = 128;  // head_dim columns per packed V chunk (brgemm N for P V)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename scalar_t, bool kVnni>
struct ChunkPacker {
  using pack_t = std::conditional_t<kVnni, scalar_t, float>;

  // nt <= 64 keys as rows of `src` (row stride ld) -> one packed K chunk; rows past nt zero.
  static void k_chunk(const scalar_t* src, int64_t ld, int64_t nt, int64_t D, pack_t* dst) {
    // 16-bit rows at an odd stride or address cannot be read as 32-bit pairs.
    const bool word_aligned = sizeof(scalar_t) == 4 || (ld % 2 == 0 && reinterpret_cast<uintptr_t>(src) % 4 == 0);
    if constexpr (kVnni) {
      if (!word_aligned) {  // dst[d/2][n][d%2] = src[n][d], element by element
        for (int64_t n = 0; n < kChunk; ++n)
          for (int64_t d = 0; d < D; ++d) dst[((d / 2) * kChunk + n) * 2 + d % 2] = n < nt ? src[n * ld + d] : pack_t(0);
        return;
      }
    }
    if constexpr (sizeof(scalar_t) == sizeof(pack_t)) {
      // VNNI K^T, dst[d/2][n][d%2] = src[n][d], is a transpose of 32-bit (d, d+1) pairs;
      // fp32 K^T, dst[d][n] = src[n][d], is a transpose of 32-bit elements.
      constexpr int64_t per_word = 4 / sizeof(scalar_t);
      transpose_u32(reinterpret_cast<const uint32_t*>(src), ld / per_word, nt, D / per_word,
                    reinterpret_cast<uint32_t*>(dst), kChunk);
      for (int64_t c = 0; c < D / per_word; ++c) fill_zero(reinterpret_cast<uint32_t*>(dst) + c * kChunk, nt, kChunk);
    } else {  // 16-bit input computed in fp32 (no packed brgemm for it on this CPU)
      for (int64_t n = 0; n < nt; ++n)
        for (int64_t d = 0; d < D; ++d) dst[d * kChunk + n] = static_cast<float>(src[n * ld + d]);
      for (int64_t d = 0; d < D; ++d) fill_zero(dst + d * kChunk, nt, kChunk);
    }
  }

  // Keys [t0, t0 + 64) of a V of skpad rows starting at `head`; rows past nt are zero.
  static void v_chunk(const scalar_t* src, int64_t ld, int64_t t0, int64_t nt, int64_t D, int64_t skpad,
                      pack_t* head) {
    if constexpr (kVnni) {
      // Per head_dim chunk of width w: dst[t/2][dd][t%2] = src[t][d0 + dd]; t0 is even.
      for (int64_t d0 = 0; d0 < D; d0 += kDimChunk) {
        const int64_t w = std::min(kDimChunk, D - d0);
        pack_t* base = head + skpad * d0 + t0 * w;
        for (int64_t n = 0; n < kChunk; n += 2) {
          pack_t* o = base + n * w;
          if (n + 1 < nt) {
            interleave_u16(reinterpret_cast<const uint16_t*>(src + n * ld + d0),
                           reinterpret_cast<const uint16_t*>(src + (n + 1) * ld + d0), w,
                           reinterpret_cast<uint16_t*>(o));
          } else {  // past the end: zero rows
            for (int64_t dd = 0; dd < w; ++dd) {
              o[2 * dd] = n < nt ? src[n * ld + d0 + dd] : pack_t(0);
              o[2 * dd + 1] = pack_t(0);
            }
          }
        }
      }
    } else {
      float* out = head + t0 * D;
      for (int64_t n = 0; n < nt; ++n) at::vec::convert(src + n * ld, out + n * D, D);
      std::memset(out + nt * D, 0, sizeof(float) * (kChunk - nt) * D);
    }
  }
};

// Packed K and V of every (batch, kv head), built once per call in the thread's scratch.
template <typename scalar_t, bool kVnni>
struct PackedKV {
  using Packer = ChunkPacker<scalar_t, kVnni>;
  using pack_t = typename Packer::pack_t;
  static constexpr bool kInplaceV = !kVnni && std::is_same_v<scalar_t, float>;
  int64_t nchunks = 0, skpad = 0, D = 0;
  pack_t* k = nullptr;  // packed K of every (batch, kv head)
  pack_t* v = nullptr;  // packed or converted V; null when V is read in place
  const float* v_inplace = nullptr;  // fp32 inputs: V itself
  int64_t v_ld = 0;                  // row stride of V as read by P V
  int64_t v_head_stride[2] = {0, 0};  // batch, head strides of the V that is read

  void build(const AttentionParams& p) {
    D = p.head_dim;
    nchunks = ceil_div(p.seqlen_k, kChunk);
    skpad = nchunks * kChunk;
    const int64_t BG = p.batch * p.heads_kv;
    k = scratch<pack_t>(0, BG * skpad * D);
    if (kInplaceV) {
      v_inplace = static_cast<const float*>(p.v);
      v_ld = p.v_stride[1];
      v_head_stride[0] = p.v_stride[0];
      v_head_stride[1] = p.v_stride[2];
    } else {
      v = scratch<pack_t>(1, BG * skpad * D);
      v_ld = D;
      v_head_stride[0] = p.heads_kv * skpad * D;
      v_head_stride[1] = skpad * D;
    }
    const auto* K = static_cast<const scalar_t*>(p.k);
    const auto* V = static_cast<const scalar_t*>(p.v);
    // KV heads innermost: consecutive steps read neighbouring heads of the same key rows,
    // i.e. contiguous memory of a [B, S, H, D] tensor, which the prefetchers can follow
    // (head-major order read 256-byte pieces 2 KB apart and was latency-bound).
    at::parallel_for(0, BG * nchunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t it = begin; it < end; ++it) {
        const int64_t b = it / (nchunks * p.heads_kv), c = it / p.heads_kv % nchunks, g = it % p.heads_kv;
        const int64_t bg = b * p.heads_kv + g;
        const int64_t t0 = c * kChunk, nt = std::min(kChunk, p.seqlen_k - t0);
        const scalar_t* ksrc = K + b * p.k_stride[0] + g * p.k_stride[2] + t0 * p.k_stride[1];
        const scalar_t* vsrc = V + b * p.v_stride[0] + g * p.v_stride[2] + t0 * p.v_stride[1];
        Packer::k_chunk(ksrc, p.k_stride[1], nt, D, k + (bg * nchunks + c) * kChunk * D);
        if (!kInplaceV) Packer::v_chunk(vsrc, p.v_stride[1], t0, nt, D, skpad, v + bg * skpad * D);
      }
    });
  }
};

}  // namespace sparse_attn::cpu::SA_CPU_NS
