// Device code of the attention kernel (included by attention_kb*.cu).
// Attention over packed compressed caches: decode (one query per item) and
// probe/chunk mode (many items sharing one cache, each with its own causal
// count of uncompressed fp32 tail keys). Split-K over units of <= 32 tokens.
//
// Tensor-core version (mma.sync m16n8k16, fp16 operands, fp32 accumulation).
// Block = 4 warps for one (item, KV head, chunk of <= 8 query heads of the
// group) and one split of the unit range; every packed code is read and
// unpacked once for all the group's query heads (the 8 columns of the mma).
// A warp takes one unit (<= 32 tokens) at a time:
//   S = K q^T    A = K rows (M = 32 tokens, 2 m-tiles; K = D channels), B =
//                q^T (N = 8 heads), q pre-scaled by log2(e)/sqrt(D). Codes
//                are unpacked to fp16 in registers (magic-number trick,
//                0x6400|code = 1024 + code) and dequantized with one fp16
//                FMA per pair, k = code*scale + min with the group's
//                per-channel fp16 scale/min. The channel order inside the mma
//                k dimension is permuted to match the packed layout (the sum
//                over channels does not care; q uses the same permutation).
//   softmax      online, base 2, per head (columns), in fp32.
//   O^T += V^T P^T   A = V^T (M = D channels, K = 16 tokens), B = P^T
//                (fp16, moved from the S accumulator layout by 8 shuffles per
//                unit), v = code*scale + min with the token's fp16 scale/min.
// Loads are straight from global memory into registers (8 to 64 bytes per
// thread and row, the warp's accesses cover whole rows); several warps per SM
// keep enough bytes in flight.
// MOEND_ATTENTION_PIPELINE=1 (compile time, default 1 since measured 1.05-1.17x
// faster on packed tuples at batch 8 / 64k-128k, fp16 tuples unchanged, H100
// 2026-11-22; 0 = the direct loads only): quantized units of
// fully packed instantiations (KB, VB < 16) are staged through a per-warp
// ring of shared memory with cp.async (sm_80+), StageLayout::kStages deep, so
// that several units per warp are in flight while one is computed; the
// compute (ProcessUnit) is the same, reading the stage instead of global.
// Warps are merged in shared memory; splits are merged by CombineKernel.
#ifndef MOEND_KERNELS_CUDA_ATTENTION_KERNEL_CUH_
#define MOEND_KERNELS_CUDA_ATTENTION_KERNEL_CUH_

#include <atomic>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/unpack_bits.h"

