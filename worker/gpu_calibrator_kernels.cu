// Kernels of the GPU calibrator; contracts in worker/gpu_calibrator_kernels.h.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/mma.cuh"
#include "worker/gpu_calibrator_kernels.h"

namespace moend::worker::gpucal {
namespace {

using kernels::cuda::CeilDiv;
using kernels::cuda::CpAsync16;
using kernels::cuda::CpAsyncCommit;
using kernels::cuda::CpAsyncWait;
using kernels::cuda::HalfBitsToFloat;
using kernels::cuda::Mma16816;
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

// index[h, i] = i for i < kept. grid (ceil(kept / 256), H), block 256.
__global__ void IotaKernel(int32_t* index, int kept) {
  const int i = blockIdx.x * 256 + threadIdx.x;
  if (i < kept) index[static_cast<int64_t>(blockIdx.y) * kept + i] = i;
}

__device__ __forceinline__ uint32_t Code(const uint8_t* row, int d, int bits) {
  const int bit = d * bits;
  return (row[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1u);
}

// Eight consecutive channels per thread (16-byte loads/stores).
// grid (ceil(rpad / rows_per_block), H), block 256; rows_per_block = 256 / (D/8).
__global__ void DequantKernel(const DequantParams p) {
  const int D = p.head_dim, m = p.kept, lanes = D / 8;
  const int r = blockIdx.x * (256 / lanes) + threadIdx.x / lanes, h = blockIdx.y;
  const int d0 = (threadIdx.x % lanes) * 8;
  if (r >= p.rpad) return;
  const int64_t out_row = static_cast<int64_t>(h) * p.rpad + r;
  uint4 k = make_uint4(0, 0, 0, 0), v = make_uint4(0, 0, 0, 0);  // fp16 +0
  if (r < m) {
    const int64_t slot = static_cast<int64_t>(h) * m + r;
    if (p.bits == 16) {
      k = *reinterpret_cast<const uint4*>(reinterpret_cast<const uint16_t*>(p.k_codes) + slot * D + d0);
      v = *reinterpret_cast<const uint4*>(reinterpret_cast<const uint16_t*>(p.v_codes) + slot * D + d0);
    } else {
      const int rb = D * p.bits / 8, groups = (m + 31) / 32;
      const int64_t kp = (static_cast<int64_t>(h) * groups + r / 32) * D + d0;
      const uint4 ks4 = *reinterpret_cast<const uint4*>(p.k_scale + kp);
      const uint4 km4 = *reinterpret_cast<const uint4*>(p.k_min + kp);
      const uint16_t* ks = reinterpret_cast<const uint16_t*>(&ks4);
      const uint16_t* km = reinterpret_cast<const uint16_t*>(&km4);
      const int64_t vp = slot * (D / 32) + d0 / 32;
      const float vs = HalfBitsToFloat(p.v_scale[vp]), vm = HalfBitsToFloat(p.v_min[vp]);
      const uint8_t* kc = p.k_codes + slot * rb;
      const uint8_t* vc = p.v_codes + slot * rb;
      uint16_t* ko = reinterpret_cast<uint16_t*>(&k);
      uint16_t* vo = reinterpret_cast<uint16_t*>(&v);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        // value = code * scale + min, explicitly rounded (never contracted), as
        // kernels/reference/quantize_ref.h Dequantize; then fp16.
        ko[i] = FloatToHalfBits(__fadd_rn(__fmul_rn(static_cast<float>(Code(kc, d0 + i, p.bits)), HalfBitsToFloat(ks[i])),
                                          HalfBitsToFloat(km[i])));
        vo[i] = FloatToHalfBits(__fadd_rn(__fmul_rn(static_cast<float>(Code(vc, d0 + i, p.bits)), vs), vm));
      }
    }
  } else if (r < m + p.window) {
    const int64_t w = (static_cast<int64_t>(h) * p.window + (r - m)) * D + d0;
    k = *reinterpret_cast<const uint4*>(p.window_k + w);
    v = *reinterpret_cast<const uint4*>(p.window_v + w);
  }
  if (p.k_out != nullptr) *reinterpret_cast<uint4*>(p.k_out + out_row * D + d0) = k;
  if (p.v_out != nullptr) *reinterpret_cast<uint4*>(p.v_out + out_row * p.v_cols + p.v_col0 + d0) = v;
}

// ------------------------------------------------------------ probe scores --
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ uint32_t Load32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

constexpr int kKeyTile = 64;
constexpr int kWarps = 4;

// grid (splits, ceil(rows_per_kv / 64), H), block 128. Warp w owns 16 rows
// of KV head h (rows [tile*64 + 16w, +16)); the block walks its split's keys
// in tiles of 64, double-buffered in shared memory with cp.async. P goes out
// through a per-warp shared-memory tile as whole 128-byte row segments.
// (Two 16-row m-tiles per warp sharing each key fragment measured slower on
// the H100: 9.0 vs 8.5 ms per 7B-shaped layer.)
// q: [rows_total, D]; k: [H, rpad, D]; p: [H, rows_per_kv, rpad].
template <int D, bool kWriteP>
__global__ void __launch_bounds__(128) ProbeScoresKernel(const ProbeScoreParams p) {
  constexpr int MT = 1;
  constexpr int kStride = D + 8;  // halves per staged key row (conflict-free ldmatrix)
  constexpr int kPStride = kKeyTile + 8;  // halves per staged P row (conflict-free half2 stores)
  constexpr int kRowsWarp = 16 * MT, kRowTile = kRowsWarp * kWarps;
  __shared__ __align__(16) uint16_t ks[2][kKeyTile * kStride];
  __shared__ __align__(16) uint16_t pst[kWriteP ? kWarps : 1][kWriteP ? kRowsWarp * kPStride : 8];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int split = blockIdx.x, h = blockIdx.z;
  const int rows = p.rows_per_kv, rows_total = rows * p.num_kv_heads;
  const uint16_t* qh = p.q + static_cast<int64_t>(h) * rows * D;
  int r_lo[MT], r_hi[MT];
  bool ok_lo[MT], ok_hi[MT];
  uint32_t qa[MT][D / 16][4];
  float off_lo[MT], off_hi[MT], mx_lo[MT], mx_hi[MT], sum_lo[MT], sum_hi[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    r_lo[mt] = blockIdx.y * kRowTile + warp * kRowsWarp + mt * 16 + g;
    r_hi[mt] = r_lo[mt] + 8;
    ok_lo[mt] = r_lo[mt] < rows;
    ok_hi[mt] = r_hi[mt] < rows;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int col = kk * 16 + 2 * t;
      qa[mt][kk][0] = ok_lo[mt] ? Load32(qh + static_cast<int64_t>(r_lo[mt]) * D + col) : 0u;
      qa[mt][kk][1] = ok_hi[mt] ? Load32(qh + static_cast<int64_t>(r_hi[mt]) * D + col) : 0u;
      qa[mt][kk][2] = ok_lo[mt] ? Load32(qh + static_cast<int64_t>(r_lo[mt]) * D + col + 8) : 0u;
      qa[mt][kk][3] = ok_hi[mt] ? Load32(qh + static_cast<int64_t>(r_hi[mt]) * D + col + 8) : 0u;
    }
    off_lo[mt] = off_hi[mt] = 0.0f;
    if constexpr (kWriteP) {
      if (ok_lo[mt]) off_lo[mt] = p.offset[static_cast<int64_t>(h) * rows + r_lo[mt]];
      if (ok_hi[mt]) off_hi[mt] = p.offset[static_cast<int64_t>(h) * rows + r_hi[mt]];
    }
    mx_lo[mt] = mx_hi[mt] = -INFINITY;
    sum_lo[mt] = sum_hi[mt] = 0.0f;
  }
  const uint16_t* kh = p.k + static_cast<int64_t>(h) * p.rpad * D;
  uint16_t* ph = kWriteP ? p.p + static_cast<int64_t>(h) * rows * p.rpad : nullptr;
  const int key_begin = split * p.keys_per_split;
  const int key_end = min(p.rpad, key_begin + p.keys_per_split);
  auto load_tile = [&](int buf, int k0) {
    constexpr int kChunks = kKeyTile * D / 8;  // 16-byte chunks
#pragma unroll
    for (int c = threadIdx.x; c < kChunks; c += 128) {
      const int r = c / (D / 8), col = (c % (D / 8)) * 8;
      CpAsync16(&ks[buf][r * kStride + col], kh + static_cast<int64_t>(k0 + r) * D + col);
    }
    CpAsyncCommit();
  };
  // ldmatrix x4 source row of this lane: matrix lane/8, row lane%8.
  const int lm_row = lane % 8, lm_col = (lane / 8) * 8;
  if (key_begin < key_end) load_tile(0, key_begin);
  for (int k0 = key_begin, it = 0; k0 < key_end; k0 += kKeyTile, ++it) {
    const int buf = it & 1;
    if (k0 + kKeyTile < key_end) {
      load_tile(buf ^ 1, k0 + kKeyTile);
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    float acc[MT][8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk += 2) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        uint32_t b[4];
        LdMatrixX4(b, &ks[buf][(nt * 8 + lm_row) * kStride + kk * 16 + lm_col]);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma16816(acc[mt][nt], qa[mt][kk], b[0], b[1]);
          Mma16816(acc[mt][nt], qa[mt][kk + 1], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // ks[buf] is refilled two tiles later
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const int key = k0 + nt * 8 + 2 * t;
        const bool v0 = key < p.keys, v1 = key + 1 < p.keys;
        const float s0 = acc[mt][nt][0] * p.scale, s1 = acc[mt][nt][1] * p.scale;
        const float s2 = acc[mt][nt][2] * p.scale, s3 = acc[mt][nt][3] * p.scale;
        if (v0) {
          mx_lo[mt] = fmaxf(mx_lo[mt], s0);
          mx_hi[mt] = fmaxf(mx_hi[mt], s2);
        }
        if (v1) {
          mx_lo[mt] = fmaxf(mx_lo[mt], s1);
          mx_hi[mt] = fmaxf(mx_hi[mt], s3);
        }
        if constexpr (kWriteP) {
          const __half2 lo = __floats2half2_rn(v0 ? __expf(s0 - off_lo[mt]) : 0.0f,
                                               v1 ? __expf(s1 - off_lo[mt]) : 0.0f);
          const __half2 hi = __floats2half2_rn(v0 ? __expf(s2 - off_hi[mt]) : 0.0f,
                                               v1 ? __expf(s3 - off_hi[mt]) : 0.0f);
          const float2 lf = __half22float2(lo), hf = __half22float2(hi);
          sum_lo[mt] += lf.x + lf.y;
          sum_hi[mt] += hf.x + hf.y;
          *reinterpret_cast<__half2*>(&pst[warp][(mt * 16 + g) * kPStride + nt * 8 + 2 * t]) = lo;
          *reinterpret_cast<__half2*>(&pst[warp][(mt * 16 + g + 8) * kPStride + nt * 8 + 2 * t]) = hi;
        }
      }
    }
    if constexpr (kWriteP) {
      __syncwarp();
      const int row0 = blockIdx.y * kRowTile + warp * kRowsWarp;
      constexpr int kChunks = kRowsWarp * kKeyTile / 8;  // 16-byte chunks of the warp's P tile
#pragma unroll
      for (int c = lane; c < kChunks; c += 32) {
        const int r = c / (kKeyTile / 8), col = (c % (kKeyTile / 8)) * 8;
        if (row0 + r < rows) {
          *reinterpret_cast<uint4*>(ph + static_cast<int64_t>(row0 + r) * p.rpad + k0 + col) =
              *reinterpret_cast<const uint4*>(&pst[warp][r * kPStride + col]);
        }
      }
      __syncwarp();
    }
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
      mx_lo[mt] = fmaxf(mx_lo[mt], __shfl_xor_sync(0xffffffffu, mx_lo[mt], o));
      mx_hi[mt] = fmaxf(mx_hi[mt], __shfl_xor_sync(0xffffffffu, mx_hi[mt], o));
      sum_lo[mt] += __shfl_xor_sync(0xffffffffu, sum_lo[mt], o);
      sum_hi[mt] += __shfl_xor_sync(0xffffffffu, sum_hi[mt], o);
    }
    if (t == 0) {
      const int64_t base = static_cast<int64_t>(split) * rows_total + static_cast<int64_t>(h) * rows;
      if (ok_lo[mt]) p.part_max[base + r_lo[mt]] = mx_lo[mt];
      if (ok_hi[mt]) p.part_max[base + r_hi[mt]] = mx_hi[mt];
      if constexpr (kWriteP) {
        if (ok_lo[mt]) p.part_sum[base + r_lo[mt]] = sum_lo[mt];
        if (ok_hi[mt]) p.part_sum[base + r_hi[mt]] = sum_hi[mt];
      }
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

// blockIdx.y is the KV head; the warps of its blocks stride over that head's
// rows; per-slot sums reduced per block, then one double atomic per block and
// slot into the head's sums. grid (x, H) with x * H <= about 2 * SMs, block 256.
__global__ void __launch_bounds__(256) MergeKernel(const MergeParams p) {
  __shared__ double red[kMergeWarps][kMaxSlots];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, D = p.head_dim;
  const int head = blockIdx.y;
  const int row_end = (head + 1) * p.rows_per_kv;
  double acc[kMaxSlots] = {0.0, 0.0, 0.0, 0.0};
  bool bad = false;
  for (int row = head * p.rows_per_kv + blockIdx.x * kMergeWarps + warp; row < row_end;
       row += gridDim.x * kMergeWarps) {
    float l1 = 0.0f, actual = -INFINITY;
    for (int s = lane; s < p.splits; s += 32) {
      l1 += p.part_sum[static_cast<int64_t>(s) * p.rows_total + row];
      actual = fmaxf(actual, p.part_max[static_cast<int64_t>(s) * p.rows_total + row]);
    }
    l1 = WarpSum(l1);
    actual = WarpMax(actual);
    const float m1 = p.offset[row], m2 = p.tail_max[row], l2 = p.tail_sum[row];
    if (!(actual - m1 <= 10.0f && actual - m1 >= -4.0f)) bad = true;
    // As runtime/partial_attention.cc MergePartials; explicitly rounded so that
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
    const int64_t head_base = static_cast<int64_t>(head) * p.err_stride;
    if (p.ref_slot >= 0) {
      if (j == p.ref_slot) atomicAdd(p.norm + head_base, total);
    } else if (j < p.nv) {
      atomicAdd(p.err + head_base + p.err_base + j, total);
    }
  }
}

}  // namespace

int LaunchProbeQueriesToHalf(const float* q, int64_t head_stride, int heads, int probes, int head_dim,
                             uint16_t* out, void* stream) {
  if (heads * probes == 0) return cudaSuccess;
  ProbeQueriesToHalfKernel<<<dim3(probes, heads), head_dim, 0, static_cast<cudaStream_t>(stream)>>>(
      q, head_stride, probes, head_dim, out);
  return cudaGetLastError();
}

int LaunchIota(int32_t* index, int num_kv_heads, int kept, void* stream) {
  if (kept == 0) return cudaSuccess;
  IotaKernel<<<dim3(CeilDiv(kept, 256), num_kv_heads), 256, 0, static_cast<cudaStream_t>(stream)>>>(index, kept);
  return cudaGetLastError();
}

int LaunchDequant(const DequantParams& p, void* stream) {
  if (p.head_dim != 64 && p.head_dim != 128) return cudaErrorInvalidValue;
  if (p.rpad == 0) return cudaSuccess;
  const int rows_per_block = 256 / (p.head_dim / 8);
  DequantKernel<<<dim3(CeilDiv(p.rpad, rows_per_block), p.num_kv_heads), 256, 0,
                  static_cast<cudaStream_t>(stream)>>>(p);
  return cudaGetLastError();
}

int ProbeRowTile() { return 16 * kWarps; }

int LaunchProbeScores(const ProbeScoreParams& p, void* stream) {
  if (p.rpad % kKeyTile != 0 || p.keys_per_split % kKeyTile != 0 || p.keys < 1) return cudaErrorInvalidValue;
  const dim3 grid(p.splits, CeilDiv(p.rows_per_kv, ProbeRowTile()), p.num_kv_heads);
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
  if (p.rows_per_kv < 1 || p.rows_total % p.rows_per_kv != 0) return cudaErrorInvalidValue;
  const int heads = p.rows_total / p.rows_per_kv;
  const int blocks = std::max(1, std::min(CeilDiv(p.rows_per_kv, kMergeWarps),
                                          CeilDiv(2 * kernels::cuda::SmCount(), heads)));
  MergeKernel<<<dim3(blocks, heads), kMergeWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return cudaGetLastError();
}

}  // namespace moend::worker::gpucal
