// Kernels of the GPU calibrator; contracts in worker/gpu_calibrator_kernels.h.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "worker/gpu_calibrator_kernels.h"

namespace moend::worker::gpucal {
namespace {

using kernels::cuda::CeilDiv;
using kernels::cuda::HalfBitsToFloat;
using kernels::cuda::FloatToHalfBits;
using kernels::cuda::WarpMax;
using kernels::cuda::WarpSum;

// ------------------------------------------------------------- conversions --
// grid (probes, heads), block D.
__global__ void ProbeQueriesToHalfKernel(const float* q, int64_t head_stride, int probes, int D,
                                         uint16_t* out) {
  const int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  out[(static_cast<int64_t>(h) * probes + i) * D + d] =
      FloatToHalfBits(q[h * head_stride + static_cast<int64_t>(i) * D + d]);
}

__device__ __forceinline__ uint32_t Code(const uint8_t* row, int d, int bits) {
  const int bit = d * bits;
  return (row[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1u);
}

// grid (rpad, H), block D.
__global__ void DequantKernel(const DequantParams p) {
  const int r = blockIdx.x, h = blockIdx.y, d = threadIdx.x, D = p.head_dim, m = p.kept;
  const int64_t out_row = static_cast<int64_t>(h) * p.rpad + r;
  uint16_t k = 0, v = 0;  // fp16 +0
  if (r < m) {
    const int64_t slot = static_cast<int64_t>(h) * m + r;
    if (p.bits == 16) {
      k = reinterpret_cast<const uint16_t*>(p.k_codes)[slot * D + d];
      v = reinterpret_cast<const uint16_t*>(p.v_codes)[slot * D + d];
    } else {
      const int rb = D * p.bits / 8, groups = (m + 31) / 32;
      const int64_t kp = (static_cast<int64_t>(h) * groups + r / 32) * D + d;
      // value = code * scale + min, explicitly rounded (never contracted), as
      // kernels/reference/quantize_ref.h Dequantize.
      const float kf = __fadd_rn(__fmul_rn(static_cast<float>(Code(p.k_codes + slot * rb, d, p.bits)),
                                           HalfBitsToFloat(p.k_scale[kp])),
                                 HalfBitsToFloat(p.k_min[kp]));
      const int64_t vp = slot * (D / 32) + d / 32;
      const float vf = __fadd_rn(__fmul_rn(static_cast<float>(Code(p.v_codes + slot * rb, d, p.bits)),
                                           HalfBitsToFloat(p.v_scale[vp])),
                                 HalfBitsToFloat(p.v_min[vp]));
      k = FloatToHalfBits(kf);
      v = FloatToHalfBits(vf);
    }
  } else if (r < m + p.window) {
    const int64_t w = (static_cast<int64_t>(h) * p.window + (r - m)) * D + d;
    k = p.window_k[w];
    v = p.window_v[w];
  }
  if (p.k_out != nullptr) p.k_out[out_row * D + d] = k;
  if (p.v_out != nullptr) p.v_out[out_row * p.v_cols + p.v_col0 + d] = v;
}

// ------------------------------------------------------------ probe scores --
__device__ __forceinline__ void Mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ uint32_t Load32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

constexpr int kKeyTile = 64;
constexpr int kRowsPerWarp = 16;
constexpr int kWarps = 4;
constexpr int kRowTile = kRowsPerWarp * kWarps;

// grid (splits, ceil(rows_per_kv / 64), H), block 128. Warp w owns rows
// [tile*64 + 16w, +16) of KV head h; the block walks its split's keys in tiles
// of 64 staged in shared memory.
// q: [rows_total, D]; k: [H, rpad, D]; p: [H, rows_per_kv, rpad].
template <int D, bool kWriteP>
__global__ void __launch_bounds__(128) ProbeScoresKernel(const ProbeScoreParams p) {
  constexpr int kStride = D + 8;  // halves per staged key row (conflict-free ldmatrix)
  __shared__ __align__(16) uint16_t ks[kKeyTile * kStride];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int split = blockIdx.x, h = blockIdx.z;
  const int rows = p.rows_per_kv, rows_total = rows * p.num_kv_heads;
  const int r_lo = blockIdx.y * kRowTile + warp * kRowsPerWarp + g, r_hi = r_lo + 8;
  const bool ok_lo = r_lo < rows, ok_hi = r_hi < rows;
  const uint16_t* qh = p.q + static_cast<int64_t>(h) * rows * D;
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int col = kk * 16 + 2 * t;
    qa[kk][0] = ok_lo ? Load32(qh + static_cast<int64_t>(r_lo) * D + col) : 0u;
    qa[kk][1] = ok_hi ? Load32(qh + static_cast<int64_t>(r_hi) * D + col) : 0u;
    qa[kk][2] = ok_lo ? Load32(qh + static_cast<int64_t>(r_lo) * D + col + 8) : 0u;
    qa[kk][3] = ok_hi ? Load32(qh + static_cast<int64_t>(r_hi) * D + col + 8) : 0u;
  }
  float off_lo = 0.0f, off_hi = 0.0f;
  if constexpr (kWriteP) {
    if (ok_lo) off_lo = p.offset[static_cast<int64_t>(h) * rows + r_lo];
    if (ok_hi) off_hi = p.offset[static_cast<int64_t>(h) * rows + r_hi];
  }
  float mx_lo = -INFINITY, mx_hi = -INFINITY, sum_lo = 0.0f, sum_hi = 0.0f;
  const uint16_t* kh = p.k + static_cast<int64_t>(h) * p.rpad * D;
  uint16_t* ph = kWriteP ? p.p + static_cast<int64_t>(h) * rows * p.rpad : nullptr;
  const int key_begin = split * p.keys_per_split;
  const int key_end = min(p.rpad, key_begin + p.keys_per_split);
  // ldmatrix x4 source row of this lane: matrix lane/8, row lane%8.
  const int lm_row = lane % 8, lm_col = (lane / 8) * 8;
  for (int k0 = key_begin; k0 < key_end; k0 += kKeyTile) {
    __syncthreads();
    constexpr int kChunks = kKeyTile * D / 8;  // 16-byte chunks
#pragma unroll
    for (int c = threadIdx.x; c < kChunks; c += 128) {
      const int r = c / (D / 8), col = (c % (D / 8)) * 8;
      *reinterpret_cast<uint4*>(&ks[r * kStride + col]) =
          *reinterpret_cast<const uint4*>(kh + static_cast<int64_t>(k0 + r) * D + col);
    }
    __syncthreads();
    float acc[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk += 2) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        uint32_t b[4];
        LdMatrixX4(b, &ks[(nt * 8 + lm_row) * kStride + kk * 16 + lm_col]);
        Mma16816(acc[nt], qa[kk], b[0], b[1]);
        Mma16816(acc[nt], qa[kk + 1], b[2], b[3]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int key = k0 + nt * 8 + 2 * t;
      const bool v0 = key < p.keys, v1 = key + 1 < p.keys;
      const float s0 = acc[nt][0] * p.scale, s1 = acc[nt][1] * p.scale;
      const float s2 = acc[nt][2] * p.scale, s3 = acc[nt][3] * p.scale;
      if (v0) { mx_lo = fmaxf(mx_lo, s0); mx_hi = fmaxf(mx_hi, s2); }
      if (v1) { mx_lo = fmaxf(mx_lo, s1); mx_hi = fmaxf(mx_hi, s3); }
      if constexpr (kWriteP) {
        const __half2 lo = __floats2half2_rn(v0 ? __expf(s0 - off_lo) : 0.0f, v1 ? __expf(s1 - off_lo) : 0.0f);
        const __half2 hi = __floats2half2_rn(v0 ? __expf(s2 - off_hi) : 0.0f, v1 ? __expf(s3 - off_hi) : 0.0f);
        const float2 lf = __half22float2(lo), hf = __half22float2(hi);
        sum_lo += lf.x + lf.y;
        sum_hi += hf.x + hf.y;
        if (ok_lo) *reinterpret_cast<__half2*>(ph + static_cast<int64_t>(r_lo) * p.rpad + key) = lo;
        if (ok_hi) *reinterpret_cast<__half2*>(ph + static_cast<int64_t>(r_hi) * p.rpad + key) = hi;
      }
    }
  }
#pragma unroll
  for (int o = 1; o < 4; o <<= 1) {
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, o));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, o));
    sum_lo += __shfl_xor_sync(0xffffffffu, sum_lo, o);
    sum_hi += __shfl_xor_sync(0xffffffffu, sum_hi, o);
  }
  if (t == 0) {
    const int64_t base = static_cast<int64_t>(split) * rows_total + static_cast<int64_t>(h) * rows;
    if (ok_lo) p.part_max[base + r_lo] = mx_lo;
    if (ok_hi) p.part_max[base + r_hi] = mx_hi;
    if constexpr (kWriteP) {
      if (ok_lo) p.part_sum[base + r_lo] = sum_lo;
      if (ok_hi) p.part_sum[base + r_hi] = sum_hi;
    }
  }
}