namespace moend::kernels::cuda {
namespace attention_detail {

constexpr int kWarps = 4;
constexpr int kMaxGroup = 8;  // query heads per block (the mma's N)
// Resident blocks per SM the register allocation must allow (12 warps):
// enough bytes in flight for 2-bit caches without spilling (<= 168 registers).
#ifndef MOEND_ATTENTION_MIN_BLOCKS
#define MOEND_ATTENTION_MIN_BLOCKS 3
#endif
constexpr int kMinBlocksPerSm = MOEND_ATTENTION_MIN_BLOCKS;
#ifndef MOEND_ATTENTION_PIPELINE
#define MOEND_ATTENTION_PIPELINE 1
#endif
#if MOEND_ATTENTION_PIPELINE && defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "MOEND_ATTENTION_PIPELINE=1 (the default) needs cp.async (sm_80 or newer); build with -DCMAKE_CUDA_FLAGS=-DMOEND_ATTENTION_PIPELINE=0 for older GPUs"
#endif
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// f(std::integral_constant<int, I>{}) for I in [0, N), unrolled at compile time.
template <typename F, int... I>
__device__ __forceinline__ void StaticForImpl(F& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
__device__ __forceinline__ void StaticFor(F&& f) {
  StaticForImpl(f, std::make_integer_sequence<int, N>{});
}

using unpack::BytePerm;
__device__ __forceinline__ uint32_t H2Bits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ __half2 BitsH2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }
__device__ __forceinline__ uint32_t PackF2(float lo, float hi) { return H2Bits(__floats2half2_rn(lo, hi)); }

// Magic pair at bit P (kernels/cuda/unpack_bits.h) -> dequantized fp16 pair:
// the codes exactly (one FMA, or the subtraction of 1024 at P = 0), then
// code * scale + min.
template <int P>
__device__ __forceinline__ uint32_t Dequant(uint32_t magic, uint32_t scale2, uint32_t min2) {
  __half2 code;
  if constexpr (P == 0) {
    code = __hsub2(BitsH2(magic), BitsH2(0x64006400u));
  } else {
    code = __hfma2(BitsH2(magic), BitsH2(unpack::CodeScale(P)), BitsH2(unpack::CodeOffset(P)));
  }
  return H2Bits(__hfma2(code, BitsH2(scale2), BitsH2(min2)));
}

// ---- K side: thread t of the quad owns channels [Cpt*t, Cpt*t + Cpt), Cpt = D/4;
// pair j of them is (PairCh<KB>::Lo(j), Hi(j)) (kernels/cuda/unpack_bits.h).
using unpack::KMagic;
using unpack::KPairP;
using unpack::PairCh;

// fp16 pair (channel lo, channel hi) from fp16 words (word i = channels 2i, 2i+1).
template <int LO, int HI>
__device__ __forceinline__ uint32_t HalfPair(const uint32_t* w) {
  return BytePerm(w[LO / 2], w[HI / 2], ((LO & 1) ? 0x32u : 0x10u) | (((HI & 1) ? 0x76u : 0x54u) << 8));
}

// ---- V side: thread g of the warp owns channels [Dpt*g, Dpt*g + Dpt), Dpt = D/8;
// channel c of those is mma row g (c even) or g+8 (c odd) of m-tile c/2.
// V pair for channel C of tokens (a, b): the magic pair of their codes
// (unpack::VMagic, bit position unpack::VPairP), or at 16 bits the fp16 values.
template <int VB, int C>
__device__ __forceinline__ uint32_t VMagic(const uint32_t* wa, const uint32_t* wb) {
  if constexpr (VB == 16) {
    return BytePerm(wa[C / 2], wb[C / 2], (C % 2) ? 0x7632u : 0x5410u);
  } else {
    return unpack::VMagic<VB, C>(wa, wb);
  }
}

// Global memory through the read-only path, or shared memory (kSmem).
template <bool kSmem, typename T>
__device__ __forceinline__ T Ld(const T* p) {
  if constexpr (kSmem) {
    return *p;
  } else {
    return __ldg(p);
  }
}

// Loads BYTES (2..64) from p into words (read-only path, or shared memory).
template <int BYTES, bool kSmem = false>
__device__ __forceinline__ void LoadWords(const uint8_t* p, uint32_t* w) {
  if constexpr (BYTES == 2) {
    w[0] = *reinterpret_cast<const uint16_t*>(p);
  } else if constexpr (BYTES == 4) {
    w[0] = Ld<kSmem>(reinterpret_cast<const uint32_t*>(p));
  } else if constexpr (BYTES == 8) {
    const uint2 u = Ld<kSmem>(reinterpret_cast<const uint2*>(p));
    w[0] = u.x;
    w[1] = u.y;
  } else {
#pragma unroll
    for (int i = 0; i < BYTES / 16; ++i) {
      const uint4 u = Ld<kSmem>(reinterpret_cast<const uint4*>(p) + i);
      w[4 * i] = u.x;
      w[4 * i + 1] = u.y;
      w[4 * i + 2] = u.z;
      w[4 * i + 3] = u.w;
    }
  }
}
template <int WORDS>
__device__ __forceinline__ void ZeroWords(uint32_t* w) {
#pragma unroll
  for (int i = 0; i < WORDS; ++i) w[i] = 0;
}
// FLOATS fp32 values -> FLOATS/2 fp16 words (pairs (2i, 2i+1)).
template <int FLOATS>
__device__ __forceinline__ void LoadFloatsAsHalf(const float* p, uint32_t* w) {
#pragma unroll
  for (int i = 0; i < FLOATS / 4; ++i) {
    const float4 f = __ldg(reinterpret_cast<const float4*>(p) + i);
    w[2 * i] = PackF2(f.x, f.y);
    w[2 * i + 1] = PackF2(f.z, f.w);
  }
}

// Where a unit's rows live. kind: 0 quantized (KB/VB packed or fp16 rows),
// 1 fp16 rows (window/residual), 2 fp32 rows (probe tail).
struct UnitSrc {
  const uint8_t* k = nullptr;      // row 0 of the unit
  const uint8_t* v = nullptr;
  const uint16_t* k_scale = nullptr;  // group row [D] (quantized K)
  const uint16_t* k_min = nullptr;
  const uint16_t* v_scale = nullptr;  // token 0 of the unit, [D/32] per token (quantized V)
  const uint16_t* v_min = nullptr;
  int n = 0;                          // tokens in the unit, 1..32
};

// Running state of one warp: heads 2t, 2t+1 (columns of the mma).
template <int D>
struct WarpState {
  float m[2];
  float l[2];  // this thread's partial sum (tokens g, g+8, g+16, g+24)
  float o[D / 16][4];
};

// One unit: KK/VK: bits of the K/V rows (2, 4, 8 packed; 16 fp16; 32 fp32).
// KB: the instantiation's K bits, which fixes the channel pairing of bq.
// kSmem: src points into a shared-memory stage (StageLayout, rows >= n
// already zero) instead of global memory; the math is the same.
template <int D, int KB, int KK, int VK, bool kSmem = false>
__device__ __forceinline__ void ProcessUnit(const UnitSrc& src, const uint32_t (&bq)[D / 16][2], WarpState<D>& st,
                                            int lane) {
  constexpr int kCpt = D / 4, kDpt = D / 8, kKT = D / 16, kMT = D / 16;
  const int g = lane >> 2, t = lane & 3;
  const int n = src.n;

  // ---------------- K: rows g + 8 ri, channels [Cpt t, Cpt t + Cpt).
  constexpr int kKW = KK == 32 ? kCpt / 2 : kCpt * KK / 32;  // words per row (fp32 -> fp16 words)
  uint32_t kw[4][kKW];
#pragma unroll
  for (int ri = 0; ri < 4; ++ri) {
    const int r = g + 8 * ri;
    if (kSmem || r < n) {
      if constexpr (KK == 32) {
        LoadFloatsAsHalf<kCpt>(reinterpret_cast<const float*>(src.k) + static_cast<int64_t>(r) * D + kCpt * t,
                               kw[ri]);
      } else {
        LoadWords<kCpt * KK / 8, kSmem>(src.k + static_cast<int64_t>(r) * (D * KK / 8) + kCpt * t * KK / 8, kw[ri]);
      }
    } else {
      ZeroWords<kKW>(kw[ri]);
    }
  }
  uint32_t ksc[kCpt / 2], kmn[kCpt / 2];  // fp16 words of the thread's channels' scale and min
  if constexpr (KK < 16) {
    LoadWords<kCpt * 2, kSmem>(reinterpret_cast<const uint8_t*>(src.k_scale + kCpt * t), ksc);
    LoadWords<kCpt * 2, kSmem>(reinterpret_cast<const uint8_t*>(src.k_min + kCpt * t), kmn);
  }
  // ---------------- V loads: tokens 16kk + {2t, 2t+1, 2t+8, 2t+9}. For packed
  // units they are issued together with the K loads (one memory latency per
  // unit instead of two); fp16/fp32 units issue them after q.k to bound the
  // registers (64 words of K rows and 64 of V rows otherwise), and so do
  // staged units (shared memory is close).
  constexpr int kVW = VK == 32 ? kDpt / 2 : (kDpt * VK / 8 + 3) / 4;
  uint32_t vw[8][kVW];
  __half vsc[8], vmn[8];
  const int vgrp = kDpt * g / 32;
  auto load_v = [&] {
#pragma unroll
    for (int vi = 0; vi < 8; ++vi) {
      const int tok = 16 * (vi / 4) + 2 * t + (vi & 1) + ((vi & 2) ? 8 : 0);
      if (kSmem || tok < n) {
        if constexpr (VK == 32) {
          LoadFloatsAsHalf<kDpt>(reinterpret_cast<const float*>(src.v) + static_cast<int64_t>(tok) * D + kDpt * g,
                                 vw[vi]);
        } else {
          LoadWords<kDpt * VK / 8, kSmem>(src.v + static_cast<int64_t>(tok) * (D * VK / 8) + kDpt * g * VK / 8,
                                          vw[vi]);
        }
        if constexpr (VK < 16) {
          vsc[vi] = __ushort_as_half(src.v_scale[static_cast<int64_t>(tok) * (D / 32) + vgrp]);
          vmn[vi] = __ushort_as_half(src.v_min[static_cast<int64_t>(tok) * (D / 32) + vgrp]);
        }
      } else {
        ZeroWords<kVW>(vw[vi]);
        if constexpr (VK < 16) {
          vsc[vi] = __ushort_as_half(0);
          vmn[vi] = __ushort_as_half(0);
        }
      }
    }
  };
  constexpr bool kEarlyV = !kSmem && (KK < 16 || VK < 16);
  if constexpr (kEarlyV) load_v();

  float s[2][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) s[mt][i] = 0.0f;
  }
  StaticFor<kKT>([&](auto kt_c) {
    constexpr int KT = decltype(kt_c)::value;
    constexpr int j0 = 2 * KT, j1 = 2 * KT + 1;
    constexpr int lo0 = PairCh<KB>::Lo(j0), hi0 = PairCh<KB>::Hi(j0);
    constexpr int lo1 = PairCh<KB>::Lo(j1), hi1 = PairCh<KB>::Hi(j1);
    [[maybe_unused]] uint32_t sc0 = 0, mn0 = 0, sc1 = 0, mn1 = 0;
    if constexpr (KK < 16) {
      sc0 = HalfPair<lo0, hi0>(ksc);
      mn0 = HalfPair<lo0, hi0>(kmn);
      sc1 = HalfPair<lo1, hi1>(ksc);
      mn1 = HalfPair<lo1, hi1>(kmn);
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      // a0 row g pair j0, a1 row g+8 pair j0, a2 row g pair j1, a3 row g+8 pair j1.
      uint32_t a[4];
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        const int ri = 2 * mt + (f & 1);
        if constexpr (KK < 16) {
          a[f] = (f < 2) ? Dequant<KPairP<KK, j0>()>(KMagic<KK, j0>(kw[ri]), sc0, mn0)
                         : Dequant<KPairP<KK, j1>()>(KMagic<KK, j1>(kw[ri]), sc1, mn1);
        } else {
          a[f] = (f < 2) ? HalfPair<lo0, hi0>(kw[ri]) : HalfPair<lo1, hi1>(kw[ri]);
        }
      }
      Mma16816(s[mt], a[0], a[1], a[2], a[3], bq[KT][0], bq[KT][1]);
    }
  });

