// Kernels of the GPU forward pass; contracts in worker/gpu_model_kernels.h.
// The float operations follow runtime/model.cc and runtime/vec_math.cc (the
// products and sums that the CPU does unfused are rounded explicitly here,
// so that nvcc's contraction into fused multiply-adds does not apply). The
// BF16 variants are the same code with a BF16 output (Store) or input (Load).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "worker/gpu_model_kernels.h"

namespace moend::worker::gpumodel {
namespace {

using kernels::cuda::WarpMax;
using kernels::cuda::WarpSum;

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;  // one warp per row

// Blocks for a grid-stride loop over `total` elements.
unsigned GridFor(int64_t total) {
  return static_cast<unsigned>(std::clamp<int64_t>((total + kThreads - 1) / kThreads, 1, int64_t{1} << 20));
}

// BF16 values travel as their uint16_t bits.
__device__ __forceinline__ float Load(const float* p) { return *p; }
__device__ __forceinline__ float Load(const uint16_t* p) { return __bfloat162float(__ushort_as_bfloat16(*p)); }
__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(uint16_t* p, float v) { *p = __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

template <typename T>
__global__ void EmbedKernel(const int32_t* tokens, const T* embed, int64_t n, int hidden, float* x) {
  const int64_t total = n * hidden;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / hidden, c = i % hidden;
    x[i] = Load(embed + static_cast<int64_t>(tokens[t]) * hidden + c);
  }
}

__global__ void FloatToBf16Kernel(const float* in, int64_t count, uint16_t* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Store(out + i, in[i]);
  }
}

// One warp per row.
template <typename Out>
__global__ void RmsNormKernel(const float* x, const float* weight, int64_t n, int hidden, float eps,
                              Out* out) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  const float* r = x + row * hidden;
  float ss = 0.0f;
  for (int i = lane; i < hidden; i += 32) ss = fmaf(r[i], r[i], ss);
  ss = WarpSum(ss);
  const float scale = 1.0f / sqrtf(ss / static_cast<float>(hidden) + eps);
  Out* o = out + row * hidden;
  for (int i = lane; i < hidden; i += 32) Store(o + i, __fmul_rn(weight[i], __fmul_rn(r[i], scale)));
}

// One block per token; threads over the (q or k head, pair) rotations, then
// over the v channels.
__global__ void RopeKernel(const RopeParams p) {
  const int64_t t = blockIdx.x, n = p.tokens;
  const int D = p.head_dim, half = D / 2, H = p.num_heads, Hkv = p.num_kv_heads;
  const int64_t width = static_cast<int64_t>(H + 2 * Hkv) * D;
  const float* row = p.qkv + t * width;
  const float pos = static_cast<float>(t);
  for (int idx = threadIdx.x; idx < (H + Hkv) * half; idx += blockDim.x) {
    const int head = idx / half, i = idx % half;
    const int col = head * D + i;
    float a = row[col], b = row[col + half];
    if (p.bias != nullptr) {
      a = __fadd_rn(a, p.bias[col]);
      b = __fadd_rn(b, p.bias[col + half]);
    }
    float sn, cs;
    sincosf(__fmul_rn(pos, p.inv_freq[i]), &sn, &cs);
    const int64_t at = head < H ? (head * n + t) * D : ((head - H) * n + t) * D;
    float* dst = (head < H ? p.q : p.k) + at;
    dst[i] = __fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn));
    dst[i + half] = __fadd_rn(__fmul_rn(b, cs), __fmul_rn(a, sn));
    if (p.q16 != nullptr) {
      uint16_t* dst16 = (head < H ? p.q16 : p.k16) + at;
      Store(dst16 + i, dst[i]);
      Store(dst16 + i + half, dst[i + half]);
    }
  }
  for (int idx = threadIdx.x; idx < Hkv * D; idx += blockDim.x) {
    const int head = idx / D, i = idx % D;
    const int col = (H + Hkv + head) * D + i;
    float val = row[col];
    if (p.bias != nullptr) val = __fadd_rn(val, p.bias[col]);
    p.v[(head * n + t) * D + i] = val;
    if (p.v16 != nullptr) Store(p.v16 + (head * n + t) * D + i, val);
  }
}

// One warp per row: max, exp and sum, normalize (as core SoftmaxRow).
__global__ void CausalSoftmaxKernel(float* s, int64_t rows, int64_t keys, int64_t q0) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const int64_t len = q0 + r + 1;
  float* x = s + r * keys;
  float m = -INFINITY;
  for (int64_t j = lane; j < len; j += 32) m = fmaxf(m, x[j]);
  m = WarpMax(m);
  float sum = 0.0f;
  for (int64_t j = lane; j < len; j += 32) {
    const float e = expf(__fsub_rn(x[j], m));
    x[j] = e;
    sum = __fadd_rn(sum, e);
  }
  const float inv = 1.0f / WarpSum(sum);
  for (int64_t j = lane; j < keys; j += 32) x[j] = j < len ? __fmul_rn(x[j], inv) : 0.0f;
}

// One warp per row of `heads * rows`: online max and sum, then the
// normalized row (and zeros past the causal end) as BF16. Lanes take V
// consecutive keys at a time (V = 4: float4 loads and 8-byte stores, for
// rows whose key count is a multiple of 4).
template <int V>
__global__ void CausalSoftmaxBf16Kernel(const float* s, int64_t total_rows, int64_t rows, int64_t keys, int64_t q0,
                                        uint16_t* p) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= total_rows) return;
  const int64_t len = q0 + row % rows + 1;
  const float* x = s + row * keys;
  auto load = [&](int64_t j, float (&v)[V]) {
    if constexpr (V == 4) {
      const float4 f = *reinterpret_cast<const float4*>(x + j);
      v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    } else {
      v[0] = x[j];
    }
  };
  float m = -INFINITY, sum = 0.0f;
