// Small device helpers shared by the kernels.
#ifndef MOEND_KERNELS_CUDA_COMMON_CUH_
#define MOEND_KERNELS_CUDA_COMMON_CUH_

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace moend::kernels::cuda {

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float WarpMin(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float HalfBitsToFloat(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint16_t FloatToHalfBits(float f) { return __half_as_ushort(__float2half_rn(f)); }

// The quantizer of DESIGN.md section 2, the same float operations as
// kernels/reference/quantize_ref.h (explicitly rounded, never contracted).
__device__ __forceinline__ uint32_t QuantCode(float x, float scale, float min, float qmax) {
  if (scale == 0.0f) return 0;
  float y = floorf(__fadd_rn(__fdiv_rn(__fsub_rn(x, min), scale), 0.5f));
  y = fminf(fmaxf(y, 0.0f), qmax);
  return static_cast<uint32_t>(y);
}

inline int CeilDiv(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace moend::kernels::cuda

#endif  // MOEND_KERNELS_CUDA_COMMON_CUH_