  if constexpr (!kEarlyV) load_v();

  // ---------------- online softmax (base 2) for heads 2t, 2t+1.
  uint32_t pk[2][2];  // [kk][e]: fp16 (p[tok 16kk+g], p[tok 16kk+g+8]) of head 2t+e
#pragma unroll
  for (int e = 0; e < 2; ++e) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      if (16 * mt + g >= n) s[mt][e] = -INFINITY;
      if (16 * mt + g + 8 >= n) s[mt][2 + e] = -INFINITY;
    }
    float mx = fmaxf(fmaxf(s[0][e], s[0][2 + e]), fmaxf(s[1][e], s[1][2 + e]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
    const float mnew = fmaxf(st.m[e], mx);
    const float corr = Exp2(st.m[e] - mnew);
    st.m[e] = mnew;
    float sum = 0.0f;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const float p0 = Exp2(s[mt][e] - mnew), p1 = Exp2(s[mt][2 + e] - mnew);
      sum += p0 + p1;
      pk[mt][e] = PackF2(p0, p1);
    }
    st.l[e] = st.l[e] * corr + sum;
#pragma unroll
    for (int m = 0; m < kMT; ++m) {
      st.o[m][e] *= corr;
      st.o[m][2 + e] *= corr;
    }
  }

  // ---------------- O^T += V^T P^T over the two k-tiles of 16 tokens.
  const int src0 = 8 * t + (g >> 1), src1 = src0 + 4;  // lanes holding tokens 2t and 2t+1 for head g
  const bool odd = g & 1;
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    const uint32_t y00 = __shfl_sync(0xffffffffu, pk[kk][0], src0), y01 = __shfl_sync(0xffffffffu, pk[kk][1], src0);
    const uint32_t y10 = __shfl_sync(0xffffffffu, pk[kk][0], src1), y11 = __shfl_sync(0xffffffffu, pk[kk][1], src1);
    const uint32_t x0 = odd ? y01 : y00, x1 = odd ? y11 : y10;  // (p[2t], p[2t+8]), (p[2t+1], p[2t+9]) of head g
    const uint32_t b0 = BytePerm(x0, x1, 0x5410u), b1 = BytePerm(x0, x1, 0x7632u);
    const int v0 = 4 * kk;  // vi of tokens 2t, 2t+1, 2t+8, 2t+9
    uint32_t s01 = 0, m01 = 0, s89 = 0, m89 = 0;
    if constexpr (VK < 16) {
      s01 = H2Bits(__halves2half2(vsc[v0], vsc[v0 + 1]));
      m01 = H2Bits(__halves2half2(vmn[v0], vmn[v0 + 1]));
      s89 = H2Bits(__halves2half2(vsc[v0 + 2], vsc[v0 + 3]));
      m89 = H2Bits(__halves2half2(vmn[v0 + 2], vmn[v0 + 3]));
    }
    StaticFor<kMT>([&](auto m_c) {
      constexpr int M = decltype(m_c)::value;
      constexpr int c0 = 2 * M, c1 = 2 * M + 1;
      constexpr int vk = VK == 32 ? 16 : VK;
      uint32_t a0 = VMagic<vk, c0>(vw[v0], vw[v0 + 1]);
      uint32_t a1 = VMagic<vk, c1>(vw[v0], vw[v0 + 1]);
      uint32_t a2 = VMagic<vk, c0>(vw[v0 + 2], vw[v0 + 3]);
      uint32_t a3 = VMagic<vk, c1>(vw[v0 + 2], vw[v0 + 3]);
      if constexpr (VK < 16) {
        constexpr int p0 = unpack::VPairP<VK, c0>(), p1 = unpack::VPairP<VK, c1>();
        a0 = Dequant<p0>(a0, s01, m01);
        a1 = Dequant<p1>(a1, s01, m01);
        a2 = Dequant<p0>(a2, s89, m89);
        a3 = Dequant<p1>(a3, s89, m89);
      }
      Mma16816(st.o[M], a0, a1, a2, a3, b0, b1);
    });
  }
}

