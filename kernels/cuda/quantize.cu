// Quantize + pack of the kept tokens and the fp16 window (DESIGN.md section 2).
// Byte-identical to the reference (kernels/reference/quantize_ref.cc).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.h"

namespace moend::kernels::cuda {
namespace {

// K: one block per (group of 32 kept tokens, KV head), one thread per channel.
// grid (ceil(m/32), H), block D.
template <int KB>
__global__ void QuantizeKeysKernel(const QuantizeParams p) {
  const int g = blockIdx.x, h = blockIdx.y, d = threadIdx.x, D = p.head_dim, m = p.kept;
  const int t0 = g * 32, n = min(32, m - t0);
  const float* kh = p.k + h * p.head_stride;
  const int32_t* idx = p.index + static_cast<int64_t>(h) * m;
  float x[32];
  float lo = INFINITY, hi = -INFINITY;
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    if (i < n) {
      x[i] = kh[static_cast<int64_t>(idx[t0 + i]) * D + d];
      lo = fminf(lo, x[i]);
      hi = fmaxf(hi, x[i]);
    }
  }
  if constexpr (KB == 16) {
    uint16_t* out = reinterpret_cast<uint16_t*>(p.k_codes) + (static_cast<int64_t>(h) * m + t0) * D;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      if (i < n) out[i * D + d] = FloatToHalfBits(x[i]);
    }
  } else {
    constexpr float kQmax = static_cast<float>((1 << KB) - 1);
    const uint16_t sh = FloatToHalfBits(__fdiv_rn(__fsub_rn(hi, lo), kQmax));
    const uint16_t mh = FloatToHalfBits(lo);
    const int groups = (m + 31) / 32;
    p.k_scale[(static_cast<int64_t>(h) * groups + g) * D + d] = sh;
    p.k_min[(static_cast<int64_t>(h) * groups + g) * D + d] = mh;
    const float s = HalfBitsToFloat(sh), mn = HalfBitsToFloat(mh);
    constexpr int kPer = 8 / KB;  // codes per byte
    const int rb = D * KB / 8;
    uint8_t* out = p.k_codes + (static_cast<int64_t>(h) * m + t0) * rb;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      if (i < n) {  // n is uniform over the block
        uint32_t v = QuantCode(x[i], s, mn, kQmax) << (KB * (d % kPer));
#pragma unroll
        for (int o = 1; o < kPer; o <<= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
        if (d % kPer == 0) out[i * rb + d / kPer] = static_cast<uint8_t>(v);
      }
    }
  }
}

// V: one warp per kept token, lanes over the 32 channels of a group.
// grid (ceil(m/4), H), block 128.
template <int VB>
__global__ void QuantizeValuesKernel(const QuantizeParams p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y, tok = blockIdx.x * 4 + warp, D = p.head_dim, m = p.kept;
  if (tok >= m) return;
  const int64_t slot = static_cast<int64_t>(h) * m + tok;
  const float* row = p.v + h * p.head_stride + static_cast<int64_t>(p.index[slot]) * D;
  if constexpr (VB == 16) {
    uint16_t* out = reinterpret_cast<uint16_t*>(p.v_codes) + slot * D;
    for (int d = lane; d < D; d += 32) out[d] = FloatToHalfBits(row[d]);
  } else {
    constexpr float kQmax = static_cast<float>((1 << VB) - 1);
    constexpr int kPer = 8 / VB;
    const int groups = D / 32, rb = D * VB / 8;
    uint8_t* out = p.v_codes + slot * rb;
    for (int g = 0; g < groups; ++g) {
      const float x = row[g * 32 + lane];
      const float lo = WarpMin(x), hi = WarpMax(x);
      const uint16_t sh = FloatToHalfBits(__fdiv_rn(__fsub_rn(hi, lo), kQmax));
      const uint16_t mh = FloatToHalfBits(lo);
      if (lane == 0) {
        p.v_scale[slot * groups + g] = sh;
        p.v_min[slot * groups + g] = mh;
      }
      uint32_t v = QuantCode(x, HalfBitsToFloat(sh), HalfBitsToFloat(mh), kQmax) << (VB * (lane % kPer));
#pragma unroll
      for (int o = 1; o < kPer; o <<= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
      if (lane % kPer == 0) out[(g * 32 + lane) / kPer] = static_cast<uint8_t>(v);
    }
  }
}

// Window rows [c-w, c) to fp16. grid (w, H), block D.
__global__ void WindowKernel(const QuantizeParams p) {
  const int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x, D = p.head_dim;
  const int64_t src = h * p.head_stride + static_cast<int64_t>(p.prefix - p.window + i) * D + d;
  const int64_t dst = (static_cast<int64_t>(h) * p.window + i) * D + d;
  p.window_k[dst] = FloatToHalfBits(p.k[src]);
  p.window_v[dst] = FloatToHalfBits(p.v[src]);
}

}  // namespace

int LaunchQuantize(const QuantizeParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.head_dim != 64 && p.head_dim != 128) return cudaErrorInvalidValue;
  if (p.kept > 0) {
    cudaError_t e = DispatchBits(p.kbits, [&](auto kb) {
      QuantizeKeysKernel<decltype(kb)::value>
          <<<dim3(CeilDiv(p.kept, 32), p.num_kv_heads), p.head_dim, 0, s>>>(p);
      return cudaGetLastError();
    });
    if (e != cudaSuccess) return e;
    e = DispatchBits(p.vbits, [&](auto vb) {
      QuantizeValuesKernel<decltype(vb)::value>
          <<<dim3(CeilDiv(p.kept, 4), p.num_kv_heads), 128, 0, s>>>(p);
      return cudaGetLastError();
    });
    if (e != cudaSuccess) return e;
  }
  if (p.window > 0) {
    WindowKernel<<<dim3(p.window, p.num_kv_heads), p.head_dim, 0, s>>>(p);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace moend::kernels::cuda