__global__ void ReduceMaxKernel(const float* part_max, int splits, int rows_total, float* offset) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows_total) return;
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, part_max[static_cast<int64_t>(s) * rows_total + r]);
  offset[r] = m;
}

// One warp per row. grid ceil(rows_total / 8), block 256.
__global__ void TailSoftmaxKernel(float* s, int rows_total, int probes, float* max, float* sum) {
  const int row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows_total) return;
  const int len = row % probes + 1;
  float* x = s + static_cast<int64_t>(row) * probes;
  float m = -INFINITY;
  for (int j = lane; j < len; j += 32) m = fmaxf(m, x[j]);
  m = WarpMax(m);
  float acc = 0.0f;
  for (int j = lane; j < probes; j += 32) {
    const float e = j < len ? expf(x[j] - m) : 0.0f;
    x[j] = e;
    acc += e;
  }
  acc = WarpSum(acc);
  if (lane == 0) {
    max[row] = m;
    sum[row] = acc;
  }
}

__device__ __forceinline__ double WarpSumD(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

constexpr int kMergeWarps = 8;
constexpr int kMaxSlots = 4;

// Warps stride over rows; per-slot sums reduced per block, then one double
// atomic per block and slot. grid <= 2 * SMs, block 256.
__global__ void __launch_bounds__(256) MergeKernel(const MergeParams p) {
  __shared__ double red[kMergeWarps][kMaxSlots];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, D = p.head_dim;
  double acc[kMaxSlots] = {0.0, 0.0, 0.0, 0.0};
  bool bad = false;
  for (int row = blockIdx.x * kMergeWarps + warp; row < p.rows_total; row += gridDim.x * kMergeWarps) {
    float l1 = 0.0f, actual = -INFINITY;
    for (int s = lane; s < p.splits; s += 32) {
      l1 += p.part_sum[static_cast<int64_t>(s) * p.rows_total + row];
      actual = fmaxf(actual, p.part_max[static_cast<int64_t>(s) * p.rows_total + row]);
    }
    l1 = WarpSum(l1);
    actual = WarpMax(actual);
    const float m1 = p.offset[row], m2 = p.tail_max[row], l2 = p.tail_sum[row];
    if (!(actual - m1 <= 10.0f && actual - m1 >= -4.0f)) bad = true;
    // As core/partial_attention.cc MergePartials; explicitly rounded so that
    // the reference pass and the error pass compute bit-identical outputs.
    const float m = fmaxf(m1, m2);
    const float w1 = expf(m1 - m);
    const float w2 = m2 == -INFINITY ? 0.0f : expf(m2 - m);
    const float denom = __fadd_rn(__fmul_rn(l1, w1), __fmul_rn(l2, w2));
    const float inv = denom > 0.0f ? __fdiv_rn(1.0f, denom) : 0.0f;
    const float* o1 = p.o + static_cast<int64_t>(row) * p.o_cols;
    const float* o2 = p.tail_o + static_cast<int64_t>(row) * D;
    float* ref = p.ref + static_cast<int64_t>(row) * D;
#pragma unroll
    for (int j = 0; j < kMaxSlots; ++j) {
      if (j >= p.nv || (p.ref_slot >= 0 && j != p.ref_slot)) continue;
      for (int d = lane; d < D; d += 32) {
        const float out = __fmul_rn(__fadd_rn(__fmul_rn(o1[j * D + d], w1), __fmul_rn(o2[d], w2)), inv);
        if (p.ref_slot >= 0) {
          ref[d] = out;
          acc[j] += static_cast<double>(out) * out;
        } else {
          const double diff = static_cast<double>(out) - ref[d];
          acc[j] += diff * diff;
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxSlots; ++j) {
    acc[j] = WarpSumD(acc[j]);
    if (lane == 0) red[warp][j] = acc[j];
  }
  if (bad && p.ref_slot < 0) atomicOr(p.flag, 1u);
  __syncthreads();
  if (threadIdx.x < kMaxSlots) {
    const int j = threadIdx.x;
    double total = 0.0;
    for (int w = 0; w < kMergeWarps; ++w) total += red[w][j];
    if (p.ref_slot >= 0) {
      if (j == p.ref_slot) atomicAdd(p.norm, total);
    } else if (j < p.nv) {
      atomicAdd(p.err + p.err_base + j, total);
    }
  }
}

int MultiprocessorCount() {
  static const int count = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      cudaGetLastError();
      return 132;
    }
    return n;
  }();
  return count;
}

}  // namespace

int LaunchProbeQueriesToHalf(const float* q, int64_t head_stride, int heads, int probes, int head_dim,
                             uint16_t* out, void* stream) {
  if (heads * probes == 0) return cudaSuccess;
  ProbeQueriesToHalfKernel<<<dim3(probes, heads), head_dim, 0, static_cast<cudaStream_t>(stream)>>>(
      q, head_stride, probes, head_dim, out);
  return cudaGetLastError();
}

int LaunchDequant(const DequantParams& p, void* stream) {
  if (p.head_dim != 64 && p.head_dim != 128) return cudaErrorInvalidValue;
  if (p.rpad == 0) return cudaSuccess;
  DequantKernel<<<dim3(p.rpad, p.num_kv_heads), p.head_dim, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return cudaGetLastError();
}

int LaunchProbeScores(const ProbeScoreParams& p, void* stream) {
  if (p.rpad % kKeyTile != 0 || p.keys_per_split % kKeyTile != 0 || p.keys < 1) return cudaErrorInvalidValue;
  const dim3 grid(p.splits, CeilDiv(p.rows_per_kv, kRowTile), p.num_kv_heads);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  auto go = [&](auto kernel) {
    kernel<<<grid, 128, 0, s>>>(p);
    return static_cast<int>(cudaGetLastError());
  };
  if (p.head_dim == 64) return p.write_p ? go(ProbeScoresKernel<64, true>) : go(ProbeScoresKernel<64, false>);
  if (p.head_dim == 128) return p.write_p ? go(ProbeScoresKernel<128, true>) : go(ProbeScoresKernel<128, false>);
  return cudaErrorInvalidValue;
}

int LaunchReduceMax(const float* part_max, int splits, int rows_total, float* offset, void* stream) {
  ReduceMaxKernel<<<CeilDiv(rows_total, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(part_max, splits,
                                                                                            rows_total, offset);
  return cudaGetLastError();
}

int LaunchTailSoftmax(float* s, int rows_total, int probes, float* max, float* sum, void* stream) {
  TailSoftmaxKernel<<<CeilDiv(rows_total, 8), 256, 0, static_cast<cudaStream_t>(stream)>>>(s, rows_total, probes,
                                                                                           max, sum);
  return cudaGetLastError();
}

int LaunchMerge(const MergeParams& p, void* stream) {
  if (p.nv < 1 || p.nv > kMaxSlots) return cudaErrorInvalidValue;
  const int blocks = std::min(CeilDiv(p.rows_total, kMergeWarps), 2 * MultiprocessorCount());
  MergeKernel<<<blocks, kMergeWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return cudaGetLastError();
}

}  // namespace moend::worker::gpucal