// Tokens [tok0, tok0 + n) of quantized unit u (u < n_qu), which is K group u:
// ceil(initial_kept/32) groups over the tokens kept at compression (the last
// one partial), then one full group per flush.
struct QuantRange {
  int tok0;
  int n;
};
__device__ __forceinline__ QuantRange QuantUnit(const HeadCacheView& hv, int nb0, int u) {
  const int tok0 = u < nb0 ? u * 32 : hv.initial_kept + (u - nb0) * 32;
  return {tok0, u < nb0 ? min(32, hv.initial_kept - tok0) : 32};
}

// ---- MOEND_ATTENTION_PIPELINE: shared-memory stages of quantized units.
// One stage holds one unit in its global layout (so ProcessUnit addresses it
// the same way), rows >= n zero-filled:
//   k codes [32, D*KB/8] | k scale [D] | k min [D] | v codes [32, D*VB/8] |
//   v scale [32, D/32] | v min [32, D/32]              (fp16 params)
// Each warp owns kStages stages; the block's ring stays within kRingBudget
// bytes so that kMinBlocksPerSm blocks fit an H100 SM (228 KB).
constexpr int kRingBudget = 72 * 1024;
template <int D, int KB, int VB>
struct StageLayout {
  static constexpr bool kUsed = KB < 16 && VB < 16;  // fp16 sides keep the direct path
  static constexpr int kK = 0;
  static constexpr int kKScale = kK + 32 * (D * KB / 8);
  static constexpr int kKMin = kKScale + 2 * D;
  static constexpr int kV = kKMin + 2 * D;
  static constexpr int kVScale = kV + 32 * (D * VB / 8);
  static constexpr int kVMin = kVScale + 2 * D;
  static constexpr int kBytes = kVMin + 2 * D;
  static constexpr int kStages = kRingBudget / (kWarps * kBytes) < 4 ? kRingBudget / (kWarps * kBytes) : 4;
  static_assert(!kUsed || kStages >= 2, "ring budget too small for double buffering");
  static_assert(kBytes % 16 == 0, "stages must keep 16-byte alignment");
};