#pragma unroll 4
  for (int64_t j = int64_t{lane} * V; j < len; j += 32 * V) {
    float v[V];
    load(j, v);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      if (j + e >= len) break;
      if (v[e] > m) {
        sum = sum * expf(m - v[e]) + 1.0f;
        m = v[e];
      } else {
        sum += expf(v[e] - m);
      }
    }
  }
  const float row_max = WarpMax(m);  // finite: len >= 1
  const float inv = 1.0f / WarpSum(m == -INFINITY ? 0.0f : sum * expf(m - row_max));
  uint16_t* out = p + row * keys;
#pragma unroll 4
  for (int64_t j = int64_t{lane} * V; j < keys; j += 32 * V) {
    float v[V];
    if (j < len) load(j, v);
    uint16_t b[V];
#pragma unroll
    for (int e = 0; e < V; ++e) Store(b + e, j + e < len ? expf(v[e] - row_max) * inv : 0.0f);
    if constexpr (V == 4) {
      *reinterpret_cast<uint2*>(out + j) = make_uint2(b[0] | uint32_t{b[1]} << 16, b[2] | uint32_t{b[3]} << 16);
    } else {
      out[j] = b[0];
    }
  }
}

// out[t * out_stride + j] = silu(gate) * up; out may be gu itself (in place
// over the gate columns, out_stride 2 I).
template <typename Out>
__global__ void SiluMulKernel(const float* gu, int64_t n, int inter, Out* out, int64_t out_stride) {
  const int64_t total = n * inter;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / inter, j = i % inter;
    const float* gate = gu + t * 2 * inter + j;
    const float g = *gate, up = gate[inter];
    Store(out + t * out_stride + j, __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up));
  }
}

}  // namespace

int LaunchEmbed(const int32_t* tokens, const float* embed, int64_t n, int hidden, float* x, void* stream) {
  EmbedKernel<<<GridFor(n * hidden), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(tokens, embed, n,
                                                                                       hidden, x);
  return cudaGetLastError();
}

int LaunchEmbedBf16(const int32_t* tokens, const uint16_t* embed, int64_t n, int hidden, float* x, void* stream) {
  EmbedKernel<<<GridFor(n * hidden), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(tokens, embed, n,
                                                                                       hidden, x);
  return cudaGetLastError();
}

int LaunchFloatToBf16(const float* in, int64_t count, uint16_t* out, void* stream) {
  FloatToBf16Kernel<<<GridFor(count), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(in, count, out);
  return cudaGetLastError();
}

template <typename Out>
int RmsNorm(const float* x, const float* weight, int64_t n, int hidden, float eps, Out* out, void* stream) {
  const unsigned blocks = static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock);
  RmsNormKernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, weight, n, hidden, eps, out);
  return cudaGetLastError();
}

int LaunchRmsNorm(const float* x, const float* weight, int64_t n, int hidden, float eps, float* out,
                  void* stream) {
  return RmsNorm(x, weight, n, hidden, eps, out, stream);
}

int LaunchRmsNormBf16(const float* x, const float* weight, int64_t n, int hidden, float eps, uint16_t* out,
                      void* stream) {
  return RmsNorm(x, weight, n, hidden, eps, out, stream);
}

int LaunchRope(const RopeParams& p, void* stream) {
  if (p.head_dim % 2 != 0) return cudaErrorInvalidValue;
  RopeKernel<<<static_cast<unsigned>(p.tokens), 128, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return cudaGetLastError();
}

int LaunchCausalSoftmax(float* s, int64_t rows, int64_t keys, int64_t q0, void* stream) {
  if (q0 + rows > keys) return cudaErrorInvalidValue;
  const unsigned blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  CausalSoftmaxKernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(s, rows, keys, q0);
  return cudaGetLastError();
}

int LaunchCausalSoftmaxBf16(const float* s, int64_t heads, int64_t rows, int64_t keys, int64_t q0, uint16_t* p,
                            void* stream) {
  if (q0 + rows > keys || rows < 1) return cudaErrorInvalidValue;
  const unsigned blocks = static_cast<unsigned>((heads * rows + kRowsPerBlock - 1) / kRowsPerBlock);
  const bool vec = keys % 4 == 0 && reinterpret_cast<uintptr_t>(s) % 16 == 0 && reinterpret_cast<uintptr_t>(p) % 8 == 0;
  if (vec) {
    CausalSoftmaxBf16Kernel<4><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(s, heads * rows, rows,
                                                                                          keys, q0, p);
  } else {
    CausalSoftmaxBf16Kernel<1><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(s, heads * rows, rows,
                                                                                          keys, q0, p);
  }
  return cudaGetLastError();
}

int LaunchSiluMul(float* gu, int64_t n, int intermediate, void* stream) {
  SiluMulKernel<<<GridFor(n * intermediate), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      gu, n, intermediate, gu, 2 * int64_t{intermediate});
  return cudaGetLastError();
}

int LaunchSiluMulBf16(const float* gu, int64_t n, int intermediate, uint16_t* out, void* stream) {
  SiluMulKernel<<<GridFor(n * intermediate), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      gu, n, intermediate, out, int64_t{intermediate});
  return cudaGetLastError();
}

}  // namespace moend::worker::gpumodel