// Dynamic shared memory of AttentionKernel<D, KB, VB> with the pipeline: the
// rings, reused for the merge of the warps (o, then m/l) after the loop.
template <int D, int KB, int VB>
constexpr int PipelineSmemBytes() {
  constexpr int merge = static_cast<int>(sizeof(float)) * kWarps * kMaxGroup * (D + 2);
  constexpr int ring = StageLayout<D, KB, VB>::kUsed ? kWarps * StageLayout<D, KB, VB>::kStages *
                                                           StageLayout<D, KB, VB>::kBytes
                                                     : 0;
  return ring > merge ? ring : merge;
}

// The warp copies BYTES (a multiple of 16) from src to the stage at dst, of
// which the first `valid` bytes exist (the rest is zero-filled). cp.async
// needs 16-byte aligned sources; a misaligned piece (a caller's buffer with a
// 2-byte aligned base, or the V params of a flushed group after an odd
// initial_kept) is copied synchronously in 2-byte elements instead.
template <int BYTES>
__device__ __forceinline__ void StagePiece(uint8_t* dst, const uint8_t* src, int valid, int lane) {
  constexpr int kChunks = BYTES / 16;
  if ((reinterpret_cast<uintptr_t>(src) & 15) == 0) {
#pragma unroll
    for (int i = 0; i < (kChunks + 31) / 32; ++i) {
      const int c = lane + 32 * i;
      if (kChunks % 32 == 0 || c < kChunks) {
        const int bytes = min(16, max(0, valid - 16 * c));
        CpAsync16(dst + 16 * c, bytes > 0 ? src + 16 * c : src, bytes);
      }
    }
  } else {
    const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
    uint16_t* d = reinterpret_cast<uint16_t*>(dst);
#pragma unroll 1
    for (int e = lane; e < BYTES / 2; e += 32) d[e] = 2 * e < valid ? s[e] : uint16_t{0};
  }
}

// Issues the copies of quantized unit u into stage (all lanes of the warp).
template <int D, int KB, int VB>
__device__ __forceinline__ void IssueStage(const HeadCacheView& hv, int nb0, int u, uint8_t* stage, int lane) {
  using L = StageLayout<D, KB, VB>;
  constexpr int kKRow = D * KB / 8, kVRow = D * VB / 8;
  const QuantRange q = QuantUnit(hv, nb0, u);
  StagePiece<32 * kKRow>(stage + L::kK, hv.k_codes + static_cast<int64_t>(q.tok0) * kKRow, q.n * kKRow, lane);
  StagePiece<2 * D>(stage + L::kKScale, reinterpret_cast<const uint8_t*>(hv.k_scale + static_cast<int64_t>(u) * D),
                    2 * D, lane);
  StagePiece<2 * D>(stage + L::kKMin, reinterpret_cast<const uint8_t*>(hv.k_min + static_cast<int64_t>(u) * D),
                    2 * D, lane);
  StagePiece<32 * kVRow>(stage + L::kV, hv.v_codes + static_cast<int64_t>(q.tok0) * kVRow, q.n * kVRow, lane);
  const int64_t vp = static_cast<int64_t>(q.tok0) * (D / 32);
  StagePiece<2 * D>(stage + L::kVScale, reinterpret_cast<const uint8_t*>(hv.v_scale + vp), q.n * (D / 16), lane);
  StagePiece<2 * D>(stage + L::kVMin, reinterpret_cast<const uint8_t*>(hv.v_min + vp), q.n * (D / 16), lane);
}

// The stage as a UnitSrc for ProcessUnit<..., kSmem = true>.
template <int D, int KB, int VB>
__device__ __forceinline__ UnitSrc StageSrc(const uint8_t* stage, int n) {
  using L = StageLayout<D, KB, VB>;
  UnitSrc src;
  src.k = stage + L::kK;
  src.v = stage + L::kV;
  src.k_scale = reinterpret_cast<const uint16_t*>(stage + L::kKScale);
  src.k_min = reinterpret_cast<const uint16_t*>(stage + L::kKMin);
  src.v_scale = reinterpret_cast<const uint16_t*>(stage + L::kVScale);
  src.v_min = reinterpret_cast<const uint16_t*>(stage + L::kVMin);
  src.n = n;
  return src;
}

// grid (splits, num_kv_heads * head_chunks, items), block 128.
template <int D, int KB, int VB>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocksPerSm) AttentionKernel(const AttentionParams p) {
  constexpr int kCpt = D / 4, kDpt = D / 8, kKT = D / 16, kMT = D / 16;
#if MOEND_ATTENTION_PIPELINE
  // [rings of the warps], then reused as o_s [kWarps][kMaxGroup][D], ml_s [kWarps][kMaxGroup][2].
  extern __shared__ __align__(16) uint8_t smem[];
  float(*o_s)[kMaxGroup][D] = reinterpret_cast<float(*)[kMaxGroup][D]>(smem);
  float(*ml_s)[kMaxGroup][2] = reinterpret_cast<float(*)[kMaxGroup][2]>(smem + sizeof(float) * kWarps * kMaxGroup * D);
#else
  __shared__ __align__(16) float o_s[kWarps][kMaxGroup][D];
  __shared__ float ml_s[kWarps][kMaxGroup][2];
#endif

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int group = p.num_heads / p.num_kv_heads, head_chunks = (group + kMaxGroup - 1) / kMaxGroup;
  const int split = blockIdx.x, item = blockIdx.z;
  const int hk = blockIdx.y / head_chunks, hc = blockIdx.y % head_chunks;
  const int h0 = hk * group + hc * kMaxGroup, nh = min(kMaxGroup, group - hc * kMaxGroup);
  const HeadCacheView hv = p.heads[static_cast<int64_t>(item) * p.num_kv_heads + hk];
  const int tail = p.tail_len ? p.tail_len[item] : 0;

  // q^T fragments: column g = head h0 + g, channels of quad thread t in PairCh<KB> order.
  uint32_t bq[kKT][2];
  {
    const float qscale = rsqrtf(static_cast<float>(D)) * kLog2e;
    const float* qh = p.q + item * p.q_item_stride + (h0 + g) * p.q_head_stride + kCpt * t;
    StaticFor<D / 8>([&](auto j_c) {
      constexpr int J = decltype(j_c)::value;
      constexpr int lo = PairCh<KB>::Lo(J), hi = PairCh<KB>::Hi(J);
      bq[J / 2][J % 2] = g < nh ? PackF2(qh[lo] * qscale, qh[hi] * qscale) : 0u;
    });
  }

  const int nb0 = (hv.initial_kept + 31) / 32;
  const int n_qu = nb0 + (hv.n_quant - hv.initial_kept) / 32;
  const int n_wu = (hv.n_window + 31) / 32, n_ru = (hv.n_residual + 31) / 32;
  const int units = n_qu + n_wu + n_ru + (tail + 31) / 32;
  const UnitRange range = SplitUnitRange(units, p.max_units, p.splits, split);
  const int u_begin = range.begin, u_end = range.end;

  WarpState<D> st;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    st.m[e] = -INFINITY;
    st.l[e] = 0.0f;
  }
#pragma unroll
  for (int m = 0; m < kMT; ++m) {
#pragma unroll
    for (int i = 0; i < 4; ++i) st.o[m][i] = 0.0f;
  }

  int u = u_begin + warp;
#if MOEND_ATTENTION_PIPELINE
  if constexpr (StageLayout<D, KB, VB>::kUsed) {
    // The warp's quantized units u, u + kWarps, ... (< q_end) through its ring:
    // kStages - 1 in flight while one is computed. One commit group per unit
    // (empty past q_end) keeps the wait count uniform.
    using L = StageLayout<D, KB, VB>;
    uint8_t* ring = smem + warp * (L::kStages * L::kBytes);
    const int q_end = min(u_end, n_qu);
#pragma unroll
    for (int s = 0; s < L::kStages - 1; ++s) {
      const int un = u + s * kWarps;
      if (un < q_end) IssueStage<D, KB, VB>(hv, nb0, un, ring + s * L::kBytes, lane);
      CpAsyncCommit();
    }
    int rd = 0, wr = L::kStages - 1;  // stage of unit u, stage for unit u + (kStages - 1) * kWarps
    for (; u < q_end; u += kWarps) {
      __syncwarp();  // every lane is done with stage wr (read for the previous unit)
      const int un = u + (L::kStages - 1) * kWarps;
      if (un < q_end) IssueStage<D, KB, VB>(hv, nb0, un, ring + wr * L::kBytes, lane);
      CpAsyncCommit();
      CpAsyncWait<L::kStages - 1>();  // this lane's copies of unit u have landed
      __syncwarp();                    // ... and every other lane's
      ProcessUnit<D, KB, KB, VB, true>(StageSrc<D, KB, VB>(ring + rd * L::kBytes, QuantUnit(hv, nb0, u).n), bq, st,
                                       lane);
      rd = rd + 1 == L::kStages ? 0 : rd + 1;
      wr = wr + 1 == L::kStages ? 0 : wr + 1;
    }
  }
#endif
  for (; u < u_end; u += kWarps) {
    UnitSrc src;
    if (u < n_qu) {
      const QuantRange q = QuantUnit(hv, nb0, u);
      const int tok0 = q.tok0;
      src.n = q.n;
      src.k = hv.k_codes + static_cast<int64_t>(tok0) * (D * KB / 8);
      src.v = hv.v_codes + static_cast<int64_t>(tok0) * (D * VB / 8);
      src.k_scale = hv.k_scale + static_cast<int64_t>(u) * D;
      src.k_min = hv.k_min + static_cast<int64_t>(u) * D;
      src.v_scale = hv.v_scale + static_cast<int64_t>(tok0) * (D / 32);
      src.v_min = hv.v_min + static_cast<int64_t>(tok0) * (D / 32);
      ProcessUnit<D, KB, KB, VB>(src, bq, st, lane);
    } else if (u < n_qu + n_wu + n_ru) {
      const bool window = u < n_qu + n_wu;
      const int tok0 = (window ? u - n_qu : u - n_qu - n_wu) * 32;
      src.n = min(32, (window ? hv.n_window : hv.n_residual) - tok0);
      src.k = reinterpret_cast<const uint8_t*>((window ? hv.window_k : hv.residual_k) + static_cast<int64_t>(tok0) * D);
      src.v = reinterpret_cast<const uint8_t*>((window ? hv.window_v : hv.residual_v) + static_cast<int64_t>(tok0) * D);
      ProcessUnit<D, KB, 16, 16>(src, bq, st, lane);
    } else {
      const int tok0 = (u - n_qu - n_wu - n_ru) * 32;
      src.n = min(32, tail - tok0);
      src.k = reinterpret_cast<const uint8_t*>(p.tail_k + hk * p.tail_head_stride + static_cast<int64_t>(tok0) * D);
      src.v = reinterpret_cast<const uint8_t*>(p.tail_v + hk * p.tail_head_stride + static_cast<int64_t>(tok0) * D);
      ProcessUnit<D, KB, 32, 32>(src, bq, st, lane);
    }
  }

#if MOEND_ATTENTION_PIPELINE
  // o_s/ml_s reuse the rings: every warp must be done with its ring.
  CpAsyncWait<0>();
  __syncthreads();
#endif
  // Merge the warps of the block: heads 2t+e, l summed over the 8 row groups.
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    float l = st.l[e];
    l += __shfl_xor_sync(0xffffffffu, l, 4);
    l += __shfl_xor_sync(0xffffffffu, l, 8);
    l += __shfl_xor_sync(0xffffffffu, l, 16);
    const int h = 2 * t + e;
    if (g == 0) {
      ml_s[warp][h][0] = st.m[e];
      ml_s[warp][h][1] = l;
    }
#pragma unroll
    for (int m = 0; m < kMT; ++m) {
      o_s[warp][h][kDpt * g + 2 * m] = st.o[m][e];
      o_s[warp][h][kDpt * g + 2 * m + 1] = st.o[m][2 + e];
    }
  }
  __syncthreads();
  float* part_o = p.workspace;
  float* part_ml = p.workspace + static_cast<int64_t>(p.items) * p.num_heads * p.splits * D;
  for (int e = threadIdx.x; e < nh * D; e += blockDim.x) {
    const int h = e / D, d = e % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, ml_s[w][h][0]);
    float o = 0.0f, l = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = Exp2(ml_s[w][h][0] - mx);
        o += f * o_s[w][h][d];
        l += f * ml_s[w][h][1];
      }
    }
    const int64_t slot = (static_cast<int64_t>(item) * p.num_heads + h0 + h) * p.splits + split;
    part_o[slot * D + d] = o;
    if (d == 0) {
      part_ml[2 * slot] = mx;
      part_ml[2 * slot + 1] = l;
    }
  }
}

}  // namespace attention_detail

// Launches AttentionKernel<D, KB, VB> for run-time D and VB; one definition
// per KB lives in attention_kb<KB>.cu so the instantiations compile in parallel.
template <int KB>
cudaError_t LaunchAttentionKernel(const AttentionParams& p, dim3 grid, cudaStream_t s);
template <>
cudaError_t LaunchAttentionKernel<2>(const AttentionParams& p, dim3 grid, cudaStream_t s);
template <>
cudaError_t LaunchAttentionKernel<4>(const AttentionParams& p, dim3 grid, cudaStream_t s);
template <>
cudaError_t LaunchAttentionKernel<8>(const AttentionParams& p, dim3 grid, cudaStream_t s);
template <>
cudaError_t LaunchAttentionKernel<16>(const AttentionParams& p, dim3 grid, cudaStream_t s);

namespace attention_detail {
// Launches AttentionKernel<D, KB, VB> on stream s.
template <int D, int KB, int VB>
cudaError_t LaunchOne(const AttentionParams& p, dim3 grid, cudaStream_t s) {
#if MOEND_ATTENTION_PIPELINE
  // The kernel opts in to its dynamic shared memory (above 48 KB) and asks for
  // the largest shared-memory carveout, once per device (bit i of `ready`).
  constexpr int kSmem = PipelineSmemBytes<D, KB, VB>();
  static std::atomic<uint64_t> ready{0};
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
  if (!(ready.load(std::memory_order_relaxed) & bit)) {
    e = cudaFuncSetAttribute(AttentionKernel<D, KB, VB>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    // Only the staged instantiations want the carveout; the 16-bit ones keep
    // the default (more L1 for their direct loads).
    if (e == cudaSuccess && StageLayout<D, KB, VB>::kUsed) {
      e = cudaFuncSetAttribute(AttentionKernel<D, KB, VB>, cudaFuncAttributePreferredSharedMemoryCarveout,
                               static_cast<int>(cudaSharedmemCarveoutMaxShared));
    }
    if (e != cudaSuccess) return e;
    ready.fetch_or(bit, std::memory_order_relaxed);
  }
  AttentionKernel<D, KB, VB><<<grid, kWarps * 32, kSmem, s>>>(p);
#else
  AttentionKernel<D, KB, VB><<<grid, kWarps * 32, 0, s>>>(p);
#endif
  return cudaGetLastError();
}
}  // namespace attention_detail

#define MOEND_DEFINE_ATTENTION_LAUNCH(KB)                                                      \
  template <>                                                                                  \
  cudaError_t LaunchAttentionKernel<KB>(const AttentionParams& p, dim3 grid, cudaStream_t s) { \
    return DispatchHeadDim(p.head_dim, [&](auto d) {                                           \
      return DispatchBits(p.vbits, [&](auto vb) {                                              \
        return attention_detail::LaunchOne<decltype(d)::value, KB, decltype(vb)::value>(p, grid, s); \
      });                                                                                      \
    });                                                                                        \
  }

}  // namespace moend::kernels::cuda

#endif  // MOEND_KERNELS_CUDA_ATTENTION_KERNEL_CUH_
